"""``python -m fastmmgan.serve gen.onnx``: an HTTP server for an exported generator (FastAPI + uvicorn).

Endpoints:
- ``GET /health``: ``{"status": "ok", "provider": ..., "queued", "requests", "runs", "rows", "largest_batch"}``.
- ``GET /metadata``: the modalities (vocabulary, image shape, audio settings, feature sizes), noise size,
  versions, the execution provider and the server's limits.
- ``POST /generate`` with a JSON body ``{"n": 4, "given": {"text": ["seven", ...]}, "seed": 1}`` (all optional but
  ``n``; a missing seed is drawn and returned) answers ``{"n", "seed", "outputs": {<modality>: ...}}``: images
  ``[n, H, W]`` and audio ``[n, T]`` as nested arrays, text as a list of strings. Query options:
  ``?modality=NAME`` returns that modality only; ``?format=png`` one image modality as a PNG grid;
  ``?format=wav`` one audio modality as a WAV file of the n clips in order, 0.1 s of silence between them.

Concurrent requests are micro-batched: a request's conditions are encoded in the handler, then it joins a
bounded queue (full: 503). One worker merges queued requests into one ONNX Runtime run of at most
``max_batch`` rows, waiting at most ``max_wait_ms`` for company, and hands each request its rows back. Each
request keeps its own noise (drawn from its seed), so its samples equal ``OnnxGenerator.sample`` for that seed.
Bad requests get a 4xx and a one-line ``detail``: 400 malformed JSON, 413 body too large, 422 invalid fields,
unknown modality or format, wrong sizes or lengths, words outside the vocabulary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.concurrency import run_in_threadpool

from fastmmgan.cli import add_verbosity_flags, configure_logging, run_cli
from fastmmgan.errors import FastMMGANError
from fastmmgan.media import image_grid, wav_bytes
from fastmmgan.modalities import ModalitySpec
from fastmmgan.sampler import draw_noise, encode_conditions

from .runtime import OnnxGenerator

Runner = Callable[[np.ndarray, Sequence[np.ndarray], np.ndarray], list[np.ndarray]]
FORMATS = {"json": None, "png": "image", "wav": "audio"}
WAV_GAP_S = 0.1


@dataclass(frozen=True)
class ServeLimits:
    """Bounds that keep one client from starving the others: samples per request, rows per ORT run,
    how long a request waits for others to batch with, queued requests, request body bytes."""

    max_n: int = 64
    max_batch: int = 256
    max_wait_ms: float = 2.0
    max_queue: int = 256
    max_body_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        for name in ("max_n", "max_batch", "max_queue", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise FastMMGANError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.max_wait_ms >= 0:
            raise FastMMGANError(f"max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.max_n > self.max_batch:
            raise FastMMGANError(f"max-n ({self.max_n}) must not exceed max-batch ({self.max_batch})")


class GenerateRequest(BaseModel):
    """The JSON body of ``POST /generate``."""

    model_config = ConfigDict(extra="forbid")
    n: StrictInt = Field(ge=1)
    given: dict[str, Any] | None = None
    seed: Annotated[StrictInt, Field(ge=0, lt=2**64)] | None = None


class ServerBusy(Exception):
    """The request queue is full."""


@dataclass
class _Job:
    inputs: list[np.ndarray]
    future: asyncio.Future

    @property
    def rows(self) -> int:
        return len(self.inputs[0])


class MicroBatcher:
    """Merges concurrent requests' inputs ``[z, x_1..x_M, mask]`` into one run of ``runner`` and splits the outputs.

    Jobs are never split: a batch closes when the next job would push it past ``max_batch`` rows (that job
    opens the next batch), when ``max_wait_ms`` has passed since the batch opened, or when the queue is empty
    and the wait is over. Runs happen one at a time on a worker thread, so the event loop keeps accepting.
    """

    def __init__(self, runner: Runner, max_batch: int, max_wait_ms: float, max_queue: int) -> None:
        self.runner = runner
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.requests = self.runs = self.rows = self.largest_batch = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._carry: _Job | None = None
        self._running: list[_Job] = []
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fastmmgan-ort")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = [*self._running, *([self._carry] if self._carry else [])]
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(ServerBusy("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def stats(self) -> dict[str, int]:
        queued = self._queue.qsize() if self._queue is not None else 0
        counts = {"requests": self.requests, "runs": self.runs, "rows": self.rows, "largest_batch": self.largest_batch}
        return {"queued": queued, **counts}

    async def submit(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Queue one request's inputs; its outputs (one array per modality) when its batch has run."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        job = _Job(inputs, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ServerBusy(f"server busy: {self.max_queue} requests already queued, retry later") from None
        self.requests += 1
        return await job.future

    async def _next_job(self, timeout: float) -> _Job | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _collect(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        jobs, rows = [first], first.rows
        deadline = loop.time() + self.max_wait
        while rows < self.max_batch:
            job = await self._next_job(deadline - loop.time())
            if job is None:
                break
            if rows + job.rows > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            rows += job.rows
        return [j for j in jobs if not j.future.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            self._running = jobs
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, jobs)
            except Exception as e:  # hand every waiting request the failure; keep serving
                outputs = [e] * len(jobs)
            self._running = []
            for job, out in zip(jobs, outputs, strict=True):
                if job.future.done():
                    continue
                if isinstance(out, Exception):
                    job.future.set_exception(out)
                else:
                    job.future.set_result(out)

    def _run(self, jobs: list[_Job]) -> list[list[np.ndarray]]:
        merged = [np.concatenate(parts) for parts in zip(*(j.inputs for j in jobs), strict=True)]
        z, *xs, mask = merged
        outputs = self.runner(z, xs, mask)
        rows = [j.rows for j in jobs]
        self.runs += 1
        self.rows += sum(rows)
        self.largest_batch = max(self.largest_batch, sum(rows))
        cuts = np.cumsum(rows)[:-1]
        per_output = [np.split(o, cuts) for o in outputs]
        return [list(parts) for parts in zip(*per_output, strict=True)]


def _bad(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _bad(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _bad(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes) -> GenerateRequest:
    """JSON body -> request (400 when it is not a JSON object, 422 when a field is wrong)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise _bad(400, f"malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise _bad(400, 'the body must be a JSON object such as {"n": 4, "given": {...}, "seed": 1}')
    try:
        return GenerateRequest.model_validate(obj)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()]
        raise _bad(422, "; ".join(problems)) from None


def pick_output(specs: Sequence[ModalitySpec], fmt: str, modality: str | None) -> ModalitySpec | None:
    """The one modality a request asks for (None: all of them, as JSON); 422 when the choice is impossible."""
    if fmt not in FORMATS:
        raise _bad(422, f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    kind = FORMATS[fmt]
    if modality is not None:
        spec = next((s for s in specs if s.name == modality), None)
        if spec is None:
            raise _bad(422, f"unknown modality {modality!r} (this model has: {', '.join(s.name for s in specs)})")
        if kind is not None and spec.kind != kind:
            raise _bad(422, f"format {fmt} needs an {kind} modality; {modality!r} is {spec.kind}")
        return spec
    if kind is None:
        return None
    matches = [s for s in specs if s.kind == kind]
    if len(matches) != 1:
        names = ", ".join(s.name for s in matches) or "none"
        raise _bad(422, f"format {fmt}: say which {kind} modality with modality=... (this model's: {names})")
    return matches[0]


def _jsonable(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else list(value)


def _decode(spec: ModalitySpec, features: np.ndarray, raw: Mapping[str, Any]) -> Any:
    return raw[spec.name] if spec.name in raw else spec.decode(torch.from_numpy(features))


def _png(images: np.ndarray) -> bytes:
    buf = io.BytesIO()
    image_grid(np.asarray(images, dtype=np.float32)).save(buf, format="PNG")
    return buf.getvalue()


def _wav(clips: np.ndarray, sample_rate: int) -> bytes:
    gap = np.zeros(int(WAV_GAP_S * sample_rate), dtype=np.float32)
    parts = [p for clip in np.asarray(clips, dtype=np.float32) for p in (clip, gap)][:-1]
    return wav_bytes(np.concatenate(parts), sample_rate)


def _render(
    specs: Sequence[ModalitySpec],
    outputs: Sequence[np.ndarray],
    raw: Mapping[str, Any],
    fmt: str,
    chosen: ModalitySpec | None,
) -> tuple[bytes | dict[str, Any], str]:
    """Decode what the request asked for: a JSON-ready dict, or PNG/WAV bytes, and its media type."""
    if fmt == "png":
        return _png(_decode(chosen, outputs[specs.index(chosen)], raw)), "image/png"
    if fmt == "wav":
        return _wav(_decode(chosen, outputs[specs.index(chosen)], raw), chosen.sample_rate), "audio/wav"
    wanted = [chosen] if chosen is not None else list(specs)
    return {s.name: _jsonable(_decode(s, outputs[specs.index(s)], raw)) for s in wanted}, "application/json"


def _prepare(
    specs: Sequence[ModalitySpec], z_dim: int, req: GenerateRequest, seed: int
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Encode the conditions and draw the noise: the graph inputs ``[z, x_1..x_M, mask]`` and the raw conditions."""
    try:
        xs, mask, raw = encode_conditions(specs, req.n, req.given)
    except (ValueError, TypeError) as e:  # FastMMGANError is a ValueError
        raise _bad(422, str(e)) from None
    z = draw_noise(req.n, z_dim, seed)
    return [z.numpy(), *(x.numpy() for x in xs), mask.float().numpy()], raw


def create_app(generator: OnnxGenerator, limits: ServeLimits | None = None) -> FastAPI:
    """The FastAPI app serving ``generator``; start it with its lifespan (uvicorn, or ``with TestClient(app)``)."""
    limits = limits or ServeLimits()
    specs = list(generator.modalities)
    batcher = MicroBatcher(generator.run, limits.max_batch, limits.max_wait_ms, limits.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="fastmmgan generator", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.limits = limits

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "provider": generator.provider, **batcher.stats()}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return {**generator.metadata.describe(), "provider": generator.provider, "limits": asdict(limits)}

    @app.post("/generate")
    async def generate(
        request: Request, fmt: Annotated[str, Query(alias="format")] = "json", modality: str | None = None
    ) -> Response:
        req = parse_request(await read_body(request, limits.max_body_bytes))
        chosen = pick_output(specs, fmt, modality)
        if req.n > limits.max_n:
            raise _bad(422, f"n={req.n} exceeds this server's limit of {limits.max_n} samples per request")
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        inputs, raw = await run_in_threadpool(_prepare, specs, generator.z_dim, req, seed)
        try:
            outputs = await batcher.submit(inputs)
        except ServerBusy as e:
            raise _bad(503, str(e)) from None
        body, media_type = await run_in_threadpool(_render, specs, outputs, raw, fmt, chosen)
        if isinstance(body, dict):
            return JSONResponse({"n": req.n, "seed": seed, "outputs": body})
        return Response(body, media_type=media_type, headers={"X-Seed": str(seed)})

    return app


def build_parser() -> argparse.ArgumentParser:
    d = ServeLimits()
    p = argparse.ArgumentParser(
        prog="python -m fastmmgan.serve",
        description="Serve an exported generator over HTTP: /health, /metadata, POST /generate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="the .onnx file written by python -m fastmmgan.export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port, printed at start)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (None: physical cores)")
    p.add_argument("--spin", action="store_true", help="let ONNX Runtime's threads busy-wait (only on dedicated cores)")
    p.add_argument("--max-n", type=int, default=d.max_n, help="most samples one request may ask for")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="most rows merged into one ONNX Runtime run")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="longest wait for requests to batch with")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="most queued requests (then 503)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="largest request body (then 413)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_verbosity_flags(p)
    return p


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound before the server starts so a taken port is a clear start-up error."""
    if not 0 <= port <= 65535:
        raise FastMMGANError(f"--port must be in 0-65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise FastMMGANError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def main(argv: list[str] | None = None) -> int:
    """Start the server. PyTorch (audio decoding in request threads) gets one thread per request, so
    concurrent decodes do not multiply into oversubscription next to ONNX Runtime's pool."""
    args = build_parser().parse_args(argv)
    configure_logging(args)
    limits = ServeLimits(args.max_n, args.max_batch, args.max_wait_ms, args.max_queue, args.max_body_bytes)
    generator = OnnxGenerator(args.model, device=args.device, intra_op_threads=args.threads, allow_spinning=args.spin)
    sock = bind_socket(args.host, args.port)
    torch.set_num_threads(1)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(f"serving {args.model} on http://{url_host}:{port} ({generator.provider})", flush=True)
    config = uvicorn.Config(create_app(generator, limits), log_level=args.log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    run_cli(main)
