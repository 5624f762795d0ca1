"""Triton GEMM kernels with a bias + leaky-ReLU epilogue, and the ``fastmmgan::fused_dense`` op.

Three kernels serve both fused ops (``fused_dense`` is the one-modality case of
``shared_projection``):

- ``_projection_fwd_kernel``: ``y = lrelu(sum_m w_m * (x_m @ W_m.T) + bias)`` for up to four
  modality groups per launch, every group's K range walked into one fp32 tile; more groups chain
  launches through fp32 partial buffers.
- ``_dgrad_kernel``: ``dx = w_m * (g @ W)`` where ``g = dy * lrelu'(y)`` is formed while loading.
- ``_wgrad_kernel``: ``dW = (w_m * g).T @ x`` and, in the same pass, ``db = g.sum(0)``.

``w_m`` is the presence weight ``mask[b, m] / max(1, sum_m mask[b, m])`` recomputed in-kernel
from the mask, or a scalar when there is no mask. All products accumulate in fp32; outputs take
the input dtype. Reductions are deterministic: no atomics (see :func:`_split_rows`).
"""

from __future__ import annotations

import os
from collections import Counter

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import custom_op

from fastmmgan.ops import DEFAULT_SLOPE, tf32_allowed

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter multiplies bfloat16 bit patterns in tl.dot (triton-lang/triton#11584, "not
# supported yet"), so under it operands go to fp32 first; products of 16-bit floats are exact
# in fp32, as on tensor cores.
_UPCAST_DOT = tl.constexpr(_INTERPRET)
_GROUP_M = 8
MAX_GROUPS = 4
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

launches: Counter[str] = Counter()
"""Host-side launches per kernel since import ("projection_fwd", "dgrad", "wgrad"): lets a test prove that a
compiled step really ran the kernels (an op replayed inside a CUDA graph does not count again)."""


def _config(block_m: int, block_n: int, block_k: int, warps: int, stages: int) -> triton.Config:
    tiles = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
    return triton.Config(tiles, num_warps=warps, num_stages=stages)


# (output rows, output cols, reduction). Small-batch tiles keep BLOCK_M at 16-32 so B = 1..64 does
# not pay for empty rows; large-batch tiles are Hopper-shaped: BLOCK_K 64 (a 128-byte bf16 row per
# load, what wgmma and TMA-free pipelining like best) and 3-4 stages.
_GEMM_CONFIGS = [
    _config(16, 64, 64, 4, 4),
    _config(32, 64, 64, 4, 4),
    _config(32, 128, 64, 4, 4),
    _config(64, 64, 64, 4, 4),
    _config(64, 128, 64, 4, 3),
    _config(128, 64, 64, 4, 4),
    _config(128, 128, 64, 8, 3),
    _config(128, 256, 64, 8, 3),
]
# Weight gradients: tiles of [N, K], reduction over the batch.
_WGRAD_CONFIGS = [
    _config(32, 64, 64, 4, 4),
    _config(64, 64, 64, 4, 4),
    _config(64, 128, 64, 4, 3),
    _config(128, 64, 64, 4, 3),
    _config(128, 128, 64, 8, 3),
]
if _INTERPRET:
    # One config each, since autotuning in the interpreter is slow; still small enough that the
    # tests' odd shapes span several tiles and K iterations.
    _GEMM_CONFIGS = [_config(64, 32, 32, 4, 1)]
    _WGRAD_CONFIGS = [_config(32, 32, 64, 4, 1)]

# Autotune keys hold every compile-time variant too: a config tuned without a mask (or without db) is
# not the best one with it, and the tuned choice must not leak between variants.
_FWD_KEY = ["B", "N", "K0", "K1", "K2", "K3", "NUM_GROUPS", "HAS_BIAS", "HAS_MASK", "ACC_IN", "FINAL", "PRECISION"]
_DGRAD_KEY = ["num_rows", "num_cols", "depth", "HAS_MASK", "PRECISION"]
_WGRAD_KEY = ["num_rows", "num_cols", "depth", "HAS_MASK", "COMPUTE_DB", "PRECISION"]


@triton.jit
def _tile_coords(pid, num_rows, num_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped tile order (GROUP_M row tiles share column tiles, for L2 reuse) -> (row tile, col tile)."""
    tiles_r = tl.cdiv(num_rows, BLOCK_M)
    tiles_c = tl.cdiv(num_cols, BLOCK_N)
    per_group = GROUP_M * tiles_c
    first = (pid // per_group) * GROUP_M
    size = tl.minimum(tiles_r - first, GROUP_M)
    return first + (pid % per_group) % size, (pid % per_group) // size


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr):
    if _UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _act_grad(dy, y, slope):
    """``dy * lrelu'(y)`` in fp32; ``y > 0`` exactly where the pre-activation was (slope >= 0)."""
    dy = dy.to(tl.float32)
    return tl.where(y.to(tl.float32) > 0, dy, dy * slope)


@triton.jit
def _presence_weight(mask_ptr, rows, rows_ok, stride_mb, stride_mm, num_mod, col, BLOCK_MOD: tl.constexpr):
    """``mask[rows, col] / max(1, sum_m mask[rows, m])`` as fp32 [len(rows)]."""
    mods = tl.arange(0, BLOCK_MOD)
    tile = tl.load(
        mask_ptr + rows[:, None] * stride_mb + mods[None, :] * stride_mm,
        mask=rows_ok[:, None] & (mods[None, :] < num_mod),
        other=0,
    ).to(tl.float32)
    own = tl.load(mask_ptr + rows * stride_mb + col * stride_mm, mask=rows_ok, other=0).to(tl.float32)
    return own / tl.maximum(tl.sum(tile, axis=1), 1.0)


@triton.jit
def _accumulate_group(
    acc, x_ptr, w_ptr, K, sx_b, sx_k, sw_n, sw_k, rows_ld, cols_ld, row_weight,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``acc + (row_weight * x[rows]) @ w[cols].T`` over the whole K range of one modality.

    With a mask, each row of x is scaled by its presence weight [BLOCK_M, 1] as it is loaded, so every
    modality adds into the one fp32 accumulator (a second per-modality tile would double the registers
    the MMA needs and spill). Without a mask the weight is one scalar for all modalities and the caller
    applies it once at the end.
    """
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows_ld[:, None] * sx_b + ks[None, :] * sx_k
    w_ptrs = w_ptr + cols_ld[None, :] * sw_n + ks[:, None] * sw_k
    for k0 in range(0, K, BLOCK_K):
        # Columns past K load as 0, so a partial last K tile adds nothing.
        k_ok = ks < K - k0
        a = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
        if HAS_MASK:
            a = (a.to(tl.float32) * row_weight).to(x_ptr.dtype.element_ty)
        b = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        acc = _mma(a, b, acc, PRECISION)
        # Advance both operands to the next K tile.
        x_ptrs += BLOCK_K * sx_k
        w_ptrs += BLOCK_K * sw_k
    return acc


@triton.jit
def _row_weight(mask_ptr, rows, rows_ok, stride_mb, stride_mm, num_mod, col,
                HAS_MASK: tl.constexpr, BLOCK_MOD: tl.constexpr):
    """Per-row presence weight [rows, 1] of modality ``col`` with a mask; a placeholder 1.0 without."""
    if HAS_MASK:
        weight = _presence_weight(mask_ptr, rows, rows_ok, stride_mb, stride_mm, num_mod, col, BLOCK_MOD)[:, None]
    else:
        weight = 1.0
    return weight


@triton.autotune(configs=_GEMM_CONFIGS, key=_FWD_KEY)
@triton.jit
def _projection_fwd_kernel(
    y_ptr, partial_in_ptr, partial_out_ptr, bias_ptr, mask_ptr,
    x0_ptr, w0_ptr, K0, sx0_b, sx0_k, sw0_n, sw0_k,
    x1_ptr, w1_ptr, K1, sx1_b, sx1_k, sw1_n, sw1_k,
    x2_ptr, w2_ptr, K2, sx2_b, sx2_k, sw2_n, sw2_k,
    x3_ptr, w3_ptr, K3, sx3_b, sx3_k, sw3_n, sw3_k,
    B, N, num_mod, first_mod, slope, scale, stride_mb, stride_mm,
    NUM_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    ACC_IN: tl.constexpr, FINAL: tl.constexpr, PRECISION: tl.constexpr, BLOCK_MOD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of y [B, N] from modalities first_mod .. first_mod+NUM_GROUPS-1.

    ACC_IN adds the fp32 partial of earlier launches; FINAL applies bias + leaky-ReLU and stores y,
    otherwise the fp32 partial goes to partial_out. Reading and writing different buffers keeps
    every launch idempotent, which autotuning (it reruns the launch) needs.
    """
    pid_m, pid_n = _tile_coords(tl.program_id(0), B, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ok = rows < B
    cols_ok = cols < N
    rows_ld = rows % B
    cols_ld = cols % N
    out_offs = rows[:, None] * N + cols[None, :]
    out_ok = rows_ok[:, None] & cols_ok[None, :]
    slope = tl.cast(slope, tl.float32)
    scale = tl.cast(scale, tl.float32)

    # One fp32 accumulator for every modality group of this launch.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    wt = _row_weight(mask_ptr, rows, rows_ok, stride_mb, stride_mm, num_mod, first_mod, HAS_MASK, BLOCK_MOD)
    acc = _accumulate_group(acc, x0_ptr, w0_ptr, K0, sx0_b, sx0_k, sw0_n, sw0_k, rows_ld, cols_ld, wt,
                            HAS_MASK, PRECISION, BLOCK_K)
    if NUM_GROUPS > 1:
        wt = _row_weight(mask_ptr, rows, rows_ok, stride_mb, stride_mm, num_mod, first_mod + 1, HAS_MASK, BLOCK_MOD)
        acc = _accumulate_group(acc, x1_ptr, w1_ptr, K1, sx1_b, sx1_k, sw1_n, sw1_k, rows_ld, cols_ld, wt,
                                HAS_MASK, PRECISION, BLOCK_K)
    if NUM_GROUPS > 2:
        wt = _row_weight(mask_ptr, rows, rows_ok, stride_mb, stride_mm, num_mod, first_mod + 2, HAS_MASK, BLOCK_MOD)
        acc = _accumulate_group(acc, x2_ptr, w2_ptr, K2, sx2_b, sx2_k, sw2_n, sw2_k, rows_ld, cols_ld, wt,
                                HAS_MASK, PRECISION, BLOCK_K)
    if NUM_GROUPS > 3:
        wt = _row_weight(mask_ptr, rows, rows_ok, stride_mb, stride_mm, num_mod, first_mod + 3, HAS_MASK, BLOCK_MOD)
        acc = _accumulate_group(acc, x3_ptr, w3_ptr, K3, sx3_b, sx3_k, sw3_n, sw3_k, rows_ld, cols_ld, wt,
                                HAS_MASK, PRECISION, BLOCK_K)
    if not HAS_MASK:
        # Without a mask every modality weighs 1/M: one multiply for the whole tile.
        acc = acc * scale
    if ACC_IN:
        # Earlier launches' modalities, already weighted, from the fp32 partial buffer.
        acc += tl.load(partial_in_ptr + out_offs, mask=out_ok, other=0.0)

    if FINAL:
        # Epilogue on the fp32 tile: bias, leaky-ReLU, one cast to the output dtype.
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=cols_ok, other=0.0).to(tl.float32)[None, :]
        out = tl.where(acc > 0, acc, acc * slope)
        tl.store(y_ptr + out_offs, out.to(y_ptr.dtype.element_ty), mask=out_ok)
    else:
        tl.store(partial_out_ptr + out_offs, acc, mask=out_ok)


@triton.autotune(configs=_GEMM_CONFIGS, key=_DGRAD_KEY)
@triton.jit
def _dgrad_kernel(
    dx_ptr, dy_ptr, y_ptr, w_ptr, mask_ptr,
    num_rows, num_cols, depth, col, num_mod, slope, scale,
    s_dyb, s_dyn, s_yb, s_yn, s_wn, s_wk, stride_mb, stride_mm,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, BLOCK_MOD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """One tile of dx [B, K] = weight[:, col] * ((dy * lrelu'(y)) @ W); num_rows=B, num_cols=K, depth=N."""
    pid_m, pid_n = _tile_coords(tl.program_id(0), num_rows, num_cols, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ok = rows < num_rows
    cols_ok = cols < num_cols
    rows_ld = rows % num_rows
    cols_ld = cols % num_cols
    ns = tl.arange(0, BLOCK_K)
    slope = tl.cast(slope, tl.float32)
    scale = tl.cast(scale, tl.float32)

    dy_ptrs = dy_ptr + rows_ld[:, None] * s_dyb + ns[None, :] * s_dyn
    y_ptrs = y_ptr + rows_ld[:, None] * s_yb + ns[None, :] * s_yn
    w_ptrs = w_ptr + ns[:, None] * s_wn + cols_ld[None, :] * s_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for n0 in range(0, depth, BLOCK_K):
        n_ok = ns < depth - n0
        dy = tl.load(dy_ptrs, mask=n_ok[None, :], other=0.0)
        y = tl.load(y_ptrs, mask=n_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0)
        # g = dy * lrelu'(y) is formed in registers: the pre-activation gradient is never stored.
        acc = _mma(_act_grad(dy, y, slope).to(w.dtype), w, acc, PRECISION)
        dy_ptrs += BLOCK_K * s_dyn
        y_ptrs += BLOCK_K * s_yn
        w_ptrs += BLOCK_K * s_wn
    # dx_m = w_m * (g @ W_m): the presence weight of row b is one factor of the whole row.
    if HAS_MASK:
        acc = acc * _row_weight(mask_ptr, rows, rows_ok, stride_mb, stride_mm, num_mod, col, HAS_MASK, BLOCK_MOD)
    else:
        acc = acc * scale
    tl.store(dx_ptr + rows[:, None] * num_cols + cols[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=rows_ok[:, None] & cols_ok[None, :])


@triton.autotune(configs=_WGRAD_CONFIGS, key=_WGRAD_KEY)
@triton.jit
def _wgrad_kernel(
    dw_ptr, db_ptr, dy_ptr, y_ptr, x_ptr, mask_ptr,
    num_rows, num_cols, depth, rows_per_split, col, num_mod, slope, scale,
    s_dyb, s_dyn, s_yb, s_yn, s_xb, s_xk, stride_mb, stride_mm, s_dw_split, s_db_split,
    HAS_MASK: tl.constexpr, COMPUTE_DB: tl.constexpr, PRECISION: tl.constexpr, BLOCK_MOD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """One tile of dW [N, K] = (weight[:, col] * g).T @ x over one batch split; num_rows=N, num_cols=K, depth=B.

    With COMPUTE_DB the programs of the first K tile also write db = g.sum(0) for their rows of N,
    from the same g tiles. Split s covers batch rows [s * rows_per_split, (s + 1) * rows_per_split)
    and writes its own slice (s_dw_split / s_db_split apart); the caller sums the slices.
    """
    pid_n, pid_k = _tile_coords(tl.program_id(0), num_rows, num_cols, BLOCK_M, BLOCK_N, GROUP_M)
    split = tl.program_id(1)
    outs_n = pid_n * BLOCK_M + tl.arange(0, BLOCK_M)
    outs_k = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = outs_n < num_rows
    k_ok = outs_k < num_cols
    n_ld = outs_n % num_rows
    k_ld = outs_k % num_cols
    bs = tl.arange(0, BLOCK_K)
    slope = tl.cast(slope, tl.float32)
    scale = tl.cast(scale, tl.float32)

    row_start = split * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, depth)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for b0 in range(row_start, row_end, BLOCK_K):
        b = b0 + bs
        b_ok = b < row_end
        dy = tl.load(dy_ptr + n_ld[:, None] * s_dyn + b[None, :] * s_dyb, mask=b_ok[None, :], other=0.0)
        y = tl.load(y_ptr + n_ld[:, None] * s_yn + b[None, :] * s_yb, mask=b_ok[None, :], other=0.0)
        x = tl.load(x_ptr + b[:, None] * s_xb + k_ld[None, :] * s_xk, mask=b_ok[:, None], other=0.0)
        g = _act_grad(dy, y, slope)
        if COMPUTE_DB:
            # Only the first K tile's programs own db; the others skip the row sums.
            if pid_k == 0:
                db += tl.sum(g, axis=1)
        if HAS_MASK:
            g = g * _presence_weight(mask_ptr, b, b_ok, stride_mb, stride_mm, num_mod, col, BLOCK_MOD)[None, :]
        acc = _mma(g.to(x.dtype), x, acc, PRECISION)
    if not HAS_MASK:
        acc = acc * scale
    tl.store(dw_ptr + split * s_dw_split + outs_n[:, None] * num_cols + outs_k[None, :],
             acc.to(dw_ptr.dtype.element_ty), mask=n_ok[:, None] & k_ok[None, :])
    if COMPUTE_DB:
        if pid_k == 0:
            tl.store(db_ptr + split * s_db_split + outs_n, db.to(db_ptr.dtype.element_ty), mask=n_ok)


def _precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: tf32 for fp32 only when torch allows it for CUDA matmuls."""
    return "tf32" if dtype == torch.float32 and tf32_allowed() else "ieee"


def _block_mod(num_mod: int) -> int:
    return triton.next_power_of_2(max(num_mod, 1))


def _mask_args(mask: torch.Tensor | None, fallback: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(pointer tensor, row stride, column stride) of the mask; a read-only input stands in when there is none."""
    if mask is None:
        return fallback, 0, 0
    return mask, mask.stride(0), mask.stride(1)


def projection_forward(
    xs: list[torch.Tensor], weights: list[torch.Tensor], bias: torch.Tensor | None,
    mask: torch.Tensor | None, slope: float,
) -> torch.Tensor:
    """``lrelu(sum_m w_m * (x_m @ W_m.T) + bias)``: xs [B,K_m], weights [N,K_m], mask [B,M] -> y [B,N]."""
    x0 = xs[0]
    b, n, num_mod = x0.shape[0], weights[0].shape[0], len(xs)
    y = torch.empty((b, n), device=x0.device, dtype=x0.dtype)
    if b == 0 or n == 0:
        return y
    chained = num_mod > MAX_GROUPS
    partials = [torch.empty((b, n), device=x0.device, dtype=torch.float32) for _ in range(2 if chained else 0)]
    mask_t, stride_mb, stride_mm = _mask_args(mask, x0)
    # An unused group slot points at modality 0 with K = 0: its K loop never runs.
    unused = (x0, weights[0], 0, 0, 0, 0, 0)
    precision, block_mod = _precision(x0.dtype), _block_mod(num_mod)

    def grid(meta):
        return (triton.cdiv(b, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    for launch, first in enumerate(range(0, num_mod, MAX_GROUPS)):
        count = min(MAX_GROUPS, num_mod - first)
        groups = []
        for m in range(first, first + count):
            x, w = xs[m], weights[m]
            groups += (x, w, x.shape[1], *x.stride(), *w.stride())
        groups += unused * (MAX_GROUPS - count)
        partial_in, partial_out = (partials[(launch + 1) % 2], partials[launch % 2]) if chained else (x0, x0)
        launches["projection_fwd"] += 1
        _projection_fwd_kernel[grid](
            y, partial_in, partial_out, x0 if bias is None else bias, mask_t, *groups,
            b, n, num_mod, first, slope, 1.0 / num_mod, stride_mb, stride_mm,
            NUM_GROUPS=count, HAS_BIAS=bias is not None, HAS_MASK=mask is not None,
            ACC_IN=launch > 0, FINAL=first + MAX_GROUPS >= num_mod, PRECISION=precision,
            BLOCK_MOD=block_mod, GROUP_M=_GROUP_M,
        )
    return y


def input_grad(
    dy: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None,
    col: int, num_mod: int, slope: float,
) -> torch.Tensor:
    """dx [B,K] = w[:, col] * ((dy * lrelu'(y)) @ weight) for dy, y [B,N], weight [N,K]."""
    b, n = dy.shape
    k = weight.shape[1]
    dx = torch.empty((b, k), device=dy.device, dtype=weight.dtype)
    if dx.numel() == 0:
        return dx
    mask_t, stride_mb, stride_mm = _mask_args(mask, dy)

    def grid(meta):
        return (triton.cdiv(b, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_N"]),)

    launches["dgrad"] += 1
    _dgrad_kernel[grid](
        dx, dy, y, weight, mask_t,
        b, k, n, col, num_mod, slope, 1.0 / num_mod,
        *dy.stride(), *y.stride(), *weight.stride(), stride_mb, stride_mm,
        HAS_MASK=mask is not None, PRECISION=_precision(weight.dtype), BLOCK_MOD=_block_mod(num_mod),
        GROUP_M=_GROUP_M,
    )
    return dx


_TARGET_PROGRAMS = 256
_SPLIT_GRANULE = 128


def _split_rows(b: int, n: int, k: int) -> tuple[int, int]:
    """(number of batch splits, rows per split) for the weight-gradient reduction over B.

    A few [N, K] tiles over a long batch leave most of the GPU idle, so the batch is cut into
    splits that write fp32 partials, summed afterwards by torch (the Triton layer-norm tutorial's
    two-stage pattern): deterministic, unlike atomics. Splits are whole multiples of 128 rows.
    Needs b, n, k >= 1.
    """
    tiles = triton.cdiv(n, 64) * triton.cdiv(k, 64)
    splits = max(1, min(triton.cdiv(b, 2 * _SPLIT_GRANULE), _TARGET_PROGRAMS // tiles))
    rows = triton.cdiv(triton.cdiv(b, splits), _SPLIT_GRANULE) * _SPLIT_GRANULE
    return triton.cdiv(b, rows), rows


def weight_grad(
    dy: torch.Tensor, y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None,
    col: int, num_mod: int, slope: float, compute_db: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dW [N,K] = (w[:, col] * g).T @ x and db [N] = g.sum(0) with g = dy * lrelu'(y); dy, y [B,N], x [B,K].

    db is an empty tensor unless ``compute_db``.
    """
    b, n = dy.shape
    k = x.shape[1]
    db_size = n if compute_db else 0
    if b == 0 or n == 0 or k == 0:
        return x.new_zeros((n, k)), x.new_zeros((db_size,))
    splits, rows_per_split = _split_rows(b, n, k)
    part_dtype = x.dtype if splits == 1 else torch.float32
    dw = torch.empty((splits, n, k), device=x.device, dtype=part_dtype)
    db = torch.empty((splits, db_size), device=x.device, dtype=part_dtype)
    mask_t, stride_mb, stride_mm = _mask_args(mask, dy)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_N"]), splits)

    launches["wgrad"] += 1
    _wgrad_kernel[grid](
        dw, db if compute_db else dy, dy, y, x, mask_t,
        n, k, b, rows_per_split, col, num_mod, slope, 1.0 / num_mod,
        *dy.stride(), *y.stride(), *x.stride(), stride_mb, stride_mm, n * k, n,
        HAS_MASK=mask is not None, COMPUTE_DB=compute_db, PRECISION=_precision(x.dtype),
        BLOCK_MOD=_block_mod(num_mod), GROUP_M=_GROUP_M,
    )
    if splits == 1:
        return dw[0], db[0]
    return dw.sum(0).to(x.dtype), db.sum(0).to(x.dtype)


def check_slope(slope: float) -> None:
    """The backward recovers lrelu' from the sign of y, which needs slope >= 0."""
    if slope < 0:
        raise ValueError(f"the fused kernels need slope >= 0 (the backward reads lrelu' off y), got {slope}")


def check_operands(
    xs: list[torch.Tensor], weights: list[torch.Tensor], bias: torch.Tensor | None, mask: torch.Tensor | None
) -> None:
    """Shapes, dtypes and devices the kernels accept: xs [B,K_m], weights [N,K_m], bias [N], mask [B,M]."""
    if len(xs) != len(weights) or not xs:
        raise ValueError(f"need one weight per input, got {len(xs)} inputs and {len(weights)} weights")
    x0, w0 = xs[0], weights[0]
    b, n = x0.shape[0], w0.shape[0]
    for m, (x, w) in enumerate(zip(xs, weights, strict=True)):
        if x.dim() != 2 or w.dim() != 2 or x.shape[0] != b or w.shape[0] != n or x.shape[1] != w.shape[1]:
            raise ValueError(f"modality {m}: x {tuple(x.shape)} and weight {tuple(w.shape)} do not fit [B,K] and [N,K]")
    params = [*xs, *weights] if bias is None else [*xs, *weights, bias]
    if x0.dtype not in _SUPPORTED_DTYPES or any(t.dtype != x0.dtype for t in params):
        dtypes = [t.dtype for t in params]
        raise ValueError(f"inputs, weights and bias must share one of {_SUPPORTED_DTYPES}, got {dtypes}")
    if any(t.device != x0.device for t in params):
        raise ValueError("inputs, weights and bias must be on one device")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")
    if mask is not None and (tuple(mask.shape) != (b, len(xs)) or mask.device != x0.device):
        raise ValueError(f"mask must be [{b}, {len(xs)}] on {x0.device}, got {tuple(mask.shape)} on {mask.device}")


ALIGN_K = 16
"""Input widths are zero-padded to a multiple of this many elements before a launch (see :func:`pad_k`)."""


def pad_k(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B,K] and weight [N,K] zero-padded along K to a multiple of :data:`ALIGN_K`: (x [B,K'], weight [N,K']).

    Triton specialises a kernel on row strides divisible by 16: only then are row starts aligned for
    vector loads and the K loop's loads pipelined. An odd width (the discriminator's 257-wide
    minibatch-stddev layer, a 25-word caption) would lose that for the whole GEMM; a padded copy costs
    B*K' + N*K' elements of memory traffic and adds zeros to the sum, so the result is unchanged. The
    pad is a differentiable torch op, so the gradients of the padding columns are simply dropped.
    """
    extra = -x.shape[-1] % ALIGN_K
    if extra == 0 or x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        return x, weight  # aligned already, or operands that check_operands will reject as they are
    return F.pad(x, (0, extra)), F.pad(weight, (0, extra))


def autocast_args(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Cast to the autocast dtype when autocast is on, as F.linear would; custom ops are not autocast."""
    device = next(t for t in tensors if t is not None).device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def _given(t: torch.Tensor | None) -> bool:
    return t is not None and t.numel() > 0


def backward_of_backward(
    dy: torch.Tensor, y: torch.Tensor, xs: list[torch.Tensor], weights: list[torch.Tensor],
    row_weights: list[torch.Tensor | float], slope: float,
    gdxs: list[torch.Tensor | None], gdws: list[torch.Tensor | None], gdb: torch.Tensor | None,
) -> tuple[torch.Tensor, list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Gradients of the backward's outputs w.r.t. dy, x_m and W_m, in plain (differentiable) torch.

    The backward computes, with g = dy * s and s = where(y > 0, 1, slope) piecewise constant:
    dx_m = c_m * (g @ W_m), dW_m = (c_m * g).T @ x_m, db = g.sum(0); c_m is the row weight [B,1]
    or a scalar. Given the incoming gdx_m [B,K_m], gdW_m [N,K_m], gdb [N] (None or empty when that
    output was not used), returns (grad dy [B,N], grad x_m [B,K_m] | None, grad W_m [N,K_m] | None).
    This is the double backward that gradient penalties (WGAN-GP, R1) need.
    """
    act = torch.where(y > 0, 1.0, slope).to(dy.dtype)
    g = dy * act
    grad_g = gdb.expand_as(dy) if _given(gdb) else torch.zeros_like(dy)
    grad_xs, grad_ws = [], []
    for x, w, c, gdx, gdw in zip(xs, weights, row_weights, gdxs, gdws, strict=True):
        grad_xs.append(c * (g @ gdw) if _given(gdw) else None)
        grad_ws.append((c * g).T @ gdx if _given(gdx) else None)
        if _given(gdx):
            grad_g = grad_g + c * (gdx @ w.T)
        if _given(gdw):
            grad_g = grad_g + c * (x @ gdw.T)
    return grad_g * act, grad_xs, grad_ws


# The ops are opaque custom ops with shape-only fake implementations, not ``triton_op``s: torch.compile
# then keeps each op as one call in the graph and runs the launch code above when the graph runs. That is
# the same code on a GPU (inductor) and on CPU under TRITON_INTERPRET=1 (aot_eager), where a
# ``triton_op`` cannot be traced at all (its fake implementation would run the interpreted kernel on
# fake tensors). Autograd is registered with ``setup_context``, which AOTAutograd traces; double
# backward (gradient penalties) goes through the backward op's own autograd.


@custom_op("fastmmgan::fused_dense", mutates_args=())
def _fused_dense_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, slope: float) -> torch.Tensor:
    check_operands([x], [weight], bias, None)
    return projection_forward([x], [weight], bias, None, slope)


@_fused_dense_op.register_fake
def _fused_dense_fake(x, weight, bias, slope):
    return x.new_empty((x.shape[0], weight.shape[0]))


@custom_op("fastmmgan::fused_dense_backward", mutates_args=())
def _fused_dense_backward_op(
    dy: torch.Tensor, y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, slope: float,
    need_dx: bool, need_dw: bool, need_db: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx = input_grad(dy, y, weight, None, 0, 1, slope) if need_dx else x.new_empty(0)
    if need_dw or need_db:
        dw, db = weight_grad(dy, y, x, None, 0, 1, slope, need_db)
    else:
        dw, db = weight.new_empty(0), weight.new_empty(0)
    return dx, dw, db


@_fused_dense_backward_op.register_fake
def _fused_dense_backward_fake(dy, y, x, weight, slope, need_dx, need_dw, need_db):
    n, k = weight.shape
    dx = weight.new_empty(x.shape) if need_dx else x.new_empty(0)
    if not (need_dw or need_db):
        return dx, weight.new_empty(0), weight.new_empty(0)
    return dx, x.new_empty((n, k)), x.new_empty((n if need_db else 0,))


def _fused_dense_setup(ctx, inputs, output):
    x, weight, _, slope = inputs
    ctx.save_for_backward(x, weight, output)
    ctx.slope = slope


def _fused_dense_grad(ctx, dy):
    x, weight, y = ctx.saved_tensors
    need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
    dx, dw, db = torch.ops.fastmmgan.fused_dense_backward(dy, y, x, weight, ctx.slope, need_dx, need_dw, need_db)
    return dx if need_dx else None, dw if need_dw else None, db if need_db else None, None


def _fused_dense_backward_setup(ctx, inputs, output):
    dy, y, x, weight, slope = inputs[:5]
    ctx.save_for_backward(dy, y, x, weight)
    ctx.slope = slope


def _fused_dense_double_grad(ctx, gdx, gdw, gdb):
    dy, y, x, weight = ctx.saved_tensors
    grad_dy, (grad_x,), (grad_w,) = backward_of_backward(dy, y, [x], [weight], [1.0], ctx.slope, [gdx], [gdw], gdb)
    return grad_dy, None, grad_x, grad_w, None, None, None, None


_fused_dense_op.register_autograd(_fused_dense_grad, setup_context=_fused_dense_setup)
_fused_dense = torch.ops.fastmmgan.fused_dense.default  # the overload itself: one lookup fewer per call
_fused_dense_backward_op.register_autograd(_fused_dense_double_grad, setup_context=_fused_dense_backward_setup)


def fused_dense_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, slope: float = DEFAULT_SLOPE
) -> torch.Tensor:
    """``lrelu(x @ weight.T + bias)`` by the Triton kernels, differentiable; x [..., K], weight [N,K], bias [N] | None.

    Same contract as :func:`fastmmgan.ops.fused_dense_reference`; fp32/bf16/fp16, output in x's dtype.
    """
    check_slope(slope)
    if torch.is_autocast_enabled(x.device.type):
        x, weight, bias = autocast_args(x, weight, bias)
    if x.dim() == 2:  # the layers' case: no reshapes (each costs host time in eager mode)
        return _fused_dense(*pad_k(x, weight), bias, float(slope))
    y = _fused_dense(*pad_k(x.reshape(-1, x.shape[-1]), weight), bias, float(slope))
    return y.reshape(*x.shape[:-1], weight.shape[0])
