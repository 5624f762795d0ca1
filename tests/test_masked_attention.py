"""The masked-attention op and the attention fusion: Triton kernels against the reference, forward and gradients.

On a GPU host the kernels run on CUDA tensors; without one, in Triton's CPU interpreter (the root conftest sets
TRITON_INTERPRET=1), where every (sample, head) program costs tens of milliseconds: B * H stays small, but the
cases still cover every mask pattern of M = 3 (all-absent rows included), M in {1, 2, 5, 8}, odd batches,
head dims that are not powers of two, strided q/k/v views, and fp32 / bf16 / fp16.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import KERNEL_DEVICE, assert_matches

pytest.importorskip("triton")

from fastmmgan import ops  # noqa: E402
from fastmmgan.attention_fusion import AttentionFusion  # noqa: E402
from fastmmgan.kernels.fused_dense import launches  # noqa: E402
from fastmmgan.kernels.masked_attention import masked_attention_triton  # noqa: E402
from fastmmgan.ops import masked_attention_reference  # noqa: E402


@pytest.fixture(autouse=True)
def on_kernel_device():
    """Every tensor a test makes lives on the kernels' device (CUDA on a GPU host)."""
    with torch.device(KERNEL_DEVICE):
        yield


def every_pattern_mask(batch: int, num_tokens: int) -> torch.Tensor:
    """[B, M] bool whose rows cycle through all 2**M presence patterns, all-absent first."""
    patterns = torch.tensor(list(itertools.product([False, True], repeat=num_tokens)))
    return patterns[torch.arange(batch) % len(patterns)]


def random_mask(batch: int, num_tokens: int) -> torch.Tensor:
    """[B, M] random bool; from B >= 3 on, row 0 is all absent and row 1 all present."""
    mask = torch.rand(batch, num_tokens) < 0.6
    if batch >= 3:
        mask[0], mask[1] = False, True
    return mask


def qkv_inputs(batch: int, heads: int, num_tokens: int, dim: int, strided: bool) -> list[torch.Tensor]:
    """q, k, v [B,H,M,D]; ``strided`` takes them as views of one [B, M, 3, H, D] tensor, as a fused qkv Linear gives."""
    if strided:
        return list(torch.randn(batch, num_tokens, 3, heads, dim).permute(2, 0, 3, 1, 4))
    return [torch.randn(batch, heads, num_tokens, dim) for _ in range(3)]


def forward_and_grads(fn, inputs: list[torch.Tensor], dy: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn(q, k, v) and the gradients of <o, dy> w.r.t. q, k and v."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out, list(torch.autograd.grad(out, leaves, dy.to(out.dtype)))


def check_attention(batch, heads, num_tokens, dim, mask, dtype, strided=False) -> None:
    """Kernel forward, dq, dk and dv in ``dtype`` vs the reference in fp32 from the same rounded inputs."""
    inputs = [t.to(dtype) for t in qkv_inputs(batch, heads, num_tokens, dim, strided)]
    if strided and dtype == torch.float32:
        assert not inputs[0].is_contiguous()
    dy = torch.randn(batch, heads, num_tokens, dim).to(dtype)
    out, grads = forward_and_grads(lambda q, k, v: masked_attention_triton(q, k, v, mask), inputs, dy)
    out_ref, grads_ref = forward_and_grads(
        lambda q, k, v: masked_attention_reference(q, k, v, mask), [t.float() for t in inputs], dy.float()
    )
    assert_matches(out, out_ref, dtype)
    for name, g, g_ref in zip("qkv", grads, grads_ref, strict=True):
        assert torch.isfinite(g).all(), f"d{name} not finite"
        assert_matches(g, g_ref, dtype)
    # Absent query rows are exactly 0, and so is everything of an all-absent sample.
    absent = ~mask
    assert not out.permute(0, 2, 1, 3)[absent].any()
    assert not any(g[absent.all(dim=1)].any() for g in grads)


@pytest.mark.parametrize(
    ("batch", "heads", "dim"),
    [(37, 1, 24), (11, 4, 8)],
)
def test_every_mask_pattern_fp32(batch: int, heads: int, dim: int) -> None:
    """M = 3: all 8 presence patterns, the all-absent one included, forward and dq, dk, dv."""
    torch.manual_seed(batch + dim)
    check_attention(batch, heads, 3, dim, every_pattern_mask(batch, 3), torch.float32)


@pytest.mark.parametrize(
    ("num_tokens", "batch", "heads", "dim", "strided"),
    [
        (1, 3, 4, 64, False),
        (2, 1, 4, 24, False),
        (5, 37, 1, 8, False),
        (5, 3, 4, 24, True),
        (8, 3, 4, 64, False),
        (8, 1, 1, 128, True),
    ],
)
def test_random_masks_fp32(num_tokens: int, batch: int, heads: int, dim: int, strided: bool) -> None:
    torch.manual_seed(100 * num_tokens + batch)
    check_attention(batch, heads, num_tokens, dim, random_mask(batch, num_tokens), torch.float32, strided)


@pytest.mark.parametrize(
    ("dtype", "num_tokens", "batch", "heads", "dim"),
    [
        (torch.bfloat16, 3, 11, 4, 24),
        (torch.bfloat16, 8, 3, 1, 64),
        (torch.float16, 5, 3, 4, 8),
    ],
)
def test_low_precision(dtype: torch.dtype, num_tokens: int, batch: int, heads: int, dim: int) -> None:
    torch.manual_seed(num_tokens)
    mask = every_pattern_mask(batch, 3) if num_tokens == 3 else random_mask(batch, num_tokens)
    check_attention(batch, heads, num_tokens, dim, mask, dtype)


def test_autocast_casts_like_the_other_ops() -> None:
    """Under autocast the kernels get the autocast dtype (as F.linear's inputs would), like the reference's matmuls."""
    torch.manual_seed(9)
    device = KERNEL_DEVICE.type
    q, k, v = qkv_inputs(3, 2, 3, 8, strided=False)
    mask = random_mask(3, 3)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = masked_attention_triton(q, k, v, mask)
        out_ref = masked_attention_reference(q, k, v, mask)
    assert out.dtype == out_ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), out_ref.float(), rtol=2e-2, atol=2e-2)


def test_double_backward_matches_reference() -> None:
    """Gradient-penalty shape (WGAN-GP, R1): grads of ||d <o, w> / d(q, k, v)||^2 w.r.t. q, k, v."""
    torch.manual_seed(5)
    mask = every_pattern_mask(8, 3)
    inputs = qkv_inputs(8, 2, 3, 8, strided=False)
    weight = torch.randn(8, 2, 3, 8)

    def penalty_grads(fn):
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = fn(*leaves, mask)
        firsts = torch.autograd.grad((out * weight).sum(), leaves, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in firsts), leaves)

    for g, g_ref in zip(penalty_grads(masked_attention_triton), penalty_grads(masked_attention_reference), strict=True):
        assert torch.isfinite(g).all()
        assert_matches(g, g_ref, torch.float32)


def test_op_has_fake_shapes() -> None:
    """What torch.compile relies on: the fakes give the real shapes and dtypes without launching a kernel."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    before = launches.copy()
    with FakeTensorMode():
        q = torch.empty(5, 2, 3, 24, dtype=torch.bfloat16)
        out = masked_attention_triton(q, q, q, torch.ones(5, 3, dtype=torch.bool))
        grads = torch.ops.fastmmgan.masked_attention_backward(q, q, q, q, torch.ones(5, 3, dtype=torch.bool))
    assert (tuple(out.shape), out.dtype) == ((5, 2, 3, 24), torch.bfloat16)
    assert [tuple(g.shape) for g in grads] == [(5, 2, 3, 24)] * 3
    assert launches == before


def test_rejects_bad_arguments() -> None:
    q = torch.randn(2, 1, 3, 8)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="one \\[B,H,M,D\\] shape"):
        masked_attention_triton(q, q[..., :-1], q, mask)
    with pytest.raises(ValueError, match="M <= 8"):
        big = torch.randn(2, 1, 9, 8)
        masked_attention_triton(big, big, big, torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="share one of"):
        masked_attention_triton(q, q.double(), q, mask)
    with pytest.raises(ValueError, match="mask must be"):
        masked_attention_triton(q, q, q, mask[:, :2])


# The reference itself.


def loop_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """An independent oracle: per sample, a plain softmax over the present tokens only."""
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        idx = mask[b].nonzero().flatten()
        if len(idx):
            probs = torch.softmax(q[b][:, idx] @ k[b][:, idx].transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
            out[b][:, idx] = probs @ v[b][:, idx]
    return out


def test_reference_matches_per_sample_softmax() -> None:
    torch.manual_seed(1)
    mask = every_pattern_mask(16, 3)
    q, k, v = qkv_inputs(16, 2, 3, 5, strided=False)
    torch.testing.assert_close(masked_attention_reference(q, k, v, mask), loop_attention(q, k, v, mask))


def test_reference_ignores_absent_tokens() -> None:
    """Absent keys get zero weight: changing an absent token's k and v changes nothing, and they get no gradient."""
    torch.manual_seed(2)
    mask = every_pattern_mask(16, 3)
    q, k, v = (t.requires_grad_() for t in qkv_inputs(16, 2, 3, 8, strided=False))
    out = masked_attention_reference(q, k, v, mask)
    absent = (~mask)[:, None, :, None]
    k2 = torch.where(absent, torch.randn_like(k) * 100, k)
    v2 = torch.where(absent, torch.randn_like(v) * 100, v)
    torch.testing.assert_close(masked_attention_reference(q, k2, v2, mask), out, rtol=0, atol=1e-6)
    _, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    absent_rows = (~mask)[:, None, :].expand(-1, 2, -1)
    assert not dk[absent_rows].any() and not dv[absent_rows].any()


def test_reference_all_absent_rows_give_zero_and_zero_grads() -> None:
    q, k, v = (torch.randn(2, 3, 4, 8).requires_grad_() for _ in range(3))
    mask = torch.tensor([[False] * 4, [True, False, True, False]])
    out = masked_attention_reference(q, k, v, mask)
    assert torch.isfinite(out).all() and not out[0].any()
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert all(torch.isfinite(g).all() and not g[0].any() for g in grads)


# The attention fusion.

IN_DIMS = (5, 7, 3)
WIDTH, HEADS = 24, 4  # head dim 6: not a power of two


def fusion_case(batch: int = 8, seed: int = 0) -> tuple[AttentionFusion, list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(seed)
    fusion = AttentionFusion(IN_DIMS, WIDTH, heads=HEADS)
    xs = [torch.randn(batch, k) for k in IN_DIMS]
    fusion.calibrate_(xs)
    return fusion, xs, every_pattern_mask(batch, len(IN_DIMS))


def fusion_output_and_grads(fusion: AttentionFusion, xs, mask, fn=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and the gradients of a fixed scalar w.r.t. every parameter and every input."""
    leaves = [x.detach().requires_grad_() for x in xs]
    params = list(fusion.parameters())
    y = (fusion if fn is None else fn)(leaves, mask)
    loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum()
    return y, list(torch.autograd.grad(loss, params + leaves))


def test_fusion_all_absent_rows_are_finite() -> None:
    """A row with no modality gives lrelu(bias), with finite gradients; the others move with their inputs."""
    fusion, xs, mask = fusion_case()
    with torch.no_grad():
        fusion.bias.normal_()
    y, grads = fusion_output_and_grads(fusion, xs, mask)
    torch.testing.assert_close(y[0], F.leaky_relu(fusion.bias, fusion.slope))
    assert all(torch.isfinite(g).all() for g in grads)
    assert not any(x_grad[0].any() for x_grad in grads[-len(xs) :])
    assert y.shape == (8, WIDTH)


def test_fusion_ignores_absent_modalities() -> None:
    """An absent modality's input changes nothing, even inf or NaN; a present one's does."""
    fusion, xs, mask = fusion_case(seed=1)
    y = fusion(xs, mask)
    for m in range(len(xs)):
        absent = ~mask[:, m : m + 1]
        junk = torch.where(absent, torch.full_like(xs[m], float("nan")), xs[m])
        junk[0, 0] = float("inf")  # row 0 has no modality at all
        changed = [junk if i == m else x for i, x in enumerate(xs)]
        torch.testing.assert_close(fusion(changed, mask), y)
        moved = [x + 1 if i == m else x for i, x in enumerate(xs)]
        assert not torch.allclose(fusion(moved, mask)[mask[:, m]], y[mask[:, m]])


def test_fusion_calibrates_tokens_and_takes_no_mask_as_all_present() -> None:
    fusion, xs, _ = fusion_case(batch=64)
    for proj, x in zip(fusion.proj, xs, strict=True):
        std = F.linear(x, proj.weight).std(dim=0).mean()
        torch.testing.assert_close(std, torch.tensor(1.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fusion(xs, None), fusion(xs, torch.ones(64, 3, dtype=torch.bool)))


def test_fusion_triton_matches_reference() -> None:
    """Same output and parameter (and input) gradients with the kernels as with the reference math."""
    fusion, xs, mask = fusion_case()
    before = launches["attention_fwd"], launches["attention_bwd"]
    with ops.kernels_mode("triton"):
        y, grads = fusion_output_and_grads(fusion, xs, mask)
    assert (launches["attention_fwd"], launches["attention_bwd"]) == (before[0] + 1, before[1] + 1)
    with ops.kernels_mode("reference"):
        y_ref, grads_ref = fusion_output_and_grads(fusion, xs, mask)
    assert_matches(y, y_ref, torch.float32)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert_matches(g, g_ref, torch.float32)


def test_fusion_compiled_with_kernels_matches_eager_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile (aot_eager: AOTAutograd's graphs run op by op, the custom ops launch their kernels, in the
    interpreter on CPU) of forward + backward with FASTMMGAN_KERNELS=triton gives what eager reference math gives."""
    fusion, xs, mask = fusion_case(seed=3)
    with ops.kernels_mode("reference"):
        y_ref, grads_ref = fusion_output_and_grads(fusion, xs, mask)
    monkeypatch.setenv(ops.KERNELS_ENV, "triton")
    torch._dynamo.reset()
    before = launches["attention_fwd"], launches["attention_bwd"]
    compiled = torch.compile(fusion, backend="aot_eager", fullgraph=True)
    y, grads = fusion_output_and_grads(fusion, xs, mask, fn=compiled)
    assert (launches["attention_fwd"], launches["attention_bwd"]) == (before[0] + 1, before[1] + 1)
    assert_matches(y, y_ref, torch.float32)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert_matches(g, g_ref, torch.float32)
    torch._dynamo.reset()


class _Positional(torch.nn.Module):
    """AttentionFusion with one positional input per modality, for the exporter."""

    def __init__(self, fusion: AttentionFusion) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.fusion(list(args[:-1]), args[-1])


def test_fusion_exports_to_onnx_and_runs_in_onnxruntime(tmp_path) -> None:
    """Through the reference path the fusion exports with standard ops only; ONNX Runtime's output matches torch
    to 1e-5 on every mask pattern, all-absent rows included (no NaN from the masked softmax)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    fusion, xs, mask = fusion_case(batch=11, seed=4)
    fusion = fusion.cpu().eval()
    xs, mask = [x.cpu() for x in xs], mask.cpu()
    names = [f"x{m}" for m in range(len(xs))] + ["mask"]
    path = tmp_path / "fusion.onnx"
    with ops.kernels_mode("reference"), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _Positional(fusion), (*xs, mask), str(path), dynamo=False, opset_version=17,
            input_names=names, output_names=["y"], dynamic_axes={n: {0: "batch"} for n in [*names, "y"]},
        )
        expected = fusion(xs, mask).numpy()
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {n: t.numpy() for n, t in zip(names, [*xs, mask], strict=True)})
    assert torch.isfinite(torch.from_numpy(got)).all()
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), rtol=1e-5, atol=1e-5)
