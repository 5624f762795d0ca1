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
    the fake terms (a weighted mean; None = plain mean)."""
    check_loss(name)
    real_term = _D_REAL[name](real_logits.float()).mean()
    fake_terms = _D_FAKE[name](fake_logits.float()).squeeze(-1)
    if fake_weight is None:
        return real_term + fake_terms.mean()
    return real_term + (fake_terms * fake_weight).sum() / fake_weight.sum().clamp_min(1.0)


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
