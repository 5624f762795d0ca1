"""ONNX Runtime vs PyTorch eager generation with the default-size generator (pytest-benchmark).

Run: ``OMP_WAIT_POLICY=PASSIVE pytest benchmarks/test_bench_onnx.py --benchmark-enable --benchmark-only``.
The plain ``pytest`` runs only its numerics checks (timing off). ``OMP_WAIT_POLICY=PASSIVE`` (read when torch
loads OpenMP, so it must be set outside) matters on a shared machine: PyTorch's OpenMP workers otherwise spin
at every barrier, and when another process holds one of the cores a 2-thread forward pass waits whole
scheduler slices (measured on a loaded 2-core machine: batch 32 took 50 ms instead of 4.9 ms), which would
flatter ONNX Runtime (whose spinning ``OnnxGenerator`` turns off) for the wrong reason.

The generator is the default configuration (z 32, width 256, depth 2, the digits modalities), built by a
``Trainer`` at step 0 and exported with ``fastmmgan.export`` (which checks parity itself). Both engines time one
forward pass from ready inputs ``z, features, mask`` to features: PyTorch under ``inference_mode``, ONNX Runtime
through ``OnnxGenerator.run`` (the public API, input checks included). Both get the same number of threads:
``FASTMMGAN_BENCH_THREADS``, default the physical cores. Before timing each batch size, the ORT output is
checked against PyTorch at the fp32 export tolerance. At the end the median ratio of every batch size is printed
(targets on the 2-core CPU: >= 3x at batch 1, >= 1.5x at batch 32, >= 1x at batch 1024).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from benchmarks.summary import print_summary
from fastmmgan.checkpoint import load_checkpoint
from fastmmgan.config import TrainConfig
from fastmmgan.export import TOLERANCES, OnnxGenerator, export_generator
from fastmmgan.export.exporter import example_inputs
from fastmmgan.export.runtime import physical_cores
from fastmmgan.sampler import generator_from_state
from fastmmgan.trainer import Trainer

THREADS = int(os.environ.get("FASTMMGAN_BENCH_THREADS", physical_cores()))
BATCHES = (1, 32, 1024)
TARGETS = {1: 3.0, 32: 1.5, 1024: 1.0}
MEDIANS: dict[tuple[int, str], float] = {}


@pytest.fixture(scope="module")
def engines(tmp_path_factory, request):
    """(PyTorch EMA generator, OnnxGenerator) of the default config, sharing ``THREADS`` threads."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    out = tmp_path_factory.mktemp("bench_onnx")
    Trainer(TrainConfig(compile=False, device="cpu"), out / "run").save()
    path = export_generator(out / "run", out / "gen.onnx").path
    generator = generator_from_state(load_checkpoint(out / "run")).eval()
    yield generator, OnnxGenerator(path, device="cpu", intra_op_threads=THREADS)
    torch.set_num_threads(old_threads)
    _print_ratios(request.config)


def _print_ratios(config: pytest.Config) -> None:
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    lines = [f"ORT vs PyTorch eager, {THREADS} thread(s), OMP_WAIT_POLICY={policy}, medians:"]
    for batch in BATCHES:
        t_torch, t_ort = MEDIANS.get((batch, "torch")), MEDIANS.get((batch, "ort"))
        if t_torch and t_ort:
            lines.append(
                f"  batch {batch:>4}: torch {t_torch * 1e3:8.3f} ms, ort {t_ort * 1e3:8.3f} ms, "
                f"ORT {t_torch / t_ort:5.2f}x faster (target >= {TARGETS[batch]:g}x)"
            )
    print_summary(config, lines)


@pytest.mark.parametrize("engine", ["torch", "ort"])
@pytest.mark.parametrize("batch", BATCHES)
def test_generate(benchmark, engines, batch, engine):
    generator, onnx_gen = engines
    z, *xs, mask = example_inputs(generator, batch, seed=batch)
    given = mask.bool()
    feeds = z.numpy(), [x.numpy() for x in xs], mask.numpy()
    with torch.inference_mode():
        expected = generator(z, xs, given)
    atol, rtol = TOLERANCES["fp32"]
    for got, want in zip(onnx_gen.run(*feeds), expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=atol, rtol=rtol)

    def run_torch() -> None:
        with torch.inference_mode():
            generator(z, xs, given)

    benchmark.group = f"generate batch {batch}"
    benchmark.extra_info.update(batch=batch, engine=engine, threads=THREADS)
    benchmark(run_torch if engine == "torch" else lambda: onnx_gen.run(*feeds))
    if benchmark.stats is not None:
        MEDIANS[(batch, engine)] = benchmark.stats.stats.median
