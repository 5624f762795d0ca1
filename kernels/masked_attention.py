"""The ``fastmmgan::masked_attention`` op: masked multi-head self-attention over a few modality tokens.

Contract (the reference, :func:`fastmmgan.ops.masked_attention_reference`, is the source of truth):
q, k, v [B, H, M, D] with M <= 8 tokens per sample and head dim D <= 128; mask [B, M] (True = token present).
Per sample and head, ``o = softmax(q @ k.T / sqrt(D)) @ v`` over present keys only; rows of absent query tokens
are 0; a sample with no present token gives o = 0 and zero gradients. The mask is not differentiated.

Kernels. M is so small that one (sample, head) pair's whole M x M attention lives in registers: one program per
pair loads its q, k and v tiles once ([BLOCK_M, BLOCK_D], M and D padded to powers of two and masked), and
the products are broadcast-multiply-and-reduce over a [BLOCK_M, BLOCK_M, BLOCK_D] block rather than ``tl.dot``,
which needs every dimension >= 16 (an 8 x 8 score tile would be mostly padding on tensor cores anyway).

- ``_attention_fwd_kernel``: scores, masked softmax, P @ V; stores only o.
- ``_attention_bwd_kernel``: dq, dk and dv in one pass. It recomputes P from q and k instead of saving o and
  the softmax statistics (the flash-attention way): with at most 8 keys the whole row is in registers, so
  the recompute is a few dozen FLOPs per row, while saved statistics would be one more tensor held for
  backward, and ``delta = rowsum(dO * O)`` would have to read o (as much traffic as reading q) and would
  use o rounded to the output dtype. Here ``delta = rowsum(P * dP)`` comes from fp32 values in registers.

Everything accumulates in fp32; outputs take the input dtype (fp32, bf16 or fp16). No atomics: every
program owns its (sample, head) slice of every output, so results are deterministic.

Registration follows :mod:`.fused_dense`: opaque ``torch.library.custom_op``s with shape-only fakes and
autograd through ``register_autograd(..., setup_context=...)``. A ``triton_op`` (``wrap_triton``) cannot be
traced by torch.compile under TRITON_INTERPRET=1: with its own fake, dynamo runs the interpreted kernel on
fake tensors ("Cannot access data pointer of Tensor"); with a registered fake, AOTAutograd still traces into
its body and fails the same way (checked with torch 2.13 / triton 3.9 and torch 2.14 / triton 3.8). The
custom op stays one call in the graph and runs the launch code below when the graph runs, on a GPU
(inductor) and on CPU in the interpreter (aot_eager) alike. Double backward (gradient penalties) is the
backward op's own autograd, in plain torch.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import custom_op

from .fused_dense import autocast_args, launches

MAX_TOKENS = 8
"""Largest M (tokens per sample) the kernels take: the [M, M, D] products of one pair stay in registers."""
MAX_HEAD_DIM = 128
"""Largest head dim D the kernels take."""
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LOG2E = 1.4426950408889634


@triton.jit
def _load_tile(ptr, pair_b, pair_h, s_b, s_h, s_m, s_d, rows, dims, tile_ok):
    """The [BLOCK_M, BLOCK_D] tile of one (sample, head) pair as fp32; padded rows and columns read 0."""
    ptrs = ptr + pair_b * s_b + pair_h * s_h + rows[:, None] * s_m + dims[None, :] * s_d
    return tl.load(ptrs, mask=tile_ok, other=0.0).to(tl.float32)


@triton.jit
def _attention_probs(q, k, present, qk_scale):
    """Softmax over present keys of ``q @ k.T * scale``: [BLOCK_M, BLOCK_M] fp32, rows = queries.

    ``qk_scale`` is ``log2(e) / sqrt(D)``, so ``exp2`` of the scaled scores is ``exp`` of the true ones (exp2
    is the native instruction). Absent (and padded) keys get exactly 0; a row whose sample has no present
    key is all 0 instead of 0 / 0.
    """
    # scores[i, j] = q_i . k_j: broadcast the [M, D] tiles to [M, M, D] and reduce over D.
    scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * qk_scale
    # Absent keys drop out of the softmax: -inf gives exp2 = 0.
    scores = tl.where(present[None, :], scores, float("-inf"))
    # Subtract the row max for stability. With no present key the max is -inf and -inf - -inf would be
    # NaN, so such rows subtract 0 instead: every exp2 is then exp2(-inf) = 0.
    row_max = tl.max(scores, axis=1)
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    probs = tl.exp2(scores - row_max[:, None])
    # Normalise; an all-zero row keeps denominator 1 and stays 0.
    denom = tl.sum(probs, axis=1)
    return probs / tl.where(denom > 0.0, denom, 1.0)[:, None]


@triton.jit
def _attention_fwd_kernel(
    o_ptr, q_ptr, k_ptr, v_ptr, mask_ptr,
    H, M, D, qk_scale,
    sq_b, sq_h, sq_m, sq_d, sk_b, sk_h, sk_m, sk_d, sv_b, sv_h, sv_m, sv_d,
    so_b, so_h, so_m, so_d, smask_b, smask_m,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """o[b, h] = (present rows) softmax(q k^T / sqrt(D) over present keys) @ v, for pair program_id(0) = b*H + h."""
    # Which (sample, head) pair this program owns; int64 so offsets of large batches cannot overflow.
    pid = tl.program_id(0).to(tl.int64)
    pair_b = pid // H
    pair_h = pid % H
    qk_scale = tl.cast(qk_scale, tl.float32)  # a float argument may arrive as fp64; keep the kernel fp32

    # Token rows are padded to BLOCK_M (a power of two >= 2) and head dims to BLOCK_D; the padding is
    # masked out of every load and store.
    rows = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    tile_ok = row_ok[:, None] & (dims < D)[None, :]
    # Which tokens of this sample are present; padded rows count as absent.
    present = tl.load(mask_ptr + pair_b * smask_b + rows * smask_m, mask=row_ok, other=0) != 0

    # The pair's whole q, k, v: at most 8 x 128 values each, loaded once.
    q = _load_tile(q_ptr, pair_b, pair_h, sq_b, sq_h, sq_m, sq_d, rows, dims, tile_ok)
    k = _load_tile(k_ptr, pair_b, pair_h, sk_b, sk_h, sk_m, sk_d, rows, dims, tile_ok)
    v = _load_tile(v_ptr, pair_b, pair_h, sv_b, sv_h, sv_m, sv_d, rows, dims, tile_ok)

    probs = _attention_probs(q, k, present, qk_scale)
    # o[i, :] = sum_j P[i, j] v[j, :]: broadcast to [M, M, D] and reduce over the keys.
    out = tl.sum(probs[:, :, None] * v[None, :, :], axis=1)
    # Absent query tokens output 0.
    out = tl.where(present[:, None], out, 0.0)
    o_ptrs = o_ptr + pair_b * so_b + pair_h * so_h + rows[:, None] * so_m + dims[None, :] * so_d
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _attention_bwd_kernel(
    dq_ptr, dk_ptr, dv_ptr, do_ptr, q_ptr, k_ptr, v_ptr, mask_ptr,
    H, M, D, sm_scale, qk_scale,
    sdo_b, sdo_h, sdo_m, sdo_d, sq_b, sq_h, sq_m, sq_d, sk_b, sk_h, sk_m, sk_d, sv_b, sv_h, sv_m, sv_d,
    sg_b, sg_h, sg_m, sg_d, smask_b, smask_m,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dq, dk, dv [b, h] of one pair from do, recomputing P from q and k. dq, dk, dv share strides sg_*."""
    pid = tl.program_id(0).to(tl.int64)
    pair_b = pid // H
    pair_h = pid % H
    sm_scale = tl.cast(sm_scale, tl.float32)
    qk_scale = tl.cast(qk_scale, tl.float32)

    rows = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    tile_ok = row_ok[:, None] & (dims < D)[None, :]
    present = tl.load(mask_ptr + pair_b * smask_b + rows * smask_m, mask=row_ok, other=0) != 0

    q = _load_tile(q_ptr, pair_b, pair_h, sq_b, sq_h, sq_m, sq_d, rows, dims, tile_ok)
    k = _load_tile(k_ptr, pair_b, pair_h, sk_b, sk_h, sk_m, sk_d, rows, dims, tile_ok)
    v = _load_tile(v_ptr, pair_b, pair_h, sv_b, sv_h, sv_m, sv_d, rows, dims, tile_ok)
    # The forward zeroed the outputs of absent queries, so their incoming gradient goes nowhere: zero it.
    d_out = _load_tile(do_ptr, pair_b, pair_h, sdo_b, sdo_h, sdo_m, sdo_d, rows, dims, tile_ok)
    d_out = tl.where(present[:, None], d_out, 0.0)

    # Recompute P exactly as the forward did (same code, same fp32 order): cheaper than saving it.
    probs = _attention_probs(q, k, present, qk_scale)

    # dv[j, :] = sum_i P[i, j] dO[i, :]: reduce [M, M, D] over the queries. Absent keys have P = 0.
    dv = tl.sum(probs[:, :, None] * d_out[:, None, :], axis=0)
    # dP[i, j] = dO_i . v_j, then the softmax backward dS = P * (dP - rowsum(P * dP)), scaled by
    # 1/sqrt(D) for the score's scale. Rows with P = 0 (no present key) give dS = 0, never NaN.
    d_probs = tl.sum(d_out[:, None, :] * v[None, :, :], axis=2)
    delta = tl.sum(probs * d_probs, axis=1)
    d_scores = probs * (d_probs - delta[:, None]) * sm_scale
    # dq[i, :] = sum_j dS[i, j] k_j (reduce over keys); dk[j, :] = sum_i dS[i, j] q_i (reduce over queries).
    dq = tl.sum(d_scores[:, :, None] * k[None, :, :], axis=1)
    dk = tl.sum(d_scores[:, :, None] * q[:, None, :], axis=0)

    offs = pair_b * sg_b + pair_h * sg_h + rows[:, None] * sg_m + dims[None, :] * sg_d
    tl.store(dq_ptr + offs, dq.to(dq_ptr.dtype.element_ty), mask=tile_ok)
    tl.store(dk_ptr + offs, dk.to(dk_ptr.dtype.element_ty), mask=tile_ok)
    tl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty), mask=tile_ok)


def _blocks(m: int, d: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps): M and D each padded to a power of two >= 2.

    The [BLOCK_M, BLOCK_M, BLOCK_D] products are the largest live values; at most 8 * 8 * 128 = 8192 fp32,
    i.e. 64 per thread with 4 warps. Smaller problems take fewer warps so no thread holds only padding.
    """
    block_m = max(2, triton.next_power_of_2(m))
    block_d = max(2, triton.next_power_of_2(d))
    warps = 4 if block_m * block_m * block_d >= 4096 else (2 if block_m * block_m * block_d >= 1024 else 1)
    return block_m, block_d, warps


def _scales(d: int) -> tuple[float, float]:
    """(1/sqrt(D), log2(e)/sqrt(D)): the score scale and the same in exp2 units."""
    sm_scale = 1.0 / math.sqrt(d)
    return sm_scale, sm_scale * _LOG2E


def check_operands(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> None:
    """What the kernels accept: q, k, v [B,H,M,D] of one shape, dtype (fp32/bf16/fp16) and device, M <= 8,
    D <= 128; mask [B,M] (bool, or numbers where nonzero = present) on the same device. Raises ValueError."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one [B,H,M,D] shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, _, m, d = q.shape
    if m > MAX_TOKENS or d > MAX_HEAD_DIM:
        raise ValueError(f"the kernels take M <= {MAX_TOKENS} tokens and head dim D <= {MAX_HEAD_DIM}, got M={m}, D={d}")
    if q.dtype not in _SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one of {_SUPPORTED_DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError("q, k, v must be on one device")
    if mask.dim() != 2 or tuple(mask.shape) != (b, m) or mask.device != q.device:
        raise ValueError(f"mask must be [{b}, {m}] on {q.device}, got {tuple(mask.shape)} on {mask.device}")


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Launch the forward kernel: q, k, v [B,H,M,D] (any strides), mask [B,M] -> o [B,H,M,D] contiguous, q's dtype."""
    b, h, m, d = q.shape
    out = torch.empty((b, h, m, d), device=q.device, dtype=q.dtype)
    if out.numel() == 0:
        return out
    block_m, block_d, warps = _blocks(m, d)
    _, qk_scale = _scales(d)
    launches["attention_fwd"] += 1
    _attention_fwd_kernel[(b * h,)](
        out, q, k, v, mask, h, m, d, qk_scale,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mask.stride(),
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
    )
    return out


def attention_backward(
    d_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel: do, q, k, v [B,H,M,D] (any strides), mask [B,M] -> (dq, dk, dv) contiguous."""
    b, h, m, d = q.shape
    dq, dk, dv = (torch.empty((b, h, m, d), device=q.device, dtype=q.dtype) for _ in range(3))
    if dq.numel() == 0:
        return dq, dk, dv
    block_m, block_d, warps = _blocks(m, d)
    sm_scale, qk_scale = _scales(d)
    launches["attention_bwd"] += 1
    _attention_bwd_kernel[(b * h,)](
        dq, dk, dv, d_out, q, k, v, mask, h, m, d, sm_scale, qk_scale,
        *d_out.stride(), *q.stride(), *k.stride(), *v.stride(), *dq.stride(), *mask.stride(),
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
    )
    return dq, dk, dv


def _probs_torch(q: torch.Tensor, k: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """P [B,H,M,M] fp32 in plain torch: softmax over present keys, all-absent rows 0 (as the kernels)."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    key_keep = keep[:, None, None, :]
    scores = scores.masked_fill(~key_keep, torch.finfo(torch.float32).min)
    return torch.softmax(scores, dim=-1) * key_keep


def attention_double_backward(
    d_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
    gdq: torch.Tensor | None, gdk: torch.Tensor | None, gdv: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the backward's outputs (dq, dk, dv) w.r.t. (do, q, k, v), in plain differentiable torch (fp32).

    With c = 1/sqrt(D), G = present * dO, P the masked softmax, dP = G V^T, dS = P * (dP - rowsum(P dP)):
    dq = c dS K, dk = c dS^T Q, dv = P^T G. For incoming A = gdq, B = gdk, C = gdv (None = 0), let
    R = c (A K^T + Q B^T), E = P * (R - rowsum(P R)) (the softmax backward of R), and
    H = dP * (R - rowsum(P R)) - R * rowsum(P dP) + G C^T (the gradient w.r.t. P), dS2 = P * (H - rowsum(P H)).
    Then grad dO = present * (P C + E V), grad Q = c (dS B + dS2 K), grad K = c (dS^T A + dS2^T Q),
    grad V = E^T G. Each is [B,H,M,D], returned in q's dtype. This is what gradient penalties need.
    """
    dtype = q.dtype
    keep = mask != 0
    row_keep = keep[:, None, :, None]
    c = q.shape[-1] ** -0.5
    qf, kf, vf = q.float(), k.float(), v.float()
    g = d_out.float() * row_keep
    probs = _probs_torch(qf, kf, keep)
    d_probs = torch.matmul(g, vf.transpose(-1, -2))
    delta = (probs * d_probs).sum(-1, keepdim=True)
    d_scores = probs * (d_probs - delta)
    zeros = torch.zeros_like(qf)
    a = zeros if gdq is None else gdq.float()
    b = zeros if gdk is None else gdk.float()
    cv = zeros if gdv is None else gdv.float()
    r = c * (torch.matmul(a, kf.transpose(-1, -2)) + torch.matmul(qf, b.transpose(-1, -2)))
    r_centred = r - (probs * r).sum(-1, keepdim=True)
    e = probs * r_centred
    h = d_probs * r_centred - r * delta + torch.matmul(g, cv.transpose(-1, -2))
    d_scores2 = probs * (h - (probs * h).sum(-1, keepdim=True))
    grad_do = (torch.matmul(probs, cv) + torch.matmul(e, vf)) * row_keep
    grad_q = c * (torch.matmul(d_scores, b) + torch.matmul(d_scores2, kf))
    grad_k = c * (torch.matmul(d_scores.transpose(-1, -2), a) + torch.matmul(d_scores2.transpose(-1, -2), qf))
    grad_v = torch.matmul(e.transpose(-1, -2), g)
    return grad_do.to(dtype), grad_q.to(dtype), grad_k.to(dtype), grad_v.to(dtype)


@custom_op("fastmmgan::masked_attention", mutates_args=())
def _masked_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    check_operands(q, k, v, mask)
    return attention_forward(q, k, v, mask)


@_masked_attention_op.register_fake
def _masked_attention_fake(q, k, v, mask):
    return q.new_empty(q.shape)


@custom_op("fastmmgan::masked_attention_backward", mutates_args=())
def _masked_attention_backward_op(
    d_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_backward(d_out, q, k, v, mask)


@_masked_attention_backward_op.register_fake
def _masked_attention_backward_fake(d_out, q, k, v, mask):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _masked_attention_setup(ctx, inputs, output):
    q, k, v, mask = inputs
    # Only the inputs: the backward recomputes P (see the module docstring), so neither o nor softmax
    # statistics are kept.
    ctx.save_for_backward(q, k, v, mask)


def _masked_attention_grad(ctx, d_out):
    q, k, v, mask = ctx.saved_tensors
    need_q, need_k, need_v = ctx.needs_input_grad[:3]
    if not (need_q or need_k or need_v):
        return None, None, None, None
    # One kernel makes all three: they share every loaded tile and the recomputed P.
    dq, dk, dv = torch.ops.fastmmgan.masked_attention_backward(d_out, q, k, v, mask)
    return dq if need_q else None, dk if need_k else None, dv if need_v else None, None


def _masked_attention_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _masked_attention_double_grad(ctx, gdq, gdk, gdv):
    d_out, q, k, v, mask = ctx.saved_tensors
    grad_do, grad_q, grad_k, grad_v = attention_double_backward(d_out, q, k, v, mask, gdq, gdk, gdv)
    return grad_do, grad_q, grad_k, grad_v, None


_masked_attention_op.register_autograd(_masked_attention_grad, setup_context=_masked_attention_setup)
_masked_attention_backward_op.register_autograd(
    _masked_attention_double_grad, setup_context=_masked_attention_backward_setup
)


def masked_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked multi-head self-attention by the Triton kernels, differentiable in q, k and v (twice).

    q, k, v [B,H,M,D] (M <= 8, D <= 128, any strides) in fp32/bf16/fp16, one dtype; mask [B,M] bool
    (True = present; not differentiated) -> o [B,H,M,D] contiguous, in the inputs' dtype (the autocast
    dtype under autocast, as ``F.linear`` would). Same contract as
    :func:`fastmmgan.ops.masked_attention_reference`.
    """
    if torch.is_autocast_enabled(q.device.type):
        q, k, v = autocast_args(q, k, v)
    check_operands(q, k, v, mask)
    return torch.ops.fastmmgan.masked_attention(q, k, v, mask.detach())
