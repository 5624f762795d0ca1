"""The training step, compiled vs the eager reference and vs the loop a user writes by hand (pytest-benchmark).

Run: ``pytest benchmarks/test_bench_train.py --benchmark-enable --benchmark-only`` (the first run compiles
every config, minutes on a 2-core CPU; the plain ``pytest`` runs each config's numerics check at its
smallest batch, timing off). For the ratios as medians of interleaved
rounds, and the table, use ``python -m fastmmgan.bench``.

For one-modality configs (``seed-mnist``: the seeds' MLP GAN exactly) two more implementations of the
same architecture, from the same initial weights, are timed: the hand-written eager loop
(``nn.Sequential`` + ``torch.optim.Adam``, :class:`benchmarks.handwritten.HandwrittenGAN`) and the same with
``torch.compile`` on G and D.

Configs and batch sizes are those of :mod:`benchmarks.train_configs` (seed-mnist, digits, wide). Before any
timing, each config's compiled step is checked against the reference for 3 steps from one init
(:func:`benchmarks.step_check.assert_steps_match`), which also compiles it, so compile time is excluded
(it is reported in ``extra_info``). Each group holds one config's compiled and reference timings;
``extra_info`` has the useful GFLOP per step, so GFLOP/s = gflop_per_step / mean seconds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch

from benchmarks.handwritten import HandwrittenGAN
from benchmarks.train_bench import gemm_flops, prepare
from benchmarks.train_configs import CONFIGS, SUITE_CONFIGS, default_batches
from fastmmgan.step import CompiledStep, ReferenceStep, StepInputs

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
CASES = [(name, batch) for name in SUITE_CONFIGS for batch in default_batches(name, CUDA)]
PEERED = ("seed-mnist",)
"""Configs with a plain-MLP equivalent (one modality, no recipe extras), timed against the hand-written loop."""
IMPLS = ("compiled", "reference", "hand-written", "hand-written-compiled")
RUNS = [(case_, impl) for case_ in CASES for impl in IMPLS if case_[0] in PEERED or not impl.startswith("hand-written")]


@dataclass
class Case:
    ref: ReferenceStep
    fast: CompiledStep
    inputs: list[StepInputs]
    gflop: float
    peers: dict[str, HandwrittenGAN]


_CASES: dict[tuple[str, int], Case] = {}


def case(name: str, batch: int) -> Case:
    """Both steps for a config and batch, checked against each other once (and compiled) on first use."""
    key = (name, batch)
    if key not in _CASES:
        p = prepare(CONFIGS[name], batch, DEVICE)
        _CASES[key] = Case(p.ref, p.fast, p.inputs, gemm_flops(p.models.G, p.models.D, batch) / 1e9, p.peers)
    return _CASES[key]


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Timing runs every config at every batch size; the plain run (timing off) checks each config's numerics
    at its smallest batch only, which is where the compile time goes."""
    if metafunc.definition.name != "test_train_step":
        return
    opts = metafunc.config.getoption
    timing = opts("benchmark_enable", False) or not opts("benchmark_disable", False)
    smallest = {name: min(b for n, b in CASES if n == name) for name, _ in CASES}
    runs = [r for r in RUNS if timing or r[0][1] == smallest[r[0][0]]]
    metafunc.parametrize("config, impl", runs, ids=[f"{c[0]}-B{c[1]}-{impl}" for c, impl in runs])


def test_train_step(benchmark, config: tuple[str, int], impl: str) -> None:
    name, batch = config
    c = case(name, batch)
    assert (impl in c.peers) or not impl.startswith("hand-written"), f"{name} lost its hand-written peer"
    step = {"compiled": c.fast, "reference": c.ref, **c.peers}[impl]
    batches = itertools.cycle(c.inputs)

    def call() -> None:
        step(next(batches))
        _sync()

    benchmark.group = f"train step {name} B={batch}"
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if CUDA else f"cpu, {torch.get_num_threads()} threads",
        gflop_per_step=round(c.gflop, 3),
        samples_per_step=batch,
        compile_seconds=round(c.fast.compile_seconds, 1),
    )
    benchmark.pedantic(call, rounds=max(5, min(40, 4096 // batch)), iterations=1, warmup_rounds=2)


def test_gemm_peak(benchmark) -> None:
    """The machine's fp32 GEMM ceiling in the same run: a 2048^3 matmul (GFLOP/s = 17.18 / seconds)."""
    a = torch.randn(2048, 2048, device=DEVICE)
    b = torch.randn(2048, 2048, device=DEVICE)

    def call() -> None:
        a @ b
        _sync()

    benchmark.group = "fp32 GEMM peak 2048^3"
    benchmark.extra_info["gflop"] = 2 * 2048**3 / 1e9
    benchmark.pedantic(call, rounds=10, iterations=1, warmup_rounds=2)
