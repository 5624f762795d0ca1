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

_D_LOSS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ns": lambda r, f: F.softplus(-r).mean() + F.softplus(f).mean(),
    "minimax": lambda r, f: F.softplus(-r).mean() + F.softplus(f).mean(),
    "lsgan": lambda r, f: 0.5 * ((r - 1).square().mean() + f.square().mean()),
    "hinge": lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(),
    "wgan-gp": lambda r, f: f.mean() - r.mean(),
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


def discriminator_loss(name: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss for real and fake logits."""
    return _D_LOSS[check_loss(name)](real_logits.float(), fake_logits.float())


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
