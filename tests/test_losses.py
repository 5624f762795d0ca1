"""Losses at known values."""

import math

import pytest
import torch

from fastmmgan.errors import FastMMGANError
from fastmmgan.losses import LOSSES, discriminator_loss, generator_loss, gradient_penalty, mmd_loss, r1_penalty

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


def test_r1_penalty_is_the_mean_squared_input_gradient_and_trains_the_critic():
    """A critic sum_m x_m @ w_m has gradient w_m at every row: R1 = sum_m ||w_m||^2, and its gradient
    w.r.t. w_m is 2 w_m (the penalty is differentiable w.r.t. the critic's parameters)."""
    w = [torch.tensor([0.6, 0.8, 0.0], requires_grad=True), torch.tensor([1.0, -2.0], requires_grad=True)]
    real = [torch.randn(8, 3), torch.randn(8, 2)]
    r1 = r1_penalty(lambda xs: sum(x @ wm[:, None] for x, wm in zip(xs, w)), real)
    assert r1.item() == pytest.approx(1.0 + 5.0, rel=1e-6)
    grads = torch.autograd.grad(r1, w)
    for g, wm in zip(grads, w):
        torch.testing.assert_close(g, 2 * wm.detach())


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


def test_conditional_diversity_loss_penalises_one_output_per_condition_on_what_was_not_given():
    from fastmmgan.losses import conditional_diversity_loss

    z, z_alt = torch.randn(4, 3), torch.randn(4, 3)
    given = torch.tensor([[True, False], [False, True], [False, False], [True, False]])
    same = [torch.full((4, 5), 0.5), torch.full((4, 2), 0.25)]
    # Each conditioned row contributes 1 / (0 + 1e-5); the unconditioned row counts 0; the sum is over B = 4.
    assert conditional_diversity_loss(same, same, z, z_alt, given).item() == pytest.approx(3e5 / 4, rel=1e-3)
    # A change in a given modality's output is not diversity: it is replaced by the condition anyway.
    moved_given = [same[0] + given[:, :1].float(), same[1]]
    assert conditional_diversity_loss(same, moved_given, z, z_alt, given).item() == pytest.approx(3e5 / 4, rel=1e-3)
    # A change in a modality row 1 was not given takes row 1's share away (row 2 is unconditioned).
    moved_free = [same[0] + (~given[:, :1]).float(), same[1]]
    assert conditional_diversity_loss(same, moved_free, z, z_alt, given).item() == pytest.approx(2e5 / 4, rel=1e-3)
    varied = [x + torch.rand_like(x) for x in same]
    assert conditional_diversity_loss(same, varied, z, z_alt, given).item() < 10.0
    # Modality 1 left out of the term: row 0 and row 3 (free: modality 1 only) have nothing to vary and count 0;
    # row 1 (free: modality 0) still does.
    only_first = conditional_diversity_loss(same, same, z, z_alt, given, varied=[True, False])
    assert only_first.item() == pytest.approx(1e5 / 4, rel=1e-3)


def test_conditional_energy_loss_values_by_hand():
    from fastmmgan.losses import conditional_energy_loss

    real = [torch.zeros(3, 4), torch.zeros(3, 2)]
    generated = [torch.full((3, 4), 2.0), torch.full((3, 2), 0.5)]
    alternative = [torch.full((3, 4), 1.0), torch.full((3, 2), 2.0)]
    both = torch.ones(3, 2, dtype=torch.bool)
    rows = torch.ones(3)
    # Modality 0: |X - y| = 2, |X' - y| = 1, |X - X'| = 1: 1.5 - 0.5 = 1. Modality 1: 0.5, 2, 1.5: 1.25 - 0.75 = 0.5.
    assert conditional_energy_loss(generated, alternative, real, both, rows).item() == pytest.approx(1.5, rel=1e-5)
    second = torch.tensor([[False, True]] * 3)
    assert conditional_energy_loss(generated, alternative, real, second, rows).item() == pytest.approx(0.5, rel=1e-5)
    # spread weighs the second half only: (1.5 - 1.2 * 0.5) + (1.25 - 1.2 * 0.75) = 0.9 + 0.35.
    weighted = conditional_energy_loss(generated, alternative, real, both, rows, spread=1.2)
    assert weighted.item() == pytest.approx(1.25, rel=1e-5)
    # A row dropped, or left without a target modality, counts 0 inside the mean over all B rows.
    only_first_row = torch.tensor([1.0, 0.0, 0.0])
    no_target = both.clone()
    no_target[1:] = False
    for target, weights in ((both, only_first_row), (no_target, rows)):
        value = conditional_energy_loss(generated, alternative, real, target, weights).item()
        assert value == pytest.approx(1.5 / 3, rel=1e-5)
    # Each modality pulls as hard whatever its scale: its share of the gradient is scale-free.
    small = [x.clone().requires_grad_() for x in (generated[0], generated[1] * 0.01)]
    conditional_energy_loss(small, [alternative[0], alternative[1] * 0.01], [real[0], real[1] * 0.01], both,
                            rows).backward()
    large = [x.clone().requires_grad_() for x in generated]
    conditional_energy_loss(large, alternative, real, both, rows).backward()
    assert torch.allclose(small[1].grad, large[1].grad, rtol=1e-4)


def test_conditional_energy_loss_is_smallest_at_the_data_spread_not_at_collapse():
    """Real samples of one condition are -1 or +1; the generator draws -s or +s. The expected score is
    0.5 |s - 1| + 0.5: collapse (s = 0) and over-spread (s = 2) both lose to the data's own spread (s = 1),
    which a pure mode-seeking term (largest |X - X'| wins) would not see."""
    from fastmmgan.losses import conditional_energy_loss

    signs = torch.tensor([[a, b, c] for a in (-1.0, 1.0) for b in (-1.0, 1.0) for c in (-1.0, 1.0)])
    target = torch.ones(8, 1, dtype=torch.bool)

    def score(s: float) -> float:
        return conditional_energy_loss([s * signs[:, :1]], [s * signs[:, 1:2]], [signs[:, 2:]], target,
                                       torch.ones(8)).item()

    spreads = [0.0, 0.5, 1.0, 1.5, 2.0]
    scores = [score(s) for s in spreads]
    assert scores == pytest.approx([0.5 * abs(s - 1) + 0.5 for s in spreads], abs=1e-5)
    s = torch.tensor(0.2, requires_grad=True)
    conditional_energy_loss([s * signs[:, :1]], [s * signs[:, 1:2]], [signs[:, 2:]], target, torch.ones(8)).backward()
    assert s.grad.item() == pytest.approx(-0.5, abs=1e-4)


@pytest.mark.parametrize("spread", [1.0, 1.2])
def test_energy_spread_moves_the_minimum_to_the_stated_gaussian_scale(spread):
    """Real samples N(0, 1), generated ones N(0, s^2) (one dimension, fixed draws): the score's minimum over s
    lies where s^2 / (s^2 + 1) = spread^2 / 2, as the docstring states: s = 1 for the proper score, 1.6
    at spread 1.2."""
    from fastmmgan.losses import conditional_energy_loss

    g = torch.Generator().manual_seed(0)
    y, z, z_alt = torch.randn(3, 200_000, 1, generator=g)
    target = torch.ones(len(y), 1, dtype=torch.bool)
    scales = torch.arange(0.5, 2.51, 0.05)
    scores = [conditional_energy_loss([s * z], [s * z_alt], [y], target, torch.ones(len(y)), spread).item()
              for s in scales.tolist()]
    best = scales[int(torch.tensor(scores).argmin())].item()
    expected = (spread**2 / 2 / (1 - spread**2 / 2)) ** 0.5
    assert best == pytest.approx(expected, abs=0.08)


def test_energy_spread_per_modality_is_each_modality_scored_with_its_own():
    """A list of spread weights scores each modality with its own: the sum of the one-modality scores."""
    from fastmmgan.losses import conditional_energy_loss

    g = torch.Generator().manual_seed(2)
    dims = (3, 5)
    x, x_alt, y = ([torch.rand(6, d, generator=g) for d in dims] for _ in range(3))
    target, rows = torch.rand(6, 2, generator=g) < 0.7, torch.ones(6)
    both = conditional_energy_loss(x, x_alt, y, target, rows, [1.3, 1.0])
    alone = [conditional_energy_loss([x[m]], [x_alt[m]], [y[m]], target[:, m : m + 1], rows, w)
             for m, w in enumerate((1.3, 1.0))]
    assert both.item() == pytest.approx(sum(a.item() for a in alone), rel=1e-6)
    assert abs(both.item() - conditional_energy_loss(x, x_alt, y, target, rows, 1.3).item()) > 1e-3


def test_one_sided_energy_score_keeps_the_value_and_the_expected_gradient():
    """With the second draw taken as constant (``one_sided``), the score's value is unchanged and its gradient,
    though it flows through the first draw only, is the whole score's in expectation: generated N(0, s^2),
    real N(0, 1), d score / d s over 200k fixed draws, at a collapsed and an over-spread scale."""
    from fastmmgan.losses import conditional_energy_loss

    g = torch.Generator().manual_seed(1)
    y, z, z_alt = torch.randn(3, 200_000, 1, generator=g)
    target = torch.ones(len(y), 1, dtype=torch.bool)
    for scale in (0.3, 3.0):
        grads, values = [], []
        for one_sided in (False, True):
            s = torch.tensor(scale, requires_grad=True)
            score = conditional_energy_loss([s * z], [s * z_alt], [y], target, torch.ones(len(y)), 1.2,
                                            one_sided=one_sided)
            score.backward()
            grads.append(s.grad.item())
            values.append(score.item())
        assert values[1] == pytest.approx(values[0], rel=1e-6)
        assert abs(grads[0]) > 0.05
        assert grads[1] == pytest.approx(grads[0], rel=0.03)
    # The second draw gets no gradient at all.
    x, x_alt = torch.ones(4, 3, requires_grad=True), torch.zeros(4, 3, requires_grad=True)
    conditional_energy_loss([x], [x_alt], [torch.full((4, 3), 2.0)], torch.ones(4, 1, dtype=torch.bool),
                            torch.ones(4), one_sided=True).backward()
    assert x_alt.grad is None and x.grad.abs().sum() > 0


def test_mmd_sees_a_missing_cluster_and_pulls_towards_it():
    """Real rows from two clusters; fakes from one of them score worse than fakes from both, and the
    gradient moves the fakes towards the missing cluster. Weights pick the rows that count."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.1] * 6, [0.9] * 6])
    real = [centres[torch.arange(64) % 2] + 0.02 * torch.randn(64, 6, generator=g), torch.rand(64, 3, generator=g)]
    both = [real[0][torch.randperm(64, generator=g)], real[1]]
    one = [centres[torch.zeros(64, dtype=torch.long)] + 0.02 * torch.randn(64, 6, generator=g), real[1]]
    ones = torch.ones(64)
    assert mmd_loss(one, real, ones) > 5 * mmd_loss(both, real, ones)
    moved = one[0].clone().requires_grad_(True)
    mmd_loss([moved, real[1]], real, ones).backward()
    assert (moved.grad < 0).float().mean() > 0.9
    assert mmd_loss(one, real, torch.zeros(64)).item() == 0.0
    mixed_weight = (torch.arange(64) < 32).float()
    assert mmd_loss([torch.cat([both[0][:32], one[0][32:]]), real[1]], real, mixed_weight) == pytest.approx(
        mmd_loss([both[0][:32], real[1][:32]], [r for r in real], torch.ones(32)).item(), rel=1e-5)


def test_mmd_distances_stay_fp32_under_bf16_autocast():
    """The compiled step runs the losses under bf16 autocast on CUDA; the MMD's distance GEMM must not
    follow it (bf16 rounding of x.y would undo the centring that keeps |x|^2 + |y|^2 - 2x.y accurate)."""
    from fastmmgan.losses import _modality_distances

    gen = torch.Generator().manual_seed(0)
    a = [torch.rand(16, 30, generator=gen), torch.rand(16, 7, generator=gen)]
    b = [torch.rand(12, 30, generator=gen), torch.rand(12, 7, generator=gen)]
    exact = sum(((x[:, None] - y[None]) ** 2).mean(-1) for x, y in zip(a, b)) / 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _modality_distances(a, b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5)
