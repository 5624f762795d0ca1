"""Which implementation the public ops pick (FASTMMGAN_KERNELS), and a tiny GAN trained both ways."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from fastmmgan import ops

N_OUT = 6


def dense_args(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 5, generator=g), torch.randn(N_OUT, 5, generator=g), torch.randn(N_OUT, generator=g)


def projection_args(batch: int = 4):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(batch, 5, generator=g), torch.randn(batch, 3, generator=g)]
    ws = [torch.randn(N_OUT, 5, generator=g), torch.randn(N_OUT, 3, generator=g)]
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)[:batch]
    return xs, ws, torch.randn(N_OUT, generator=g), mask


@pytest.fixture
def kernel_calls(monkeypatch) -> dict[str, int]:
    """Calls so far of fastmmgan.kernels' two entry points, which this wraps to count them."""
    kernels = pytest.importorskip("fastmmgan.kernels")
    calls = {"fused_dense_triton": 0, "shared_projection_triton": 0}

    def counted(name):
        real = getattr(kernels, name)

        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return call

    for name in calls:
        monkeypatch.setattr(kernels, name, counted(name))
    return calls


@pytest.mark.parametrize("mode", [None, "auto", "reference"])
def test_cpu_tensors_take_the_reference(monkeypatch, kernel_calls, mode):
    if mode is None:
        monkeypatch.delenv(ops.KERNELS_ENV, raising=False)
    else:
        monkeypatch.setenv(ops.KERNELS_ENV, mode)
    x, w, b = dense_args()
    assert torch.equal(ops.fused_dense(x, w, b, 0.2), ops.fused_dense_reference(x, w, b, 0.2))
    xs, ws, bias, mask = projection_args()
    assert torch.equal(
        ops.shared_projection(xs, ws, bias, mask, 0.2), ops.shared_projection_reference(xs, ws, bias, mask, 0.2)
    )
    assert kernel_calls == {"fused_dense_triton": 0, "shared_projection_triton": 0}


def test_triton_mode_routes_cpu_tensors_through_the_kernels(monkeypatch, kernel_calls):
    monkeypatch.setenv(ops.KERNELS_ENV, "triton")
    x, w, b = dense_args()
    torch.testing.assert_close(ops.fused_dense(x, w, b, 0.2), ops.fused_dense_reference(x, w, b, 0.2))
    xs, ws, bias, mask = projection_args()
    torch.testing.assert_close(
        ops.shared_projection(xs, ws, bias, mask, 0.2), ops.shared_projection_reference(xs, ws, bias, mask, 0.2)
    )
    assert kernel_calls == {"fused_dense_triton": 1, "shared_projection_triton": 1}


def test_unknown_mode_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv(ops.KERNELS_ENV, "cuda-please")
    with pytest.raises(ValueError, match=r"FASTMMGAN_KERNELS='cuda-please' is not one of auto, reference, triton"):
        ops.fused_dense(*dense_args(), 0.2)
    with pytest.raises(ValueError, match="cuda-please"):
        ops.shared_projection(*projection_args(), 0.2)


def test_dispatch_compiles_without_graph_breaks_on_cpu(monkeypatch):
    """torch.compile traces the dispatch itself (fullgraph): in auto mode CPU tensors get the reference."""
    monkeypatch.delenv(ops.KERNELS_ENV, raising=False)
    x, w, b = dense_args()
    xs, ws, bias, mask = projection_args()

    def both(x, w, b, xs, ws, bias, mask):
        return ops.fused_dense(x, w, b, 0.2), ops.shared_projection(xs, ws, bias, mask, 0.2)

    torch._dynamo.reset()
    got = torch.compile(both, fullgraph=True, backend="eager")(x, w, b, xs, ws, bias, mask)
    want = both(x, w, b, xs, ws, bias, mask)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r)


class TinyGenerator(torch.nn.Module):
    """z [B,8] -> (image [B,12], aux [B,5]) through fused_dense layers."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(8, 16)
        self.image = torch.nn.Linear(16, 12)
        self.aux = torch.nn.Linear(16, 5, bias=False)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = ops.fused_dense(z, self.hidden.weight, self.hidden.bias, 0.2)
        image = ops.fused_dense(h, self.image.weight, self.image.bias, 0.01)
        return image, ops.fused_dense(h, self.aux.weight, None, 0.2)


class TinyDiscriminator(torch.nn.Module):
    """(image, aux, mask) -> logit [B,1]: shared_projection over both modalities, then fused_dense."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.ModuleList([torch.nn.Linear(12, 16, bias=False), torch.nn.Linear(5, 16, bias=False)])
        self.bias = torch.nn.Parameter(torch.zeros(16))
        self.hidden = torch.nn.Linear(16, 10)
        self.logit = torch.nn.Linear(10, 1)

    def forward(self, image: torch.Tensor, aux: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = ops.shared_projection([image, aux], [p.weight for p in self.proj], self.bias, mask, 0.2)
        h = ops.fused_dense(h, self.hidden.weight, self.hidden.bias, 0.2)
        return ops.fused_dense(h, self.logit.weight, self.logit.bias, 1.0)


def train_tiny_gan(steps: int = 4, batch: int = 12) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Non-saturating GAN, Adam on both nets, fixed data; returns per-step losses and the final weights."""
    torch.manual_seed(0)
    gen, disc = TinyGenerator(), TinyDiscriminator()
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-2)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(1)
    mask = torch.tensor(list(itertools.product([False, True], repeat=2)))[torch.arange(batch) % 4]
    losses = []
    for _ in range(steps):
        real = (torch.randn(batch, 12, generator=data) + 1, torch.randn(batch, 5, generator=data))
        z = torch.randn(batch, 8, generator=data)
        fake = gen(z)
        d_loss = F.softplus(-disc(*real, mask)).mean() + F.softplus(disc(*(f.detach() for f in fake), mask)).mean()
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = F.softplus(-disc(*gen(z), mask)).mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        losses += [d_loss.item(), g_loss.item()]
    weights = {f"g.{k}": v for k, v in gen.state_dict().items()} | {f"d.{k}": v for k, v in disc.state_dict().items()}
    return losses, weights


def test_tiny_gan_trains_the_same_on_kernels_and_reference(monkeypatch, kernel_calls):
    monkeypatch.setenv(ops.KERNELS_ENV, "reference")
    ref_losses, ref_weights = train_tiny_gan()
    assert kernel_calls == {"fused_dense_triton": 0, "shared_projection_triton": 0}
    monkeypatch.setenv(ops.KERNELS_ENV, "triton")
    losses, weights = train_tiny_gan()
    assert kernel_calls["fused_dense_triton"] > 0 and kernel_calls["shared_projection_triton"] > 0
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-5)
    initial = train_tiny_gan(steps=0)[1]
    assert weights.keys() == ref_weights.keys() == initial.keys()
    for name, ref in ref_weights.items():
        assert not torch.equal(ref, initial[name]), f"{name} did not train"
        atol = 1e-5 * max(1.0, ref.abs().max().item())
        torch.testing.assert_close(weights[name], ref, rtol=1e-5, atol=atol, msg=name)
