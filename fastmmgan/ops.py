"""The fused ops of fastmmgan (dense layer, shared projection, masked attention), as plain-torch reference math.

Contracts (see the design notes): shapes use B batch, K input features, N output
features, M modalities; ``lrelu(v) = v if v > 0 else slope * v``.

These functions are the source of truth: every kernel, compiled path and export is
checked against them.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

import torch
import torch.nn.functional as F

DEFAULT_SLOPE = 0.2
KERNELS_ENV = "FASTMMGAN_KERNELS"
_KERNEL_MODES = ("auto", "reference", "triton")
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def fused_dense_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, slope: float = DEFAULT_SLOPE
) -> torch.Tensor:
    """``lrelu(x @ weight.T + bias)``; x [B,K], weight [N,K] (nn.Linear layout), bias [N] -> [B,N]."""
    return F.leaky_relu(F.linear(x, weight, bias), slope)


def presence_weights(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-sample modality weights ``mask / max(1, count)``: mask [B,M] (bool or float) -> [B,M]."""
    m = mask.to(dtype)
    return m / m.sum(dim=1, keepdim=True).clamp_min(1.0)


def shared_projection_reference(
    xs: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    bias: torch.Tensor,
    mask: torch.Tensor | None,
    slope: float = DEFAULT_SLOPE,
) -> torch.Tensor:
    """Masked mean of per-modality projections plus bias, then leaky-ReLU.

    xs: M tensors [B,K_m]; weights: M tensors [N,K_m]; bias [N]; mask [B,M] or None (all present).
    ``y = lrelu(sum_m (mask[:,m]/c)[:,None] * (x_m @ W_m.T) + bias)`` with ``c = max(1, sum_m mask)``,
    so the scale does not depend on how many modalities are given; a row with none gets lrelu(bias).
    The mask is not differentiated.
    """
    if len(xs) != len(weights) or not xs:
        raise ValueError(
            f"shared_projection needs one weight per input, got {len(xs)} inputs and {len(weights)} weights"
        )
    acc = None
    w = None if mask is None else presence_weights(mask.detach(), xs[0].dtype)
    scale = 1.0 / len(xs)
    for m, (x, weight) in enumerate(zip(xs, weights, strict=True)):
        proj = F.linear(x, weight)
        proj = proj * (w[:, m : m + 1] if w is not None else scale)
        acc = proj if acc is None else acc + proj
    return F.leaky_relu(acc + bias, slope)


@torch.compiler.assume_constant_result
def tf32_allowed() -> bool:
    """Whether torch lets fp32 CUDA matmuls use TF32, read through the API the user set it with.

    Under torch.compile the answer is read once, when the graph is traced (dynamo cannot trace torch's
    precision getters), and holds for that graph: set the precision before the first compiled step.

    torch >= 2.9 has ``torch.backends.cuda.matmul.fp32_precision`` ("tf32", "ieee", or "none" = inherit
    ``torch.backends.fp32_precision``); the legacy ``allow_tf32`` flag sets it too, but reading the legacy
    flag after the new API was used raises, so it is only read where the new API does not exist.
    """
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:
        return bool(matmul.allow_tf32)
    if precision == "none":
        precision = getattr(torch.backends, "fp32_precision", "none")
    return precision == "tf32"


_LOCAL = threading.local()


@contextmanager
def kernels_mode(mode: str) -> Iterator[None]:
    """Within the block, this thread dispatches as ``FASTMMGAN_KERNELS=mode`` would (auto, reference, triton).

    Thread-safe (the choice is per thread) and traced by torch.compile (dynamo guards on it), unlike
    changing the environment: the exporter uses ``kernels_mode("reference")`` so ONNX sees plain ops.
    """
    check_mode(mode)
    previous = getattr(_LOCAL, "mode", None)
    _LOCAL.mode = mode
    try:
        yield
    finally:
        _LOCAL.mode = previous


def check_mode(mode: str) -> str:
    if mode not in _KERNEL_MODES:
        raise ValueError(f"{KERNELS_ENV}={mode!r} is not one of {', '.join(_KERNEL_MODES)}")
    return mode


def kernels_mode_now() -> str:
    """This thread's dispatch mode: the innermost :func:`kernels_mode`, else ``FASTMMGAN_KERNELS``, else auto."""
    mode = getattr(_LOCAL, "mode", None)
    return check_mode(mode if mode is not None else os.environ.get(KERNELS_ENV, "auto"))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the op will run in: autocast's for x's device when autocast is on, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _kernels_for(x: torch.Tensor, family: str) -> ModuleType | None:
    """The Triton kernels module when the dispatch mode routes ``x`` there, else None (reference math).

    ``auto`` (default): the kernels for CUDA tensors in 16-bit (under autocast or not) and for fp32 when
    TF32 is allowed, once their first-use self-check (:mod:`fastmmgan.selfcheck`) passed for this op,
    device and dtype; everything else gets the reference: CPU tensors (a CPU tensor must never reach a
    Triton op under inductor), and fp32 without TF32, where Triton's ``tl.dot`` compiles to FMA code and
    cuBLAS is faster. ``reference``: always the reference. ``triton``: always the kernels, even on CPU
    tensors (they then need TRITON_INTERPRET=1), with no self-check and no fall-back: errors raise.
    The import is a plain statement so torch.compile traces it.
    """
    mode = kernels_mode_now()
    if mode == "reference":
        return None
    if mode == "auto":
        if not (x.is_cuda and _HAS_TRITON):
            return None
        dtype = _compute_dtype(x)
        if dtype == torch.float32 and not tf32_allowed():
            return None
        from . import selfcheck

        if not selfcheck.passed(family, x.device, dtype):
            return None
    from fastmmgan import kernels

    return kernels


def fused_dense(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, slope: float = DEFAULT_SLOPE
) -> torch.Tensor:
    """Linear + bias + leaky-ReLU; see :func:`fused_dense_reference` for the contract."""
    kernels = _kernels_for(x, "fused_dense")
    if kernels is None:
        return fused_dense_reference(x, weight, bias, slope)
    return kernels.fused_dense_triton(x, weight, bias, slope)


def shared_projection(
    xs: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    bias: torch.Tensor,
    mask: torch.Tensor | None,
    slope: float = DEFAULT_SLOPE,
) -> torch.Tensor:
    """Masked multimodal fusion; see :func:`shared_projection_reference` for the contract."""
    kernels = _kernels_for(xs[0], "shared_projection") if xs else None
    if kernels is None:
        return shared_projection_reference(xs, weights, bias, mask, slope)
    return kernels.shared_projection_triton(xs, weights, bias, mask, slope)


# Masked multi-head self-attention over modality tokens (the attention fusion's op).


def present_tokens(mask: torch.Tensor) -> torch.Tensor:
    """mask [B,M] (bool, or numbers where nonzero = present) as a detached bool [B,M]."""
    mask = mask.detach()
    return mask if mask.dtype == torch.bool else mask != 0


def masked_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked multi-head self-attention: q, k, v [B,H,M,D], mask [B,M] bool (True = token present) -> o [B,H,M,D].

    Per sample and head ``o = softmax(q @ k.T / sqrt(D)) @ v`` over present keys only (absent keys get
    probability 0); rows of absent query tokens are 0, and a sample with no present token gives o = 0 and
    zero gradients, never NaN. The mask is not differentiated.

    Export-safe: absent keys' scores are replaced (``where``) by the dtype's most negative finite value, not
    -inf: next to a present key its exp underflows to exactly 0, and a sample with no present key gets a
    uniform softmax instead of NaN, which the final multiply by the (query) mask zeroes, its gradient
    included, since every query of such a sample is absent. ONNX Runtime computes the same. Output dtype
    follows ``matmul`` (the autocast dtype under autocast).
    """
    keep = present_tokens(mask)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
    out = torch.matmul(torch.softmax(scores, dim=-1), v)
    return out * keep[:, None, :, None].to(out.dtype)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked multi-head self-attention over tokens; see :func:`masked_attention_reference` for the contract."""
    kernels = _kernels_for(q, "masked_attention")
    if kernels is None:
        return masked_attention_reference(q, k, v, mask)
    return kernels.masked_attention_triton(q, k, v, mask)
