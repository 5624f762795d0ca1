"""GAN losses on discriminator logits [B, 1]; every loss returns a scalar (fp32).

- ``ns`` non-saturating (the default): D: softplus(-real) + softplus(fake); G: softplus(-fake).
- ``minimax``: D as ``ns``; G: -softplus(fake) (the original saturating objective).
- ``lsgan`` least-squares: D: (real - 1)^2 + fake^2, halved; G: (fake - 1)^2, halved.
- ``hinge``: D: relu(1 - real) + relu(1 + fake); G: -fake.
- ``wgan-gp``: D: fake - real (+ gradient penalty, see :func:`gradient_penalty`); G: -fake.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import FastMMGANError

LOSSES = ("ns", "minimax", "lsgan", "hinge", "wgan-gp")

_D_REAL: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ns": lambda r: F.softplus(-r),
    "minimax": lambda r: F.softplus(-r),
    "lsgan": lambda r: 0.5 * (r - 1).square(),
    "hinge": lambda r: F.relu(1 - r),
    "wgan-gp": lambda r: -r,
}
_D_FAKE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ns": lambda f: F.softplus(f),
    "minimax": lambda f: F.softplus(f),
    "lsgan": lambda f: 0.5 * f.square(),
    "hinge": lambda f: F.relu(1 + f),
    "wgan-gp": lambda f: f,
}
_G_LOSS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ns": lambda f: F.softplus(-f).mean(),
    "minimax": lambda f: -F.softplus(f).mean(),
    "lsgan": lambda f: 0.5 * (f - 1).square().mean(),
    "hinge": lambda f: -f.mean(),
    "wgan-gp": lambda f: -f.mean(),
}


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise FastMMGANError(f"unknown loss {name!r} (expected one of {', '.join(LOSSES)})")
    return name


def discriminator_loss(
    name: str, real_logits: torch.Tensor, fake_logits: torch.Tensor, fake_weight: torch.Tensor | None = None,
    fake_rows: int | None = None,
) -> torch.Tensor:
    """The discriminator's loss for real logits [B,1] and fake logits [F,1]; ``fake_weight`` [F] weighs
    each fake term inside the mean (0 drops a row; the mean stays over all F rows, so data-parallel
    processes average to one process's value). ``fake_rows`` (default F) is the mean's denominator, for
    callers that leave out rows whose weight would be 0."""
    check_loss(name)
    real_term = _D_REAL[name](real_logits.float()).mean()
    fake_terms = _D_FAKE[name](fake_logits.float()).squeeze(-1)
    if fake_weight is not None:
        fake_terms = fake_terms * fake_weight
    return real_term + fake_terms.sum() / (fake_rows or fake_terms.shape[0])


def generator_loss(name: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's loss for the discriminator's logits on its samples."""
    return _G_LOSS[check_loss(name)](fake_logits.float())


def squared_input_gradient_norms(
    critic: Callable[[list[torch.Tensor]], torch.Tensor], xs: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Per row, ||d critic(xs).sum() / d xs||^2 over all inputs (modalities) together: [B].

    The gradient is ``torch.autograd.grad(create_graph=True)`` of the critic at fresh leaves holding xs'
    values, so the result is differentiable w.r.t. the critic's parameters (through the fused ops' double
    backward) in the eager step and inside the compiled one, which traces it into its one graph.
    """
    with torch.enable_grad():
        inputs = [x.detach().requires_grad_(True) for x in xs]
        grads = torch.autograd.grad(critic(inputs).float().sum(), inputs, create_graph=True)
    return sum(g.float().square().sum(dim=1) for g in grads)


def gradient_penalty(
    critic: Callable[[list[torch.Tensor]], torch.Tensor],
    real: Sequence[torch.Tensor],
    fake: Sequence[torch.Tensor],
    alpha: torch.Tensor,
) -> torch.Tensor:
    """WGAN-GP: mean of (||grad critic(interp)|| - 1)^2 over interpolates ``alpha*real + (1-alpha)*fake``.

    alpha [B, 1] uniform in [0, 1], drawn by the caller so the random stream stays outside compiled code.
    The gradient norm is taken over all modalities' features together.
    """
    interp = [alpha * r + (1 - alpha) * f.detach() for r, f in zip(real, fake)]
    norm = torch.sqrt(squared_input_gradient_norms(critic, interp) + 1e-12)
    return (norm - 1).square().mean()


def r1_penalty(critic: Callable[[list[torch.Tensor]], torch.Tensor], real: Sequence[torch.Tensor]) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean over rows of ||grad critic(real)||^2, all modalities together.

    Penalising the discriminator's slope on real data damps the oscillation that makes a GAN's samples
    hop between modes; the caller weighs it by gamma / 2.
    """
    return squared_input_gradient_norms(critic, [r.detach() for r in real]).mean()


def diversity_loss(generated: Sequence[torch.Tensor], z: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """Mode-seeking term (MSGAN, Mao et al. 2019) on rows generated from noise alone.

    Rows are taken in pairs (0,1), (2,3), ...; for pairs where both rows have no condition, the ratio of
    the mean absolute output difference to the mean absolute noise difference should be large, so each
    such pair contributes 1 / (ratio + 1e-5); the loss is their sum over the number of pairs B/2 (a mean
    over all pairs, the others counting 0, so data-parallel processes average to one process's value).
    Without it the generator, which mostly learns deterministic conditional maps, learns to ignore z.
    generated: M tensors [B, dim_m]; z [B, z_dim]; given [B, M] bool (an odd last row is left out).
    """
    n = len(z) // 2 * 2
    out = torch.cat([g[:n].float() for g in generated], dim=1)
    free = ~given[:n].any(dim=1)
    pair = (free[0::2] & free[1::2]).float()
    d_out = (out[0::2] - out[1::2]).abs().mean(dim=1)
    d_z = (z[:n][0::2] - z[:n][1::2]).float().abs().mean(dim=1)
    return (pair / (d_out / d_z + 1e-5)).sum() / max(1, n // 2)


def conditional_diversity_loss(
    generated: Sequence[torch.Tensor], alternative: Sequence[torch.Tensor], z: torch.Tensor, z_alt: torch.Tensor,
    given: torch.Tensor, varied: Sequence[bool] | None = None,
) -> torch.Tensor:
    """Mode-seeking term on conditioned rows: the same conditions generated from two noise draws should differ
    in proportion to the noise (MSGAN's conditional form, Mao et al. 2019).

    For each row given at least one modality, the mean absolute difference between ``generated`` (noise z) and
    ``alternative`` (noise z_alt) over the modalities it was not given, over the mean absolute noise
    difference, is the ratio; the row contributes 1 / (ratio + 1e-5); the loss is their sum over B (a mean
    over all rows, unconditioned ones counting 0). Without it a conditional generator learns one output per
    condition. generated, alternative: M tensors [B, dim_m]; z, z_alt [B, z_dim]; given [B, M] bool;
    ``varied`` (M bools, default all) says which output modalities the term asks to vary.
    """
    free = (~given).float()
    if varied is not None:
        free = free * torch.tensor([float(v) for v in varied], device=free.device)
    d_out = torch.stack([(a.float() - b.float()).abs().mean(dim=1) for a, b in zip(generated, alternative, strict=True)], 1)
    d_out = (d_out * free).sum(dim=1) / free.sum(dim=1).clamp_min(1.0)
    d_z = (z - z_alt).float().abs().mean(dim=1)
    # Rows given nothing, or given every modality the term looks at, have nothing to vary: they count 0.
    conditioned = (given.any(dim=1) & (free.sum(dim=1) > 0)).float()
    return (conditioned / (d_out / d_z + 1e-5)).sum() / len(z)


def _rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B] root mean squared difference between the rows of ``a`` and ``b`` [B, dim] (fp32). The 1e-12 keeps
    the root's gradient finite where two rows are equal."""
    return ((a.float() - b.float()).square().mean(dim=1) + 1e-12).sqrt()


def conditional_energy_loss(
    generated: Sequence[torch.Tensor], alternative: Sequence[torch.Tensor], real: Sequence[torch.Tensor],
    target: torch.Tensor, rows: torch.Tensor, spread: float | Sequence[float] = 1.0, one_sided: bool = False,
) -> torch.Tensor:
    """The energy score (Gneiting & Raftery 2007) of the generator's conditional distribution at each row's real
    sample: with X, X' two samples for the row's conditions (two noise draws) and y its real sample,
    ``(|X - y| + |X' - y|) / 2 - |X - X'| / 2``, summed over the modalities ``target`` [B, M] (bool: generated,
    and with a real value) marks.

    The score is strictly proper: its expectation over the data is smallest exactly when, for every condition,
    each modality's samples follow its real conditional distribution. So it rewards spread only up to the
    data's own (the second part pushes two samples apart, the first pulls both to real samples of the same
    condition), unlike mode seeking, which rewards any difference. One real sample per condition is enough (no
    labels, no pairs of real samples of one class). |.| is the root mean squared difference, one score per
    modality: it is 1-homogeneous, so each modality's pull has the same size whatever the scale of its
    features (a joint distance let the captions' large differences drown the spectrogram's small ones);
    whether the modalities of one sample agree is the discriminator's job. Rows are weighted by ``rows`` [B]
    (float, 0 drops one) and summed over B (a mean over all rows, so data-parallel processes average to one
    process's value). generated, alternative, real: M tensors [B, dim_m]. 0-d fp32.

    ``spread`` weighs the second half, ``spread * |X - X'| / 2`` (1: the proper score; one value, or one per
    modality). Above 1 the minimum
    lies at samples more varied than the data's (for a Gaussian, a scale s with s^2 / (s^2 + sigma^2) =
    spread^2 / 2: 1.6 sigma at 1.2), to offset a pull towards one output per condition from the rest of the
    objective; at sqrt(2) and above the score falls without bound as samples move apart.

    ``one_sided``: ``alternative`` is taken as constant (a second draw made without autograd, which saves its
    backward pass) and the gradient through ``generated`` is doubled, while the value stays the score's. X and
    X' are exchangeable (two noise draws for one condition), so the gradient through X' equals the gradient
    through X in expectation: twice the latter is an unbiased estimate of the whole score's gradient.
    """
    t = target.float()
    score = torch.zeros_like(t[:, 0])
    spreads = [float(spread)] * len(generated) if isinstance(spread, (int, float)) else list(spread)
    for m, (x, x_alt, y, weight) in enumerate(zip(generated, alternative, real, spreads, strict=True)):
        if one_sided:
            x_alt = x_alt.detach()
        to_x = 0.5 * _rms_distance(x, y) - 0.5 * weight * _rms_distance(x, x_alt)
        per_row = to_x + 0.5 * _rms_distance(x_alt, y)
        if one_sided:
            per_row = per_row + (to_x - to_x.detach())  # the value is unchanged; X's gradient counts twice
        score = score + t[:, m] * per_row
    return (rows.float() * score).sum() / len(rows)


def reconstruction_loss(
    generated: Sequence[torch.Tensor], real: Sequence[torch.Tensor], target: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """The cVAE-GAN reconstruction term: L1 between generated and real features where ``target`` [B, M] (bool)
    says a modality was generated and has a real value to match.

    Per row, the mean absolute difference of each target modality (a mean over its features, so a 576-bin
    spectrogram weighs as much as a 25-word caption), averaged over the row's target modalities; weighted by
    ``rows`` [B] (float, 0 drops a row) and summed over B (a mean over all rows: data-parallel processes
    average to one process's value). generated, real: M tensors [B, dim_m]. 0-d fp32.
    """
    t = target.float()
    err = torch.stack([(g.float() - r.float()).abs().mean(dim=1) for g, r in zip(generated, real, strict=True)], 1)
    per_row = (err * t).sum(dim=1) / t.sum(dim=1).clamp_min(1.0)
    return (rows.float() * per_row).sum() / len(rows)


def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over the noise dimensions, weighted by ``rows`` [B]
    and summed over B (a mean over all rows). mu, logvar [B, z_dim]. 0-d fp32."""
    per_row = 0.5 * (mu.float().square() + logvar.float().exp() - 1.0 - logvar.float()).sum(dim=1)
    return (rows.float() * per_row).sum() / len(rows)


def latent_regression_loss(recovered: torch.Tensor, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Latent regression (BicycleGAN's cLR-GAN, Zhu et al. 2017): the mean absolute difference between the
    noise z [B, z_dim] a row was generated from and the encoder's mean for the generated sample
    (``recovered`` [B, z_dim]), weighted by ``rows`` [B] and summed over B (a mean over all rows). If two
    noise draws made the same sample, no encoder could recover both: the term makes noise matter. 0-d fp32."""
    per_row = (recovered.float() - z.float()).abs().mean(dim=1)
    return (rows.float() * per_row).sum() / len(rows)


MMD_BANDWIDTHS = (0.02, 0.08, 0.32)


def _modality_distances(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """[A, B] mean over modalities of the mean squared feature difference between rows of a and rows of b.

    Taken as |x|^2 + |y|^2 - 2 x.y (one GEMM) after both are centred on b's mean, which leaves the distances
    unchanged and keeps the cancellation of that form small in fp32. The GEMM stays fp32 under autocast:
    in bf16 its rounding (8 bits) would undo the centring."""
    total = None
    for x, y in zip(a, b, strict=True):
        centre = y.detach().float().mean(dim=0)
        x, y = x.float() - centre, y.float() - centre
        with torch.autocast(x.device.type, enabled=False):
            cross = x @ y.T
        d = (x.square().sum(1, keepdim=True) + y.square().sum(1)[None] - 2 * cross).clamp_min(0) / x.shape[1]
        total = d if total is None else total + d
    return total / len(a)


def mmd_loss(fake: Sequence[torch.Tensor], real: Sequence[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """Squared maximum mean discrepancy (Gaussian kernels, Gretton et al. 2012) between weighted fake rows and real rows.

    fake, real: M tensors [B, dim_m]; weight [B] (>= 0) says which fake rows count (the unconditional
    ones), normalised to sum 1 here; 0-d fp32, 0 when no row counts. The distance is the mean over
    modalities of the per-feature mean squared difference, so a 576-bin spectrogram counts as much as a
    25-word caption; kernels at several bandwidths (:data:`MMD_BANDWIDTHS`) are summed. Unlike the
    discriminator's per-sample verdict it compares whole batches, so a missing cluster (a digit never
    generated from noise) raises it, and its gradient pulls samples towards the real rows they lack.
    """
    w = weight.float() / weight.float().sum().clamp_min(1e-12)
    ff, fr, rr = _modality_distances(fake, fake), _modality_distances(fake, real), _modality_distances(real, real)
    total = torch.zeros((), device=w.device)
    for bw in MMD_BANDWIDTHS:
        k_ff, k_fr, k_rr = (torch.exp(-d / bw) for d in (ff, fr, rr))
        total = total + w @ k_ff @ w - 2 * (w @ k_fr).mean() + k_rr.mean()
    return total * (weight.sum() > 0).float()
