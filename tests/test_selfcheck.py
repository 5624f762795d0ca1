"""The kernels' first-use self-check and the dispatch that follows it (auto mode falls back, triton mode never).

The check itself runs on CPU tensors in Triton's interpreter; the dispatch decision for CUDA tensors is
driven with a stand-in tensor (only its device, dtype and ``is_cuda`` are read), so it is tested without a GPU.
"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from fastmmgan import kernels, ops, selfcheck  # noqa: E402
from fastmmgan.config import TrainConfig  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    """Each test starts with no checks made and leaves the process's records as they were."""
    monkeypatch.setattr(selfcheck, "_results", {})
    monkeypatch.setattr(selfcheck, "records", [])


@pytest.mark.parametrize("family", selfcheck.FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_correct_kernels_pass(family, dtype):
    assert selfcheck.run_check(family, CPU, dtype) is None
    assert selfcheck.passed(family, CPU, dtype)
    assert selfcheck.records == [
        {"family": family, "device": "cpu:0", "dtype": str(dtype).removeprefix("torch."), "ok": True, "problem": None}
    ]


def test_wrong_results_fail_once_with_one_warning(monkeypatch):
    real = kernels.fused_dense_triton
    monkeypatch.setattr(kernels, "fused_dense_triton", lambda x, w, b, slope: real(x, w, b, slope) * 1.001)
    with pytest.warns(RuntimeWarning, match=r"Triton fused_dense kernels failed their self-check on cpu:0 in float32 \(y "):
        assert not selfcheck.passed("fused_dense", CPU, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the answer is remembered: no second check, no second warning
        assert not selfcheck.passed("fused_dense", CPU, torch.float32)
    assert len(selfcheck.records) == 1 and not selfcheck.records[0]["ok"]
    assert "differs from the reference" in selfcheck.records[0]["problem"]


def test_a_kernel_error_is_recorded_not_raised(monkeypatch):
    def broken(*args):
        raise RuntimeError("PTX compile failed\nmore detail")

    monkeypatch.setattr(kernels, "shared_projection_triton", broken)
    with pytest.warns(RuntimeWarning, match="RuntimeError: PTX compile failed"):
        records = selfcheck.ensure(CPU, [torch.bfloat16])
    assert [(r["family"], r["ok"]) for r in records] == [("fused_dense", True), ("shared_projection", False),
                                                         ("masked_attention", True)]


def cuda_like(dtype: torch.dtype) -> SimpleNamespace:
    """What dispatch reads of a CUDA tensor, on a machine without one."""
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), dtype=dtype)


def mark(family: str, dtype: torch.dtype, ok: bool) -> None:
    selfcheck._results[selfcheck._key(family, torch.device("cuda", 0), dtype)] = {"ok": ok}


def test_auto_dispatch_follows_the_self_check_on_cuda_tensors():
    mark("fused_dense", torch.bfloat16, True)
    mark("shared_projection", torch.bfloat16, False)
    with ops.kernels_mode("auto"):
        assert ops._kernels_for(cuda_like(torch.bfloat16), "fused_dense") is kernels
        assert ops._kernels_for(cuda_like(torch.bfloat16), "shared_projection") is None
        # fp32 without TF32 goes to cuBLAS whatever the check says; CPU tensors never reach the kernels.
        mark("fused_dense", torch.float32, True)
        assert ops._kernels_for(cuda_like(torch.float32), "fused_dense") is None
        assert ops._kernels_for(torch.ones(1), "fused_dense") is None
    with ops.kernels_mode("triton"):  # forced: no check, no fall-back
        assert ops._kernels_for(cuda_like(torch.bfloat16), "shared_projection") is kernels


def test_failed_checks_reach_the_run_log(tmp_path, monkeypatch):
    from fastmmgan.trainer import Trainer

    real = kernels.fused_dense_triton
    monkeypatch.setattr(kernels, "fused_dense_triton", lambda *args: real(*args) * float("nan"))
    with pytest.warns(RuntimeWarning):
        selfcheck.passed("fused_dense", CPU, torch.float32)
    cfg = TrainConfig(steps=1, batch_size=16, z_dim=8, g_width=32, d_width=32, compile=False, device="cpu",
                      sample_every=0, ckpt_every=0)
    Trainer(cfg, tmp_path).run(progress=False)
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    checks = next(e for e in events if e.get("event") == "kernel_self_check")["checks"]
    assert checks == [{"family": "fused_dense", "device": "cpu:0", "dtype": "float32", "ok": False,
                       "problem": checks[0]["problem"]}]
    assert "differs from the reference" in checks[0]["problem"]
