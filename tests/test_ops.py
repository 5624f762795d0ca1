"""The reference ops against naive per-element math."""

import itertools

import pytest
import torch

from fastmmgan import ops


def lrelu(v: float, slope: float) -> float:
    return v if v > 0 else slope * v


def test_fused_dense_matches_per_element_math():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 5, generator=g), torch.randn(4, 5, generator=g), torch.randn(4, generator=g)
    y = ops.fused_dense_reference(x, w, b, 0.2)
    for i, j in itertools.product(range(3), range(4)):
        pre = sum(float(x[i, k]) * float(w[j, k]) for k in range(5)) + float(b[j])
        assert y[i, j].item() == pytest.approx(lrelu(pre, 0.2), rel=1e-5, abs=1e-5)


def test_fused_dense_without_bias():
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    torch.testing.assert_close(ops.fused_dense_reference(x, w, None, 0.1), torch.nn.functional.leaky_relu(x @ w.T, 0.1))


@pytest.mark.parametrize("mask_rows", [[[1, 1, 1]], [[1, 0, 1]], [[0, 0, 0]], [[0, 1, 0]]])
def test_shared_projection_matches_per_element_math(mask_rows):
    g = torch.Generator().manual_seed(1)
    dims, n_out = [3, 2, 4], 5
    xs = [torch.randn(1, k, generator=g) for k in dims]
    ws = [torch.randn(n_out, k, generator=g) for k in dims]
    bias = torch.randn(n_out, generator=g)
    mask = torch.tensor(mask_rows, dtype=torch.bool)
    y = ops.shared_projection_reference(xs, ws, bias, mask, 0.2)
    present = [m for m in range(3) if mask_rows[0][m]]
    count = max(1, len(present))
    for j in range(n_out):
        acc = sum(sum(float(xs[m][0, k]) * float(ws[m][j, k]) for k in range(dims[m])) for m in present) / count
        assert y[0, j].item() == pytest.approx(lrelu(acc + float(bias[j]), 0.2), rel=1e-5, abs=1e-5)


def test_shared_projection_none_mask_is_all_present():
    xs = [torch.randn(4, 3), torch.randn(4, 2)]
    ws = [torch.randn(6, 3), torch.randn(6, 2)]
    bias = torch.randn(6)
    torch.testing.assert_close(
        ops.shared_projection_reference(xs, ws, bias, None),
        ops.shared_projection_reference(xs, ws, bias, torch.ones(4, 2, dtype=torch.bool)),
    )


def test_shared_projection_absent_modality_gets_no_gradient():
    xs = [torch.randn(4, 3, requires_grad=True), torch.randn(4, 2, requires_grad=True)]
    ws = [torch.randn(6, 3, requires_grad=True), torch.randn(6, 2, requires_grad=True)]
    mask = torch.tensor([[1, 0]] * 4, dtype=torch.bool)
    ops.shared_projection_reference(xs, ws, torch.zeros(6), mask).sum().backward()
    assert xs[1].grad.abs().max() == 0 and ws[1].grad.abs().max() == 0
    assert xs[0].grad.abs().max() > 0


def test_shared_projection_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="one weight per input"):
        ops.shared_projection_reference([torch.randn(2, 3)], [], torch.zeros(4), None)
