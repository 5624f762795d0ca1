"""``python -m fastmmgan.bench`` (this module): the training step, compiled vs the eager reference, as a table.

For each config: ms per step of every implementation, the compiled step's speed-up over each (median of
per-round ratios, all interleaved round by round on the same inputs, so a busy machine slows all alike), samples/s, useful
GFLOP/s and its share of this machine's GEMM peak in the step's compute dtype (fp32 on CPU, bf16 under
the CUDA step's autocast), measured in the same run with a square matmul.
Before timing, the compiled step is checked against the reference for a few steps from the same init,
both under the same autocast and dispatch, at that dtype's tolerance of the numerics policy.

Configs (see :data:`CONFIGS`):

- ``seed-mnist``: the seeds' classic MLP GAN exactly (G 100-128-256-784 sigmoid, D 784-256-128-1,
  leaky-ReLU 0.2, non-saturating loss; ``--g-widths 128,256 --d-widths 256,128 --mbstd-group 0``) on one
  28x28 image modality of uniform random data. Here the hand-written loop a user writes from the seeds
  (:class:`HandwrittenGAN`: ``nn.Sequential`` models, ``torch.optim.Adam``, two D passes), eager and with
  ``torch.compile`` on G and D, is timed beside both steps from the same initial weights, and the table
  leads with the compiled step's speed-up over it.
- ``digits``: :class:`~fastmmgan.config.TrainConfig` defaults on the built-in digits data.
- ``wide``: width 1024 on the digits modalities with random data; batch 4096 on a GPU, 1024 on a CPU.
- ``digits-attention``: the digits defaults with ``--fusion attention`` (batch 64), to set beside ``digits``;
  asked for by name (``--configs digits digits-attention``), since its numerics check does not pass yet.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from fastmmgan.build import Models, build_models
from fastmmgan.config import TrainConfig
from fastmmgan.models import Discriminator, Generator
from fastmmgan.step import CompiledStep, ReferenceStep, StepInputs, autocast_dtype
from fastmmgan.step_inputs import draw_step_inputs

from .handwritten import HandwrittenGAN, handwritten_peers
from .step_check import Step, assert_steps_match, make_steps
from .train_configs import CONFIGS, SUITE_CONFIGS, BenchConfig, default_batches


def gemm_flops(G: Generator, D: Discriminator, batch: int) -> float:
    """GEMM FLOPs of one step as the step's math defines them (2*B*K*N per product).

    D update: D forward on 3B rows (real, fake, mismatched; 2B with one modality, where no row can be
    mismatched), its weight gradients, and input gradients of every layer but the first (data needs
    none). G update: G forward on B rows (counted once; the D update reuses it), D forward on B rows
    and its input gradients (no weight gradients), G's weight gradients and input gradients of every
    layer but the fusion (noise and data need none). The recipe's
    extra products (the MMD's row distances, at most 256 rows) are work, but not counted as useful.
    """

    def layers(model: torch.nn.Module) -> tuple[float, float]:
        kn = [m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
        first = sum(p.in_features * p.out_features for p in model.fusion.proj)
        return float(sum(kn)), float(sum(kn) - first)

    g_all, g_rest = layers(G)
    d_all, d_rest = layers(D)
    d_rows = (3 if len(D.specs) > 1 else 2) * batch
    d_update = d_rows * (d_all + d_all + d_rest)
    g_update = batch * (g_all + d_all + d_all + g_all + g_rest)
    return 2.0 * (d_update + g_update)


def gemm_peak(
    n: int = 2048, repeats: int = 5, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """GEMM GFLOP/s of an n^3 matmul in ``dtype`` on ``device``: the best of ``repeats`` (the machine's ceiling)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Row:
    """One config and batch: ms per step of each implementation, and the compiled step's speed-up over each
    (median of per-round ratios); the hand-written columns are None where there is no plain-MLP peer."""

    name: str
    batch: int
    hand_ms: float | None
    vs_hand: float | None
    hand_compiled_ms: float | None
    vs_hand_compiled: float | None
    ref_ms: float
    vs_ref: float
    fast_ms: float
    samples_per_s: float
    gflops: float
    peak_share: float
    compile_s: float


def time_interleaved(
    steps: dict[str, Step], inputs: Sequence[StepInputs], rounds: int, per_round: int, device
) -> dict[str, list[float]]:
    """ms per step of each of ``steps`` in each of ``rounds`` rounds; within a round every step runs
    ``per_round`` times in turn, the order rotating from round to round, so a busy machine slows all alike."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            for i in range(per_round):
                steps[name](inputs[i % len(inputs)])
            _sync(device)
            times[name].append((time.perf_counter() - start) / per_round * 1e3)
    return times


def median_ratio(slow: Sequence[float], fast: Sequence[float]) -> float:
    """Median over rounds of slow / fast (the speed-up of ``fast``), robust to a round that hit noise."""
    return statistics.median(a / b for a, b in zip(slow, fast, strict=True))


@dataclass
class Prepared:
    """One config at one batch size, ready to time: both steps (checked against each other, so compiled), the
    hand-written peers (warmed up), 8 steps' inputs on the device and the models the reference step trains."""

    models: Models
    ref: ReferenceStep
    fast: CompiledStep
    peers: dict[str, HandwrittenGAN]
    inputs: list[StepInputs]


def prepare(bc: BenchConfig, batch: int, device: torch.device, check_steps: int = 3) -> Prepared:
    """Build ``bc`` at ``batch`` on ``device`` from its seed, check the compiled step against the reference at
    its dtype's tolerance, and compile and warm up everything outside any timed region."""
    cfg = replace(bc.cfg, batch_size=batch)
    ds = bc.data(batch)
    models = build_models(ds, cfg, device)
    twin = models.copy(cfg)
    peers = handwritten_peers(models, cfg)
    ref, fast = make_steps(models, twin, cfg, device=device)
    inputs = [draw_step_inputs(ds, i, cfg).to(device) for i in range(8)]
    policy = "fp32" if fast.amp_dtype is None else "bf16"
    assert_steps_match(ref, fast, models, twin, inputs[:check_steps], policy=policy)
    for peer in peers.values():
        for batch_in in inputs[:3]:
            peer(batch_in)
    return Prepared(models, ref, fast, peers, inputs)


def bench_config(
    bc: BenchConfig, batch: int, peak: float, device: torch.device, rounds: int = 11, check_steps: int = 3
) -> Row:
    """Check the compiled step against the reference, then time it interleaved with the reference step and,
    for one-modality configs, the hand-written loop eager and with torch.compile (see the module docstring)."""
    prepared = prepare(bc, batch, device, check_steps)
    models, ref, fast, peers, inputs = prepared.models, prepared.ref, prepared.fast, prepared.peers, prepared.inputs
    per_round = max(2, min(20, int(2000 / batch)))
    times = time_interleaved({"ref": ref, "fast": fast, **peers}, inputs, rounds, per_round, device)
    fast_ms = statistics.median(times["fast"])
    gflops = gemm_flops(models.G, models.D, batch) / fast_ms / 1e6

    def versus(name: str) -> tuple[float | None, float | None]:
        if name not in times:
            return None, None
        return statistics.median(times[name]), median_ratio(times[name], times["fast"])

    return Row(
        bc.name, batch, *versus("hand-written"), *versus("hand-written-compiled"), *versus("ref"), fast_ms,
        batch / fast_ms * 1e3, gflops, gflops / peak, fast.compile_seconds,
    )


def format_table(rows: Sequence[Row], peak: float, device: str, dtype: torch.dtype = torch.float32, n: int = 2048) -> str:
    """The markdown table: speed-up over the hand-written loop first, then over its compiled variant and
    over the reference step, then ms per step of each, samples/s, useful GFLOP/s and share of the peak."""
    name = str(dtype).removeprefix("torch.")

    def ratio(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}x"

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    head = (
        f"device: {device}; {name} GEMM peak ({n}^3 matmul, best of the run): {peak:.0f} GFLOP/s\n"
        "| config | batch | vs hand-written | vs hand-written + torch.compile | vs reference step | hand-written ms | "
        "hand-written + compile ms | reference ms | compiled ms | samples/s | useful GFLOP/s | of peak | compile s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r.name} | {r.batch} | {ratio(r.vs_hand)} | {ratio(r.vs_hand_compiled)} | {ratio(r.vs_ref)} | "
        f"{ms(r.hand_ms)} | {ms(r.hand_compiled_ms)} | {r.ref_ms:.2f} | {r.fast_ms:.2f} | {r.samples_per_s:,.0f} | "
        f"{r.gflops:.1f} | {r.peak_share:.0%} | {r.compile_s:.1f} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "CPU"
    return f"{model}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastmmgan.bench", description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(SUITE_CONFIGS),
                   help=f"default: {' '.join(SUITE_CONFIGS)}")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default: 64 and 1024; wide: 4096 on a GPU, 1024 on a CPU)")
    p.add_argument("--rounds", type=int, default=11, help="timed rounds per config (each times both steps)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    # The peak in the dtype the step's GEMMs run in (bf16 under the CUDA step's autocast), large enough
    # to saturate the device.
    dtype = autocast_dtype(TrainConfig.precision, device) or torch.float32
    n = 8192 if cuda else 2048
    peak = gemm_peak(n=n, device=device, dtype=dtype)
    rows = []
    for name in args.configs:
        for batch in args.batch or default_batches(name, cuda):
            torch._dynamo.reset()
            rows.append(bench_config(CONFIGS[name], batch, peak, device, rounds=args.rounds))
            peak = max(peak, gemm_peak(n=n, device=device, dtype=dtype))
            r = rows[-1]
            hand = "" if r.vs_hand is None else f"{r.vs_hand:.2f}x the hand-written loop, "
            print(f"{name} batch {batch}: {hand}{r.vs_ref:.2f}x the reference step", flush=True)
    for row in rows:
        row.peak_share = row.gflops / peak
    print(format_table(rows, peak, device_name(device), dtype, n))
    if "wide" in args.configs and not cuda and not args.batch:
        print("wide runs at batch 1024 on a CPU; its batch 4096 is for GPUs (--batch 4096 to force it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
