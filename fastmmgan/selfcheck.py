"""First-use self-check of the Triton kernels on a device, with a fall-back to the reference math.

The first time ``auto`` dispatch would send an op family (``fused_dense``, ``shared_projection``,
``masked_attention``) in one
dtype on one device to the kernels, they run once on a small input with odd shapes (partial tiles, every
mask pattern, all-absent rows) and are compared with the reference, forward and every gradient, at the
numerics policy's tolerance. A mismatch or an error (a Triton compile failure on an unsupported GPU, a
driver problem) warns once, is kept in :data:`records` (the trainer writes them to metrics.jsonl), and
that family then uses the reference math: training goes on, slower, instead of crashing or silently
learning from wrong gradients (as StyleGAN2-ADA's ``bias_act`` falls back when its plugin fails).
``FASTMMGAN_KERNELS=triton`` skips the check: the kernels always run and errors raise.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable

import torch

from . import ops

FAMILIES = ("fused_dense", "shared_projection", "masked_attention")

_Key = tuple[str, str, torch.dtype]
_results: dict[_Key, dict[str, object]] = {}
records: list[dict[str, object]] = []
"""One JSON-ready record per check made in this process: family, device, dtype, ok, and what failed (or None)."""


def _key(family: str, device: torch.device | str, dtype: torch.dtype) -> _Key:
    device = torch.device(device)
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else 0)
    return family, f"{device.type}:{index}", dtype


def passed(family: str, device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the kernels of ``family`` passed their self-check for ``dtype`` on ``device`` (checking now
    if they have not been checked yet).

    Inside a torch.compile trace nothing can run: a family not checked before tracing counts as passed,
    so whoever compiles a step calls :func:`ensure` first (the compiled training step does).
    """
    record = _results.get(_key(family, device, dtype))
    if record is None:
        if torch.compiler.is_compiling():
            return True
        record = _check_and_record(family, device, dtype)
    return bool(record["ok"])


def ensure(device: torch.device | str, dtypes: Iterable[torch.dtype]) -> list[dict[str, object]]:
    """Check every family in each dtype on ``device`` (once per process); the records of those checks."""
    checked = []
    for dtype in dtypes:
        for family in FAMILIES:
            passed(family, device, dtype)
            checked.append(_results[_key(family, device, dtype)])
    return checked


def _check_and_record(family: str, device: torch.device | str, dtype: torch.dtype) -> dict[str, object]:
    key = _key(family, device, dtype)
    try:
        problem = run_check(family, torch.device(device), dtype)
    except Exception as error:  # noqa: BLE001 - any failure of the kernels means: use the reference
        problem = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    ok = problem is None
    record = {"family": family, "device": key[1], "dtype": str(dtype).removeprefix("torch."), "ok": ok, "problem": problem}
    _results[key] = record
    records.append(record)
    if not ok:
        warnings.warn(
            f"fastmmgan: the Triton {family} kernels failed their self-check on {key[1]} in "
            f"{str(dtype).removeprefix('torch.')} ({problem}); using the reference math for them",
            RuntimeWarning,
            stacklevel=3,
        )
    return record


def tolerance(dtype: torch.dtype) -> float:
    """The numerics policy: 1e-5 for fp32 (and TF32 would need more: the check runs fp32 as dispatched), 2e-2 for 16-bit."""
    if dtype == torch.float32:
        return 1e-5 if not ops.tf32_allowed() else 5e-3
    return 2e-2


def run_check(family: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Compare the kernels of ``family`` with the reference on one small odd-shaped problem; None when they
    agree, else a one-line description of the worst mismatch. Runs with autocast off and grad on."""
    from fastmmgan import kernels

    rng = torch.Generator().manual_seed(0)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=rng) * scale).to(device)

    batch, n = 67, 37
    out_shape = (batch, n)  # the output's, for the gradient fed back
    if family == "fused_dense":
        k = 45
        inputs = [rand(batch, k), rand(n, k, scale=k**-0.5), rand(n)]

        def fast(t: list[torch.Tensor]) -> torch.Tensor:
            return kernels.fused_dense_triton(t[0], t[1], t[2], ops.DEFAULT_SLOPE)

        def ref(t: list[torch.Tensor]) -> torch.Tensor:
            return ops.fused_dense_reference(t[0], t[1], t[2], ops.DEFAULT_SLOPE)
    elif family == "shared_projection":
        ks = (45, 20, 9)
        patterns = torch.tensor(list(itertools.product([False, True], repeat=len(ks))))
        mask = patterns[torch.arange(batch) % len(patterns)].to(device)
        inputs = [*(rand(batch, k) for k in ks), *(rand(n, k, scale=k**-0.5) for k in ks), rand(n)]
        m = len(ks)

        def fast(t: list[torch.Tensor]) -> torch.Tensor:
            return kernels.shared_projection_triton(t[:m], t[m : 2 * m], t[-1], mask, ops.DEFAULT_SLOPE)

        def ref(t: list[torch.Tensor]) -> torch.Tensor:
            return ops.shared_projection_reference(t[:m], t[m : 2 * m], t[-1], mask, ops.DEFAULT_SLOPE)
    elif family == "masked_attention":
        tokens, heads, head_dim = 3, 2, 24
        patterns = torch.tensor(list(itertools.product([False, True], repeat=tokens)))
        mask = patterns[torch.arange(batch) % len(patterns)].to(device)
        inputs = [rand(batch, heads, tokens, head_dim) for _ in range(3)]
        out_shape = (batch, heads, tokens, head_dim)

        def fast(t: list[torch.Tensor]) -> torch.Tensor:
            return kernels.masked_attention_triton(t[0], t[1], t[2], mask)

        def ref(t: list[torch.Tensor]) -> torch.Tensor:
            return ops.masked_attention_reference(t[0], t[1], t[2], mask)
    else:
        raise ValueError(f"unknown kernel family {family!r} (expected one of {', '.join(FAMILIES)})")
    dy = rand(*out_shape)
    with torch.autocast(device.type, enabled=False), torch.enable_grad():
        got = _forward_and_grads(fast, [t.to(dtype) for t in inputs], dy.to(dtype))
        want = _forward_and_grads(ref, [t.to(dtype).float() for t in inputs], dy.to(dtype).float())
    names = ["y"] + [f"grad{i}" for i in range(len(inputs))]
    tol = tolerance(dtype)
    for name, a, b in zip(names, got, want, strict=True):
        if a.shape != b.shape or a.dtype != dtype:
            return f"{name}: got {a.dtype} {tuple(a.shape)}, expected {dtype} {tuple(b.shape)}"
        expected = b.to(dtype).float()
        atol = tol * max(1.0, b.abs().max().item())
        err = (a.float() - expected).abs()
        # assert_close's rule, element-wise: |a - b| <= atol + rtol * |b|; NaN fails it too.
        if not bool((err <= atol + tol * expected.abs()).all()):
            return f"{name} differs from the reference by up to {err.max().item():.3g} (atol {atol:.3g}, rtol {tol:g})"
    return None


def _forward_and_grads(fn: Callable[[list[torch.Tensor]], torch.Tensor], inputs: list[torch.Tensor],
                       dy: torch.Tensor) -> list[torch.Tensor]:
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = fn(leaves)
    return [y.detach(), *torch.autograd.grad(y, leaves, dy)]
