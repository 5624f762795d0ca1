"""Load on the HTTP server over loopback: latency percentiles and throughput, with every answer checked.

Run: ``python benchmarks/serve_load.py [gen.onnx] [--requests 512] [--clients 32] [--modality image]``.
Without a model file, the default configuration at step 0 is built and exported (timing does not depend on
the weights). The server is the real CLI (``python -m fastmmgan.serve``) in its own process on 127.0.0.1;
each client is a thread with its own ``httpx`` connection that sends its next request when the last is
answered. Every 200 answer is compared with ``OnnxGenerator.sample`` for the same request (its own seed,
size and condition), so rows lost or mixed between requests fail the run; 503 answers must carry the
server-busy message. The server's resident memory is read before and after the burst.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

CONDITIONS = (None, {"text": "digit seven"}, {"text": "the number 3"}, {"text": "a handwritten nine"})


class ServerProcess:
    """``python -m fastmmgan.serve MODEL --port 0 ARGS`` as a context manager: ``url``, ``rss_mib()``."""

    def __init__(self, model: str | Path, *args: str, threads: int = 1) -> None:
        self.cmd = [sys.executable, "-m", "fastmmgan.serve", str(model), "--host", "127.0.0.1", "--port", "0",
                    "--threads", str(threads), "--log-level", "warning", *args]
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line!r} {self.proc.stderr.read()}")
        self.url = match.group(1)
        return self

    def rss_mib(self) -> float:
        """The server process's resident memory in MiB (Linux)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def request_plan(count: int, max_n: int = 4) -> list[dict[str, Any]]:
    """``count`` request bodies, each with its own seed, a size in 1..max_n and one of :data:`CONDITIONS`."""
    return [{"n": 1 + i % max_n, "seed": 1000 + i, "given": CONDITIONS[i % len(CONDITIONS)]} for i in range(count)]


@dataclass
class LoadResult:
    """What a burst got back: per request its status, latency (s) and JSON body; the burst's wall time (s)."""

    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    wall: float = 0.0

    def percentile_ms(self, q: float, status: int = 200) -> float:
        times = [t for t, s in zip(self.latencies, self.statuses, strict=True) if s == status]
        return float(np.percentile(times, q) * 1e3) if times else float("nan")

    def count(self, status: int) -> int:
        return self.statuses.count(status)


def run_load(url: str, bodies: list[dict[str, Any]], clients: int, params: dict[str, str] | None = None,
             timeout: float = 60.0) -> LoadResult:
    """Send ``bodies`` to ``POST url/generate`` from ``clients`` threads, each waiting for its answer before
    its next request. Results are in the order of ``bodies``."""
    local = threading.local()
    result = LoadResult([0] * len(bodies), [0.0] * len(bodies), [None] * len(bodies))

    def send(i: int) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=url, timeout=timeout)
        start = time.perf_counter()
        r = local.http.post("/generate", json=bodies[i], params=params)
        result.latencies[i] = time.perf_counter() - start
        result.statuses[i] = r.status_code
        result.bodies[i] = r.json()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, range(len(bodies))))
    result.wall = time.perf_counter() - start
    return result


def check_answers(result: LoadResult, bodies: list[dict[str, Any]], generator: Any, modality: str | None = None,
                  atol: float = 1e-4) -> list[str]:
    """Problems with a burst's answers (empty when every answer is right): statuses other than 200/503, 503s
    without the busy message, 200s whose samples differ from ``generator.sample`` for that request."""
    problems = []
    for i, (status, body, req) in enumerate(zip(result.statuses, result.bodies, bodies, strict=True)):
        if status == 503:
            if "server busy" not in str(body.get("detail", "")):
                problems.append(f"request {i}: 503 without the busy message: {body}")
            continue
        if status != 200:
            problems.append(f"request {i}: status {status}: {body}")
            continue
        expected = generator.sample(req["n"], req["given"], seed=req["seed"], modalities=modality)
        got = body["outputs"]
        if body["seed"] != req["seed"] or got.keys() != expected.keys():
            problems.append(f"request {i}: seed {body['seed']} / modalities {sorted(got)} differ from the request")
            continue
        for name, want in expected.items():
            same = got[name] == list(want) if isinstance(want, list) else np.allclose(np.asarray(got[name]), want, atol=atol)
            if not same:
                problems.append(f"request {i}: {name} differs from OnnxGenerator.sample for its seed")
    return problems


def default_model(out: Path) -> Path:
    """The default configuration at step 0, exported to ``out/gen.onnx``."""
    from fastmmgan.config import TrainConfig
    from fastmmgan.export import export_generator
    from fastmmgan.trainer import Trainer

    Trainer(TrainConfig(compile=False, device="cpu"), out / "run").save()
    return export_generator(out / "run", out / "gen.onnx").path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="an exported .onnx (default: the default config at step 0)")
    p.add_argument("--requests", type=int, default=512)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-n", type=int, default=4, help="requests ask for 1..max-n samples")
    p.add_argument("--modality", default=None, help="ask for one modality only (default: all, as JSON)")
    p.add_argument("--threads", type=int, default=1, help="the server's ONNX Runtime threads")
    p.add_argument("--server-arg", action="append", default=[], help="passed to the server, e.g. --server-arg=--max-queue=8")
    args = p.parse_args(argv)

    from fastmmgan.export import OnnxGenerator

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else default_model(Path(tmp))
        bodies = request_plan(args.requests, args.max_n)
        params = {"modality": args.modality} if args.modality else None
        with ServerProcess(model, *args.server_arg, threads=args.threads) as server:
            run_load(server.url, request_plan(64, args.max_n), args.clients, params)  # warm-up
            rss_before = server.rss_mib()
            result = run_load(server.url, bodies, args.clients, params)
            rss_after = server.rss_mib()
        problems = check_answers(result, bodies, OnnxGenerator(model, device="cpu", intra_op_threads=1), args.modality)
    ok, busy = result.count(200), result.count(503)
    samples = sum(b["n"] for b, s in zip(bodies, result.statuses, strict=True) if s == 200)
    print(f"{args.requests} requests (n 1..{args.max_n}, {args.modality or 'all modalities'}) from {args.clients} clients, "
          f"server on {args.threads} ORT thread(s)")
    print(f"  answers: {ok} x 200, {busy} x 503, {len(problems)} wrong")
    print(f"  latency of 200s: p50 {result.percentile_ms(50):.1f} ms, p99 {result.percentile_ms(99):.1f} ms")
    print(f"  throughput: {ok / result.wall:.0f} requests/s, {samples / result.wall:.0f} samples/s ({result.wall:.2f} s)")
    print(f"  server memory: {rss_before:.1f} MiB before the burst, {rss_after:.1f} MiB after")
    for line in problems[:10]:
        print("  " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
