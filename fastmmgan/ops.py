"""The two fused ops of fastmmgan, as plain-torch reference math.

Contracts (see the design notes): shapes use B batch, K input features, N output
features, M modalities; ``lrelu(v) = v if v > 0 else slope * v``.

These functions are the source of truth: every kernel, compiled path and export is
checked against them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_SLOPE = 0.2


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
        raise ValueError(f"shared_projection needs one weight per input, got {len(xs)} inputs and {len(weights)} weights")
    acc = None
    w = None if mask is None else presence_weights(mask.detach(), xs[0].dtype)
    scale = 1.0 / len(xs)
    for m, (x, weight) in enumerate(zip(xs, weights)):
        proj = F.linear(x, weight)
        proj = proj * (w[:, m : m + 1] if w is not None else scale)
        acc = proj if acc is None else acc + proj
    return F.leaky_relu(acc + bias, slope)


def fused_dense(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, slope: float = DEFAULT_SLOPE
) -> torch.Tensor:
    """Linear + bias + leaky-ReLU; see :func:`fused_dense_reference` for the contract."""
    return fused_dense_reference(x, weight, bias, slope)


def shared_projection(
    xs: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    bias: torch.Tensor,
    mask: torch.Tensor | None,
    slope: float = DEFAULT_SLOPE,
) -> torch.Tensor:
    """Masked multimodal fusion; see :func:`shared_projection_reference` for the contract."""
    return shared_projection_reference(xs, weights, bias, mask, slope)
