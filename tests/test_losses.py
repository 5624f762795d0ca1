"""Losses at known values."""

import math

import pytest
import torch

from fastmmgan.errors import FastMMGANError
from fastmmgan.losses import LOSSES, discriminator_loss, generator_loss, gradient_penalty

ZERO = torch.zeros(4, 1)
REAL = torch.full((4, 1), 2.0)
FAKE = torch.full((4, 1), -1.0)


@pytest.mark.parametrize(
    "name, d_at_zero, g_at_zero",
    [("ns", 2 * math.log(2), math.log(2)), ("minimax", 2 * math.log(2), -math.log(2)),
     ("lsgan", 0.5, 0.5), ("hinge", 2.0, 0.0), ("wgan-gp", 0.0, 0.0)],
)
def test_losses_at_zero_logits(name, d_at_zero, g_at_zero):
    assert discriminator_loss(name, ZERO, ZERO).item() == pytest.approx(d_at_zero, rel=1e-6)
    assert generator_loss(name, ZERO).item() == pytest.approx(g_at_zero, abs=1e-6)


def test_losses_at_separated_logits():
    assert discriminator_loss("hinge", REAL, FAKE).item() == pytest.approx(0.0)
    assert discriminator_loss("wgan-gp", REAL, FAKE).item() == pytest.approx(-3.0)
    assert discriminator_loss("lsgan", REAL, FAKE).item() == pytest.approx(0.5 * (1 + 1))
    expected = math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))
    assert discriminator_loss("ns", REAL, FAKE).item() == pytest.approx(expected, rel=1e-6)


def test_fake_weight_drops_rows_inside_the_mean():
    fake = torch.tensor([[0.0], [5.0]])
    weighted = discriminator_loss("wgan-gp", ZERO[:1], fake, torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(0.0)
    assert discriminator_loss("wgan-gp", ZERO[:1], fake, torch.tensor([0.0, 1.0])).item() == pytest.approx(2.5)
    assert discriminator_loss("wgan-gp", ZERO[:1], fake).item() == pytest.approx(2.5)


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(FastMMGANError, match="unknown loss 'bce'"):
        generator_loss("bce", ZERO)


def test_gradient_penalty_of_unit_slope_critic_is_zero():
    real, fake = [torch.randn(8, 3)], [torch.randn(8, 3)]
    weight = torch.tensor([0.6, 0.8, 0.0])
    gp = gradient_penalty(lambda xs: xs[0] @ weight[:, None], real, fake, torch.rand(8, 1))
    assert gp.item() == pytest.approx(0.0, abs=1e-6)
    gp2 = gradient_penalty(lambda xs: 2 * xs[0] @ weight[:, None], real, fake, torch.rand(8, 1))
    assert gp2.item() == pytest.approx(1.0, abs=1e-5)


def test_every_loss_is_finite_and_differentiable():
    for name in LOSSES:
        logits = torch.randn(6, 1, requires_grad=True)
        (discriminator_loss(name, logits, logits * 0.5) + generator_loss(name, logits)).backward()
        assert torch.isfinite(logits.grad).all()


def test_diversity_loss_penalises_ignoring_the_noise_on_unconditional_pairs_only():
    from fastmmgan.losses import diversity_loss

    z = torch.randn(4, 3)
    free = torch.zeros(4, 2, dtype=torch.bool)
    same = [torch.full((4, 5), 0.5)]
    varied = [torch.rand(4, 5) + torch.arange(4.0)[:, None]]
    assert diversity_loss(same, z, free).item() == pytest.approx(1e5, rel=1e-3)
    assert diversity_loss(varied, z, free).item() < 10.0
    conditioned = free.clone()
    conditioned[0, 0] = conditioned[2, 1] = True
    assert diversity_loss(same, z, conditioned).item() == 0.0
    half = free.clone()
    half[0, 0] = True
    assert diversity_loss(same, z, half).item() == pytest.approx(0.5e5, rel=1e-3)
