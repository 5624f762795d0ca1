"""The ``fastmmgan::shared_projection`` op: masked mean of per-modality projections, bias, leaky-ReLU.

Forward is one launch of the projection kernel for up to four modalities (each modality's pointers,
K and strides are their own constexpr-selected argument group; more modalities chain launches).
Backward launches, per modality m, the dgrad kernel for dx_m and the wgrad kernel for dW_m; the
first wgrad launch also produces db. The mask is never differentiated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.library import custom_op

from fastmmgan.ops import DEFAULT_SLOPE, presence_weights

from .fused_dense import (
    autocast_args,
    backward_of_backward,
    check_operands,
    check_slope,
    input_grad,
    pad_k,
    projection_forward,
    weight_grad,
)

# Opaque custom ops with shape-only fakes, as fastmmgan::fused_dense (see there why not triton_op).


@custom_op("fastmmgan::shared_projection", mutates_args=())
def _shared_projection_op(
    xs: list[torch.Tensor], weights: list[torch.Tensor], bias: torch.Tensor, mask: torch.Tensor | None, slope: float
) -> torch.Tensor:
    check_operands(xs, weights, bias, mask)
    return projection_forward(xs, weights, bias, mask, slope)


@_shared_projection_op.register_fake
def _shared_projection_fake(xs, weights, bias, mask, slope):
    return xs[0].new_empty((xs[0].shape[0], weights[0].shape[0]))


@custom_op("fastmmgan::shared_projection_backward", mutates_args=())
def _shared_projection_backward_op(
    dy: torch.Tensor, y: torch.Tensor, xs: list[torch.Tensor], weights: list[torch.Tensor],
    mask: torch.Tensor | None, slope: float, need_dxs: list[bool], need_params: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    num_mod = len(xs)
    dxs = [
        input_grad(dy, y, w, mask, m, num_mod, slope) if need else x.new_empty(0)
        for m, (x, w, need) in enumerate(zip(xs, weights, need_dxs, strict=True))
    ]
    if not need_params:
        return dxs, [w.new_empty(0) for w in weights], y.new_empty(0)
    grads = [weight_grad(dy, y, x, mask, m, num_mod, slope, compute_db=m == 0) for m, x in enumerate(xs)]
    return dxs, [dw for dw, _ in grads], grads[0][1]


@_shared_projection_backward_op.register_fake
def _shared_projection_backward_fake(dy, y, xs, weights, mask, slope, need_dxs, need_params):
    dxs = [w.new_empty(x.shape) if need else x.new_empty(0) for x, w, need in zip(xs, weights, need_dxs, strict=True)]
    if not need_params:
        return dxs, [w.new_empty(0) for w in weights], y.new_empty(0)
    return dxs, [x.new_empty(w.shape) for x, w in zip(xs, weights, strict=True)], xs[0].new_empty((weights[0].shape[0],))


def _shared_projection_setup(ctx, inputs, output):
    xs, weights, _, mask, slope = inputs
    ctx.num_mod = len(xs)
    ctx.save_for_backward(output, mask, *xs, *weights)
    ctx.slope = slope


def _shared_projection_grad(ctx, dy):
    y, mask, *tensors = ctx.saved_tensors
    xs, weights = tensors[: ctx.num_mod], tensors[ctx.num_mod :]
    need_dxs, need_dws, need_db = ctx.needs_input_grad[:3]
    dxs, dws, db = torch.ops.fastmmgan.shared_projection_backward(
        dy, y, xs, weights, mask, ctx.slope, list(need_dxs), any(need_dws) or need_db
    )
    return (
        [dx if need else None for dx, need in zip(dxs, need_dxs, strict=True)],
        [dw if need else None for dw, need in zip(dws, need_dws, strict=True)],
        db if need_db else None,
        None,
        None,
    )


def _shared_projection_backward_setup(ctx, inputs, output):
    dy, y, xs, weights, mask, slope = inputs[:6]
    ctx.num_mod = len(xs)
    ctx.save_for_backward(dy, y, mask, *xs, *weights)
    ctx.slope = slope


def _shared_projection_double_grad(ctx, gdxs, gdws, gdb):
    dy, y, mask, *tensors = ctx.saved_tensors
    num_mod = ctx.num_mod
    xs, weights = tensors[:num_mod], tensors[num_mod:]
    if mask is None:
        row_weights = [1.0 / num_mod] * num_mod
    else:
        presence = presence_weights(mask, dy.dtype)
        row_weights = [presence[:, m : m + 1] for m in range(num_mod)]
    grad_dy, grad_xs, grad_ws = backward_of_backward(dy, y, xs, weights, row_weights, ctx.slope, gdxs, gdws, gdb)
    return grad_dy, None, grad_xs, grad_ws, None, None, None, None


_shared_projection_op.register_autograd(_shared_projection_grad, setup_context=_shared_projection_setup)
_shared_projection_backward_op.register_autograd(
    _shared_projection_double_grad, setup_context=_shared_projection_backward_setup
)


def shared_projection_triton(
    xs: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    bias: torch.Tensor,
    mask: torch.Tensor | None,
    slope: float = DEFAULT_SLOPE,
) -> torch.Tensor:
    """Masked multimodal fusion by the Triton kernels, differentiable in xs, weights and bias.

    xs: M tensors [B,K_m]; weights: M tensors [N,K_m]; bias [N]; mask [B,M] bool/float or None
    (all present) -> y [B,N] in the inputs' dtype. Same contract as
    :func:`fastmmgan.ops.shared_projection_reference`.
    """
    check_slope(slope)
    cast = autocast_args(*xs, *weights, bias)
    num_mod = len(xs)
    padded = [pad_k(x, w) for x, w in zip(cast[:num_mod], cast[num_mod : num_mod + len(weights)], strict=True)]
    xs, weights, bias = [x for x, _ in padded], [w for _, w in padded], cast[-1]
    mask = None if mask is None else mask.detach()
    return torch.ops.fastmmgan.shared_projection(xs, weights, bias, mask, float(slope))
