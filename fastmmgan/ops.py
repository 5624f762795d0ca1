"""The two fused ops of fastmmgan, as plain-torch reference math.

Contracts (see the design notes): shapes use B batch, K input features, N output
features, M modalities; ``lrelu(v) = v if v > 0 else slope * v``.

These functions are the source of truth: every kernel, compiled path and export is
checked against them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
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


def _kernels_for(x: torch.Tensor) -> ModuleType | None:
    """The Triton kernels module when ``FASTMMGAN_KERNELS`` routes ``x`` there, else None (reference math).

    ``auto`` (default): the kernels for CUDA tensors when triton is installed, the reference for
    everything else, so a CPU tensor never reaches a Triton op (inductor has no driver for it);
    ``reference``: always the reference; ``triton``: always the kernels, even on CPU tensors (they
    then need TRITON_INTERPRET=1). The import is a plain statement so torch.compile traces it.
    """
    mode = os.environ.get(KERNELS_ENV, "auto")
    if mode not in _KERNEL_MODES:
        raise ValueError(f"{KERNELS_ENV}={mode!r} is not one of {', '.join(_KERNEL_MODES)}")
    if mode == "reference" or (mode == "auto" and not (x.is_cuda and _HAS_TRITON)):
        return None
    from fastmmgan import kernels

    return kernels


def fused_dense(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, slope: float = DEFAULT_SLOPE
) -> torch.Tensor:
    """Linear + bias + leaky-ReLU; see :func:`fused_dense_reference` for the contract."""
    kernels = _kernels_for(x)
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
    kernels = _kernels_for(xs[0]) if xs else None
    if kernels is None:
        return shared_projection_reference(xs, weights, bias, mask, slope)
    return kernels.shared_projection_triton(xs, weights, bias, mask, slope)
