"""The Triton kernels against the reference ops: forward and every gradient, on odd shapes.

On a GPU host they run on CUDA tensors; without one, in Triton's CPU interpreter (tests/conftest.py
sets TRITON_INTERPRET=1), which is slow: shapes are small but span several tiles, K iterations, partial
tiles and more than one group of row tiles. Tests marked ``requires_cuda`` need what the interpreter
cannot show (tensor-core bf16 dots, large batches, CUDA graphs) and skip without a GPU.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import CUDA, KERNEL_DEVICE, assert_matches, requires_cuda

pytest.importorskip("triton")

from fastmmgan.kernels import fused_dense_triton, shared_projection_triton  # noqa: E402
from fastmmgan.kernels.fused_dense import _GROUP_M, _precision, _split_rows, launches  # noqa: E402
from fastmmgan.ops import fused_dense_reference, shared_projection_reference, tf32_allowed  # noqa: E402


@pytest.fixture(autouse=True)
def on_kernel_device():
    """Every tensor a test makes lives on the kernels' device (CUDA on a GPU host), TF32 off."""
    with torch.device(KERNEL_DEVICE), fp32_precision("ieee"):
        yield

K_IN, N_OUT = 37, 45
K_MODS = (37, 20, 45, 9, 16, 33, 5, 64, 17)
LOW_PRECISION = (torch.bfloat16, torch.float16)


def leaves(tensors: list[torch.Tensor | None], dtype: torch.dtype) -> list[torch.Tensor | None]:
    return [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]


def run(fn, inputs: list[torch.Tensor | None], dy: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward, then the gradient of <y, dy> w.r.t. every tensor input."""
    y = fn(inputs)
    present = [t for t in inputs if t is not None]
    return y, list(torch.autograd.grad(y, present, dy.to(y.dtype)))


def check_against_reference(fast_fn, ref_fn, inputs: list[torch.Tensor | None], dtype: torch.dtype) -> torch.Tensor:
    """Kernel forward and gradients in ``dtype`` vs the reference in fp32 from the same rounded inputs."""
    low = leaves(inputs, dtype)
    dy = torch.randn(low[0].shape[0], N_OUT).to(dtype)
    y, grads = run(fast_fn, low, dy)
    y_ref, grads_ref = run(ref_fn, leaves(low, torch.float32), dy.float())
    assert_matches(y, y_ref, dtype)
    assert len(grads) == len(grads_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert_matches(g, g_ref, dtype)
    return y


def dense_inputs(batch: int, with_bias: bool) -> list[torch.Tensor | None]:
    return [torch.randn(batch, K_IN), torch.randn(N_OUT, K_IN) / K_IN**0.5, torch.randn(N_OUT) if with_bias else None]


def check_dense(batch: int, dtype: torch.dtype, with_bias: bool = True, slope: float = 0.2) -> None:
    """fused_dense's forward and every gradient against the reference, at this batch and dtype."""
    check_against_reference(
        lambda t: fused_dense_triton(t[0], t[1], t[2], slope),
        lambda t: fused_dense_reference(t[0], t[1], t[2], slope),
        dense_inputs(batch, with_bias),
        dtype,
    )


@pytest.mark.parametrize("batch", [1, 3, 64, 257])
@pytest.mark.parametrize(("with_bias", "slope"), [(True, 0.2), (False, 0.01)])
def test_fused_dense_fp32(batch: int, with_bias: bool, slope: float) -> None:
    torch.manual_seed(batch)
    check_dense(batch, torch.float32, with_bias, slope)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("batch", [3, 64])
def test_fused_dense_low_precision(dtype: torch.dtype, batch: int) -> None:
    torch.manual_seed(batch)
    check_dense(batch, dtype)


def test_fused_dense_frozen_weight_and_leading_dims() -> None:
    """Only dx is asked for (weight and bias frozen); x [2, 5, K] keeps its leading dims."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, K_IN, requires_grad=True)
    w, b = torch.randn(N_OUT, K_IN), torch.randn(N_OUT)
    y = fused_dense_triton(x, w, b, 0.2)
    y_ref = fused_dense_reference(x, w, b, 0.2)
    assert y.shape == (2, 5, N_OUT)
    assert_matches(y, y_ref, torch.float32)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    (dx_ref,) = torch.autograd.grad(y_ref, x, dy)
    assert_matches(dx, dx_ref, torch.float32)


def test_weight_grad_of_long_batch_takes_the_two_stage_reduction() -> None:
    """B=257 above is reduced in two batch splits, so the fp32-partials path is what those tests check."""
    assert _split_rows(257, N_OUT, K_IN)[0] == 2
    assert _split_rows(64, N_OUT, K_IN)[0] == 1


class fp32_precision:  # noqa: N801 - used like torch's own context managers
    """Set torch's fp32 matmul precision for CUDA ("tf32" / "ieee" / "none") within the block and restore it
    through the same API, so no test leaves a setting behind (or mixes the legacy and the new API)."""

    def __init__(self, value: str, global_value: str | None = None) -> None:
        self.value, self.global_value = value, global_value

    def __enter__(self) -> None:
        matmul = torch.backends.cuda.matmul
        self.saved = (matmul.fp32_precision, torch.backends.fp32_precision)
        if self.global_value is not None:
            torch.backends.fp32_precision = self.global_value
        matmul.fp32_precision = self.value

    def __exit__(self, *exc) -> None:
        torch.backends.fp32_precision = self.saved[1]
        torch.backends.cuda.matmul.fp32_precision = self.saved[0]


def test_tf32_follows_torch_matmul_precision() -> None:
    """tl.dot takes tf32 for fp32 operands exactly when torch allows it for CUDA matmuls, through either API;
    reading it never raises (torch raises when the legacy flag is read after the new API was set)."""
    with fp32_precision("ieee"):
        assert not tf32_allowed() and _precision(torch.float32) == "ieee"
    with fp32_precision("tf32"):
        assert tf32_allowed() and _precision(torch.float32) == "tf32"
        assert _precision(torch.bfloat16) == _precision(torch.float16) == "ieee"
    with fp32_precision("none", global_value="tf32"):
        assert _precision(torch.float32) == "tf32"
    with fp32_precision("none", global_value="ieee"):
        assert _precision(torch.float32) == "ieee"
    with fp32_precision("ieee"):
        torch.backends.cuda.matmul.allow_tf32 = True  # the legacy API sets the new one
        assert _precision(torch.float32) == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = False
        assert _precision(torch.float32) == "ieee"


def test_fused_dense_rejects_bad_arguments() -> None:
    x, w = torch.randn(3, K_IN), torch.randn(N_OUT, K_IN)
    with pytest.raises(ValueError, match="slope >= 0"):
        fused_dense_triton(x, w, None, -0.1)
    with pytest.raises(ValueError, match="share one of"):
        fused_dense_triton(x, w.double(), None, 0.2)
    with pytest.raises(ValueError, match="do not fit"):
        fused_dense_triton(x, w[:, :-1], None, 0.2)


def every_pattern_mask(batch: int, num_mod: int) -> torch.Tensor:
    """[B, M] bool whose rows cycle through all 2**M presence patterns, all-absent first."""
    patterns = torch.tensor(list(itertools.product([False, True], repeat=num_mod)))
    return patterns[torch.arange(batch) % len(patterns)]


def projection_inputs(batch: int, num_mod: int) -> list[torch.Tensor]:
    ks = K_MODS[:num_mod]
    xs = [torch.randn(batch, k) for k in ks]
    ws = [torch.randn(N_OUT, k) / k**0.5 for k in ks]
    return [*xs, *ws, torch.randn(N_OUT)]


def projection_fns(num_mod: int, mask: torch.Tensor | None, slope: float):
    def split(t):
        return list(t[:num_mod]), list(t[num_mod : 2 * num_mod]), t[-1]

    return (
        lambda t: shared_projection_triton(*split(t), mask, slope),
        lambda t: shared_projection_reference(*split(t), mask, slope),
    )


@pytest.mark.parametrize(
    ("num_mod", "batch", "masked", "slope"),
    [
        (1, 3, False, 0.2),
        (1, 64, True, 0.01),
        (2, 1, True, 0.2),
        (2, 64, True, 0.2),
        (3, 3, False, 0.01),
        (3, 64, True, 0.2),
        (3, 257, True, 0.01),
        (4, 64, True, 0.2),
        (9, 5, True, 0.01),
    ],
)
def test_shared_projection_fp32(num_mod: int, batch: int, masked: bool, slope: float) -> None:
    """Every mask pattern, all-absent rows included; M=9 chains three launches through fp32 partials."""
    torch.manual_seed(10 * num_mod + batch)
    mask = every_pattern_mask(batch, num_mod) if masked else None
    check_against_reference(*projection_fns(num_mod, mask, slope), projection_inputs(batch, num_mod), torch.float32)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_shared_projection_low_precision(dtype: torch.dtype) -> None:
    torch.manual_seed(7)
    check_against_reference(*projection_fns(3, every_pattern_mask(64, 3), 0.2), projection_inputs(64, 3), dtype)


def test_shared_projection_float_mask_is_not_differentiated() -> None:
    """A float mask weights the modalities (mask / max(1, sum)); it gets no gradient."""
    torch.manual_seed(3)
    mask = torch.rand(64, 3).mul(1.5).round().div(1.5).requires_grad_()
    check_against_reference(*projection_fns(3, mask, 0.2), projection_inputs(64, 3), torch.float32)
    assert mask.grad is None


def test_shared_projection_absent_rows_give_lrelu_bias() -> None:
    torch.manual_seed(4)
    inputs = projection_inputs(8, 3)
    mask = every_pattern_mask(8, 3)
    y = shared_projection_triton(inputs[:3], inputs[3:6], inputs[6], mask, 0.2)
    expected = torch.nn.functional.leaky_relu(inputs[6], 0.2)
    torch.testing.assert_close(y[0], expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(y[1], expected)


def test_ops_have_fake_shapes_and_stay_whole_in_compiled_graphs() -> None:
    """What torch.compile relies on: the ops' fake implementations give the real shapes and dtypes without
    running a kernel, and AOTAutograd's joint forward+backward graph of the public ops (dispatch included)
    holds each op as one call: 2 forward ops and their 2 backward ops, which launch the kernels when the
    graph runs (on CUDA under inductor, on CPU in the interpreter under aot_eager)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastmmgan import ops

    before = launches.copy()
    with FakeTensorMode():
        y = fused_dense_triton(torch.empty(5, 7, dtype=torch.bfloat16), torch.empty(3, 7, dtype=torch.bfloat16), None)
        xs, ws = [torch.empty(5, 7), torch.empty(5, 4)], [torch.empty(3, 7), torch.empty(3, 4)]
        z = shared_projection_triton(xs, ws, torch.empty(3), torch.ones(5, 2, dtype=torch.bool))
        dy = torch.empty(5, 3)
        dx, dw, db = torch.ops.fastmmgan.fused_dense_backward(dy, dy, xs[0], ws[0], 0.2, True, False, True)
    assert (tuple(y.shape), y.dtype, tuple(z.shape), z.dtype) == ((5, 3), torch.bfloat16, (5, 3), torch.float32)
    assert (tuple(dx.shape), tuple(dw.shape), tuple(db.shape)) == ((5, 7), (3, 7), (3,))
    assert launches == before

    joint = []

    def keep_joint_graph(graph, *args, **kwargs):
        joint.append(graph)
        from torch._functorch.partitioners import default_partition

        return default_partition(graph, *args, **kwargs)

    def step(x, w, b, x2, w2, w3, mask):
        y = ops.fused_dense(x, w, b, 0.2)
        return ops.shared_projection([y, x2], [w2, w3], b, mask, 0.2).square().sum()

    shapes = [(5, 7), (3, 7), (3,), (5, 4), (3, 3), (3, 4)]
    args = [torch.randn(shape, requires_grad=True) for shape in shapes]
    def boxed(gm, _):
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=boxed, bw_compiler=boxed, partition_fn=keep_joint_graph)
    torch._dynamo.reset()
    with ops.kernels_mode("triton"):
        loss = torch.compile(step, fullgraph=True, backend=backend)(*args, torch.ones(5, 2))
        loss.backward()
    names = sorted(str(n.target) for n in joint[0].graph.nodes if "fastmmgan" in str(n.target))
    assert names == [
        "fastmmgan.fused_dense.default", "fastmmgan.fused_dense_backward.default",
        "fastmmgan.shared_projection.default", "fastmmgan.shared_projection_backward.default",
    ]
    assert launches["projection_fwd"] - before["projection_fwd"] == 2
    assert all(arg.grad is not None for arg in args)


def penalty_grads(fn, inputs: list[torch.Tensor | None], x_index: list[int]) -> list[torch.Tensor]:
    """Gradient-penalty shape (WGAN-GP, R1): grads of ||d sum(y) / d x||^2 w.r.t. every input."""
    present = [t for t in inputs if t is not None]
    y = fn(inputs)
    dxs = torch.autograd.grad(y.square().sum(), [inputs[i] for i in x_index], create_graph=True)
    return list(torch.autograd.grad(sum(dx.square().sum() for dx in dxs), present))


@pytest.mark.parametrize("op", ["fused_dense", "shared_projection"])
def test_double_backward_matches_reference(op: str) -> None:
    torch.manual_seed(5)
    if op == "fused_dense":
        inputs, x_index = dense_inputs(64, True), [0]
        fast, ref = (lambda t: fused_dense_triton(t[0], t[1], t[2], 0.2)), (lambda t: fused_dense_reference(*t, 0.2))
    else:
        inputs, x_index = projection_inputs(64, 3), [0, 1, 2]
        fast, ref = projection_fns(3, every_pattern_mask(64, 3), 0.2)
    for g, g_ref in zip(penalty_grads(fast, leaves(inputs, torch.float32), x_index),
                        penalty_grads(ref, leaves(inputs, torch.float32), x_index), strict=True):
        assert_matches(g, g_ref, torch.float32)


def row_tile_groups(batch: int) -> int:
    """How many GROUP_M groups of row tiles the forward and dgrad launches have at this batch."""
    from fastmmgan.kernels.fused_dense import _GEMM_CONFIGS

    block_m = min(c.kwargs["BLOCK_M"] for c in _GEMM_CONFIGS)
    return math.ceil(math.ceil(batch / block_m) / _GROUP_M)


def test_tile_order_over_several_row_tile_groups() -> None:
    """B = 600 spans more than one GROUP_M group of row tiles (with a partial last group), so the grouped
    tile order must map every program to its own tile: a wrong order leaves rows unwritten or doubled."""
    batch = 600 if not CUDA else 4099
    assert row_tile_groups(batch) >= 2
    torch.manual_seed(11)
    check_dense(batch, torch.float32)


@requires_cuda
@pytest.mark.parametrize("batch", [1024, 4096])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_large_batches_on_cuda(batch: int, dtype: torch.dtype) -> None:
    """Many tile groups, batch splits of the weight-gradient reduction, and bf16 ``tl.dot`` on tensor cores
    (the interpreter upcasts 16-bit dots to fp32, so only a GPU checks the real bf16 MMA)."""
    torch.manual_seed(batch)
    check_dense(batch, dtype)
    mask = every_pattern_mask(batch, 4).to(KERNEL_DEVICE)
    check_against_reference(*projection_fns(4, mask, 0.2), projection_inputs(batch, 4), dtype)


@requires_cuda
def test_ops_replay_in_a_cuda_graph() -> None:
    """Forward and backward of both ops captured in one CUDA graph and replayed on new inputs (what the
    compiled step's ``reduce-overhead`` mode does) give what eager calls give."""
    torch.manual_seed(2)
    x = torch.randn(256, K_IN, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(N_OUT, K_IN) / K_IN**0.5).to(torch.bfloat16).requires_grad_()
    b = torch.randn(N_OUT, dtype=torch.bfloat16, requires_grad=True)

    def run_once():
        y = fused_dense_triton(x, w, b, 0.2)
        return (y, *torch.autograd.grad(y.float().square().sum(), [x, w, b]))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # autotune and warm up outside the capture
            run_once()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run_once()
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, run_once(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_odd_widths_are_padded_to_aligned_rows() -> None:
    """K = 37 (or the discriminator's 257) reaches the kernels as 48 (272) zero-padded columns, so every row
    starts 16-element aligned; aligned widths pass untouched, mismatched operands are left for the checks."""
    from fastmmgan.kernels.fused_dense import ALIGN_K, pad_k

    x, w = torch.randn(3, 257), torch.randn(45, 257)
    xp, wp = pad_k(x, w)
    assert xp.shape == (3, 272) and wp.shape == (45, 272) and xp.stride(0) % ALIGN_K == 0
    assert torch.equal(xp[:, :257], x) and not xp[:, 257:].any() and not wp[:, 257:].any()
    aligned = torch.randn(3, 64)
    assert pad_k(aligned, torch.randn(5, 64))[0] is aligned
    assert pad_k(x, w[:, :-1])[0] is x
