"""The CUDA training path through the CLI: emulated on CPU, with a negative control, and for real on a GPU.

Emulation: ``FASTMMGAN_KERNELS=triton TRITON_INTERPRET=1 python -m fastmmgan.train --device cpu --compile
--compile-backend aot_eager --precision bf16`` runs the compiled step's AOTAutograd graphs op by op, so
every fused op call is the Triton kernel launch the CUDA step makes, on CPU tensors in Triton's
interpreter, under the same bf16 autocast. The negative control is the same command without the
interpreter: it must fail inside a kernel launch, which shows the kernels were what ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_cuda

TINY = ["--steps", "2", "--batch-size", "16", "--z-dim", "8", "--g-width", "32", "--d-width", "32",
        "--g-depth", "1", "--d-depth", "1", "--log-every", "1", "--ckpt-every", "0", "--sample-every", "0",
        "--no-progress"]
EMULATED = ["--device", "cpu", "--compile", "--compile-backend", "aot_eager", "--precision", "bf16"]
# The CLI's wiring, on the default recipe and on the one with the most kernels (attention fusion in G, D and
# the encoder). The penalties' double backward through the kernels (R1, wgan-gp) is checked step for step
# against the reference in tests/test_step.py::test_compiled_step_runs_the_triton_kernels.
RECIPES = {"ns": [],
           "attention-encoder": ["--fusion", "attention", "--recon-weight", "5", "--latent-weight", "0.5", "--e-width",
                                 "32", "--e-depth", "1"]}


def train(out: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTMMGAN_KERNELS")}
    environ.update(OMP_NUM_THREADS="1", **env)
    cmd = [sys.executable, "-m", "fastmmgan.train", *TINY, *args, "--out", str(out)]
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=600)


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_emulated_cuda_step_trains_on_the_triton_kernels(tmp_path, recipe):
    done = train(tmp_path, EMULATED + RECIPES[recipe], TRITON_INTERPRET="1", FASTMMGAN_KERNELS="triton")
    assert done.returncode == 0, done.stderr[-3000:]
    log = events(tmp_path)
    step = next(e for e in log if e.get("event") == "first_step")
    assert step["kind"] == "CompiledStep" and step["kernels"] == "triton" and step["precision"] == "bf16"
    launched = step["kernel_launches"]
    assert launched["projection_fwd"] > 0 and launched["dgrad"] > 0 and launched["wgrad"] > 0, launched
    if "--fusion" in RECIPES[recipe]:  # the attention of G, D and the encoder, forward and backward
        assert launched["attention_fwd"] > 0 and launched["attention_bwd"] > 0, launched
    compiled = next(e for e in log if e.get("event") == "compiled")
    assert compiled["backend"] == "aot_eager"
    losses = [e for e in log if "train/loss_d" in e or "loss_d" in e]
    assert len(losses) == 2


def test_negative_control_without_the_interpreter_fails_in_a_kernel(tmp_path):
    """Same command, no interpreter: a Triton kernel launch on CPU tensors fails, so the run above did launch
    them. The failure is one clear line naming the kernels, exit 2."""
    done = train(tmp_path, EMULATED, FASTMMGAN_KERNELS="triton")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "error: the Triton kernels failed on the first training step on cpu" in done.stderr
    # Triton's launcher itself refused: it found no GPU driver for the CPU tensors.
    assert "active drivers" in done.stderr
    assert "TRITON_INTERPRET=1" in done.stderr


def test_triton_kernels_on_cpu_under_inductor_are_refused(tmp_path):
    done = train(tmp_path, ["--device", "cpu", "--compile"], FASTMMGAN_KERNELS="triton", TRITON_INTERPRET="1")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: FASTMMGAN_KERNELS=triton on --device cpu needs")


@requires_cuda
def test_default_training_runs_the_kernels_on_cuda(tmp_path):
    """On a GPU the default command (auto dispatch, inductor, CUDA graphs, bf16) runs the kernels after
    their self-check passed."""
    done = train(tmp_path, ["--device", "cuda"])
    assert done.returncode == 0, done.stderr[-3000:]
    log = events(tmp_path)
    checks = next(e for e in log if e.get("event") == "kernel_self_check")["checks"]
    assert checks and all(c["ok"] for c in checks), checks
    step = next(e for e in log if e.get("event") == "first_step")
    assert step["kind"] == "CompiledStep" and step["kernel_launches"].get("projection_fwd", 0) > 0
