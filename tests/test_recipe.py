"""The training recipe the README names, one test per piece, each failing when that piece is switched off.

WGAN-GP's interpolation, the matching-aware mismatched rows, the minibatch-stddev feature, the fusion
calibration, the hidden-subset masking policy, and the EMA generator used for sampling.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from benchmarks.train_configs import random_dataset
from fastmmgan.build import build_models
from fastmmgan.config import TrainConfig
from fastmmgan.data import digits_specs
from fastmmgan.losses import gradient_penalty
from fastmmgan.models import Discriminator, Generator, calibrate_fusions_
from fastmmgan.sampler import generator_from_state
from fastmmgan.step import Recipe, discriminator_objective
from fastmmgan.step_inputs import UNCONDITIONAL_SHARE, draw_step_inputs

SPECS = digits_specs()
CFG = TrainConfig(batch_size=16, z_dim=8, g_width=32, d_width=32, g_depth=1, d_depth=1, device="cpu")


def test_gradient_penalty_is_taken_at_the_interpolates():
    """A critic whose slope differs from point to point (sum of x^3): the penalty must be the one at
    alpha*real + (1-alpha)*fake, not at the real or the fake rows."""
    gen = torch.Generator().manual_seed(0)
    real = [torch.rand(6, 5, generator=gen), torch.rand(6, 3, generator=gen)]
    fake = [torch.rand(6, 5, generator=gen), torch.rand(6, 3, generator=gen)]
    alpha = torch.rand(6, 1, generator=gen)

    def critic(xs):
        return sum(x.pow(3).sum(dim=1, keepdim=True) for x in xs)

    interp = [alpha * r + (1 - alpha) * f for r, f in zip(real, fake)]
    norm = torch.cat([3 * x.square() for x in interp], dim=1).norm(dim=1)
    expected = (norm - 1).square().mean()
    torch.testing.assert_close(gradient_penalty(critic, real, fake, alpha), expected)
    at_real = (torch.cat([3 * x.square() for x in real], dim=1).norm(dim=1) - 1).square().mean()
    assert not torch.allclose(expected, at_real)


def test_mismatched_rows_count_as_fake_where_their_weight_allows():
    """GAN-CLS's matching-aware discriminator: the loss sees the mismatched rows (changing them changes it)
    exactly where their weight is 1."""
    data = random_dataset(SPECS, 64, seed=1)
    models = build_models(data, CFG)
    batch = draw_step_inputs(data, 0, CFG)
    fake = [torch.rand_like(x) for x in batch.real]
    recipe = Recipe.from_config(CFG)

    def loss_with(mismatched, weight):
        return discriminator_objective(models.D, replace(batch, mismatched=mismatched, mismatch_weight=weight), fake, recipe)

    other = [torch.rand_like(x) for x in batch.mismatched]
    ones, zeros = torch.ones(16), torch.zeros(16)
    assert not torch.allclose(loss_with(batch.mismatched, ones), loss_with(other, ones))
    torch.testing.assert_close(loss_with(batch.mismatched, zeros), loss_with(other, zeros))


def test_minibatch_stddev_lets_the_discriminator_see_the_group():
    """With the feature, a row's logit depends on the other rows of its group of four (and not on other
    groups); without it (``mbstd_group=0``) on its own row only."""
    torch.manual_seed(0)
    xs = [torch.rand(8, s.dim) for s in SPECS]
    mask = torch.ones(8, 3, dtype=torch.bool)
    changed = [x.clone() for x in xs]
    changed[0][1] = torch.rand(SPECS[0].dim)  # row 1, in the first group of four
    for group, sees_group in ((4, True), (0, False)):
        disc = Discriminator(SPECS, width=32, depth=1, mbstd_group=group)
        a, b = disc(xs, mask), disc(changed, mask)
        assert torch.equal(a[4:], b[4:])  # the second group never moves
        assert torch.equal(a[[0, 2, 3]], b[[0, 2, 3]]) != sees_group


def test_fusion_calibration_gives_each_modality_unit_scale():
    """Each projection of both fusions is rescaled to unit std on a data sample, so a 25-word caption
    weighs as much as a 576-bin spectrogram (whatever each one's scale was before)."""
    data = random_dataset(SPECS, 256, seed=3)
    torch.manual_seed(0)
    gen, disc = Generator(SPECS, z_dim=8, width=32, depth=1), Discriminator(SPECS, width=32, depth=1)
    scales = [proj(x).std(dim=0).mean().item() for proj, x in zip(disc.fusion.proj, data.features)]
    assert all(abs(scale - 1.0) > 0.3 for scale in scales)  # uncalibrated, not unit scale
    calibrate_fusions_(gen, disc, data.features, seed=0)
    for fusion, inputs in ((disc.fusion, data.features), (gen.fusion, [torch.randn(256, 8), *data.features])):
        for proj, x in zip(fusion.proj, inputs):
            assert abs(proj(x).std(dim=0).mean().item() - 1.0) < 0.15


def test_hidden_subsets_are_proper_and_a_quarter_unconditional():
    """Over many steps: the generator is never given every modality of a row, about a quarter of the rows
    get none, every other proper subset occurs, and rows come ordered by their subset."""
    data = random_dataset(SPECS, 512, seed=4)
    cfg = replace(CFG, batch_size=64)
    patterns, none = set(), 0
    for step in range(40):
        batch = draw_step_inputs(data, step, cfg)
        assert not (batch.given & batch.mask).eq(batch.mask).all(dim=1)[batch.mask.sum(dim=1) > 0].any()
        codes = (batch.given.long() << torch.arange(3)).sum(dim=1)
        assert torch.equal(codes[batch.given.any(dim=1)].sort().values, codes[batch.given.any(dim=1)])
        none += int((~batch.given.any(dim=1)).sum())
        patterns |= set(codes.tolist())
    assert patterns == {0, 1, 2, 3, 4, 5, 6}  # every subset but all three
    share = none / (40 * 64)
    assert UNCONDITIONAL_SHARE <= share < UNCONDITIONAL_SHARE + 0.1  # a quarter, plus rows whose subset was absent


def test_samples_come_from_the_ema_generator():
    """The sampler loads the EMA weights, not the raw generator's."""
    data = random_dataset(SPECS, 64, seed=5)
    models = build_models(data, CFG)
    with torch.no_grad():
        for p in models.ema.parameters():
            p.add_(0.1)
    state = {"config": CFG.to_dict(), "specs": [s.to_dict() for s in SPECS],
             "generator": models.G.state_dict(), "ema": models.ema.state_dict()}
    loaded = generator_from_state(state)
    z, xs, given = torch.randn(4, 8), [torch.rand(4, s.dim) for s in SPECS], torch.zeros(4, 3, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(loaded(z, xs, given)[0], models.ema(z, xs, given)[0])
        assert not torch.equal(loaded(z, xs, given)[0], models.G(z, xs, given)[0])


def test_condition_noise_perturbs_only_what_the_generator_reads():
    """``condition_noise`` adds Gaussian noise of that many times each modality's feature std (per modality: the
    digits' spectrogram spreads half as much as their images) to the generator's copy of the features, and every
    other draw of the step stays what it is without it (so runs without it reproduce)."""
    uniform = random_dataset(SPECS, 128, seed=5, present=0.7)
    scales = (1.0, 0.5, 0.1)  # features that spread as differently as the digits' image, caption and spectrogram
    features = tuple(s * x * present[:, None] for s, x, present in zip(scales, uniform.features, uniform.mask.T, strict=True))
    data = replace(uniform, features=features)  # an absent modality's features are zeros, as a user's file gives them
    plain = draw_step_inputs(data, 3, replace(CFG, batch_size=64, condition_noise=0.0))
    noisy = draw_step_inputs(data, 3, replace(CFG, batch_size=64, condition_noise=0.2))
    assert all(a is b for a, b in zip(plain.conditions, plain.real, strict=True))
    for field in ("real", "mismatched"):
        for a, b in zip(getattr(plain, field), getattr(noisy, field), strict=True):
            assert torch.equal(a, b)
    for field in ("mask", "given", "mismatch_weight", "z", "z_alt", "alpha", "ema_beta"):
        assert torch.equal(getattr(plain, field), getattr(noisy, field))
    for c, r, present in zip(noisy.conditions, noisy.real, noisy.mask.T, strict=True):
        offsets = c - r
        assert abs(offsets.mean().item()) < 0.01 * r.std().item()
        assert offsets.std().item() == pytest.approx(0.2 * r[present].std().item(), rel=0.05)


def test_one_modality_draws_no_condition_noise():
    """With one modality no row is ever given it, so the step draws no condition noise: the generator's copy is
    the real features themselves (no wasted draw or copy per step)."""
    data = random_dataset(SPECS[:1], 64, seed=5)
    inputs = draw_step_inputs(data, 3, replace(CFG, batch_size=32, condition_noise=0.3))
    assert not inputs.given.any()
    assert all(c is r for c, r in zip(inputs.conditions, inputs.real, strict=True))


def test_mismatched_rows_take_one_modality_from_another_row():
    """The matching-aware discriminator's fake pairs are really mismatched: every row with weight 1 differs from
    its own real sample in exactly one modality, present in it, whose value is another row's real value of the
    batch; the rest of the row is its own. Rows with weight 0 are not judged as mismatched."""
    ds = random_dataset(SPECS, 64)
    judged = 0
    for step in range(4):
        batch = draw_step_inputs(ds, step, CFG)
        for i in range(len(batch.z)):
            changed = [m for m, (x, r) in enumerate(zip(batch.mismatched, batch.real, strict=True))
                       if not torch.equal(x[i], r[i])]
            if batch.mismatch_weight[i] == 0:
                continue
            judged += 1
            assert len(changed) == 1, (step, i, changed)
            m = changed[0]
            assert batch.mask[i, m]
            donors = [j for j in range(len(batch.z)) if j != i and torch.equal(batch.real[m][j], batch.mismatched[m][i])]
            assert donors, (step, i, m)
    assert judged >= 16  # most rows of a three-modality batch are mismatched
