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
    name: str, real_logits: torch.Tensor, fake_logits: torch.Tensor, fake_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """The discriminator's loss for real logits [B,1] and fake logits [F,1]; ``fake_weight`` [F] weighs
    each fake term inside the mean (0 drops a row; the mean stays over all F rows, so data-parallel
    processes average to one process's value)."""
    check_loss(name)
    real_term = _D_REAL[name](real_logits.float()).mean()
    fake_terms = _D_FAKE[name](fake_logits.float()).squeeze(-1)
    if fake_weight is not None:
        fake_terms = fake_terms * fake_weight
    return real_term + fake_terms.mean()


def generator_loss(name: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's loss for the discriminator's logits on its samples."""
    return _G_LOSS[check_loss(name)](fake_logits.float())


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
    interp = [(alpha * r + (1 - alpha) * f.detach()).requires_grad_(True) for r, f in zip(real, fake)]
    out = critic(interp)
    grads = torch.autograd.grad(out.sum(), interp, create_graph=True)
    norm = torch.sqrt(sum(g.square().sum(dim=1) for g in grads) + 1e-12)
    return (norm - 1).square().mean()


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
