"""One GAN training step: a discriminator update, then a generator update, then the EMA update.

The random draws of a step (batch, masks, noise) are made by the caller and passed in as a
:class:`StepInputs`, so every implementation of the step sees the same random stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import discriminator_loss, generator_loss, gradient_penalty
from .models import Discriminator, Generator, compose_fake


@dataclass
class StepInputs:
    """One step's tensors: real features per modality [B, dim_m], presence mask [B, M] (bool),
    given mask [B, M] (bool, modalities the generator is conditioned on), mismatched real samples
    (one modality taken from another row, see :func:`fastmmgan.trainer.draw_step_inputs`) with their
    weights [B] (0 where a row has too few modalities to mismatch), noise z [B, z_dim],
    alpha [B, 1] (WGAN-GP interpolation) and the EMA decay for this step (0-d float32)."""

    real: list[torch.Tensor]
    mask: torch.Tensor
    given: torch.Tensor
    mismatched: list[torch.Tensor]
    mismatch_weight: torch.Tensor
    z: torch.Tensor
    alpha: torch.Tensor
    ema_beta: torch.Tensor

    def to(self, device: torch.device) -> StepInputs:
        return StepInputs(
            [x.to(device, non_blocking=True) for x in self.real],
            self.mask.to(device, non_blocking=True),
            self.given.to(device, non_blocking=True),
            [x.to(device, non_blocking=True) for x in self.mismatched],
            self.mismatch_weight.to(device, non_blocking=True),
            self.z.to(device, non_blocking=True),
            self.alpha.to(device, non_blocking=True),
            self.ema_beta.to(device, non_blocking=True),
        )


class ReferenceStep:
    """The plain eager step: autograd + torch.optim.Adam, the behaviour every faster step is checked against.

    The generator runs once; the discriminator judges real, fake and mismatched real samples in one batch
    (calling mismatched ones fake teaches cross-modal consistency: GAN-CLS's matching-aware discriminator); the generator update
    takes its gradient through the just-updated discriminator without accumulating D weight gradients.
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        ema: Generator,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        loss: str = "ns",
        gp_weight: float = 10.0,
    ) -> None:
        self.G, self.D, self.ema = generator, discriminator, ema
        self.opt_g, self.opt_d = opt_g, opt_d
        self.loss, self.gp_weight = loss, gp_weight

    def __call__(self, batch: StepInputs) -> dict[str, torch.Tensor]:
        gen = self.G(batch.z, batch.real, batch.given)
        fake = compose_fake(batch.real, gen, batch.given)

        d_in = [torch.cat([r, f.detach(), w]) for r, f, w in zip(batch.real, fake, batch.mismatched)]
        logits = self.D(d_in, batch.mask.repeat(3, 1))
        real_logits, fake_logits, mismatch_logits = logits.chunk(3)
        fake_weight = torch.cat([torch.ones_like(batch.mismatch_weight), batch.mismatch_weight])
        loss_d = discriminator_loss(self.loss, real_logits, torch.cat([fake_logits, mismatch_logits]), fake_weight)
        if self.loss == "wgan-gp":
            gp = gradient_penalty(lambda xs: self.D(xs, batch.mask), batch.real, fake, batch.alpha)
            loss_d = loss_d + self.gp_weight * gp
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        self.D.requires_grad_(False)
        loss_g = generator_loss(self.loss, self.D(fake, batch.mask))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.D.requires_grad_(True)
        self.opt_g.step()

        with torch.no_grad():
            ema_params = list(self.ema.parameters())
            torch._foreach_lerp_(ema_params, list(self.G.parameters()), 1.0 - batch.ema_beta.to(ema_params[0].dtype))
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}


def build_step(
    generator: Generator,
    discriminator: Discriminator,
    ema: Generator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    cfg,
    device: torch.device,
) -> ReferenceStep:
    """The step a run uses."""
    return ReferenceStep(generator, discriminator, ema, opt_g, opt_d, cfg.loss, cfg.gp_weight)
