"""The hand-written MLP GAN a user writes from the seeds: the first anchor the training step is timed against."""

from __future__ import annotations

import torch

from fastmmgan.build import Models
from fastmmgan.config import TrainConfig
from fastmmgan.step import StepInputs


class HandwrittenGAN:
    """The MLP GAN a user writes by hand from the seeds: ``nn.Sequential`` of ``nn.Linear`` + ``nn.LeakyReLU``,
    a sigmoid output, BCE-with-logits, ``torch.optim.Adam``, D judging real and fake in two passes and the
    G update backpropagating through D (which also fills D's gradients, as such loops do).

    Same layer widths, initial weights (copied from fastmmgan's models) and Adam settings as the config, so
    the timing compares implementations of one architecture. ``compile_modules`` wraps G and D in
    ``torch.compile`` as a user would try next. Works on one-modality data (the seeds' setting).
    """

    def __init__(self, models: Models, cfg: TrainConfig, compile_modules: bool = False) -> None:
        G, D = models.G, models.D
        if G.conditional or D.mbstd_group or len(D.specs) != 1:
            raise ValueError("the hand-written peer is the seeds' unconditional MLP GAN: one modality, no stddev feature")
        g_layers = [G.fusion.proj[0], *G.body, G.head]
        d_layers = [D.fusion.proj[0], *D.body[0:1], *D.body[1], D.head]
        self.G = self._sequential(g_layers, [G.fusion.bias, *(m.bias for m in g_layers[1:])], torch.nn.Sigmoid())
        self.D = self._sequential(d_layers, [D.fusion.bias, *(m.bias for m in d_layers[1:])], None)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr or cfg.lr, betas=cfg.betas)
        self.run_g = torch.compile(self.G) if compile_modules else self.G
        self.run_d = torch.compile(self.D) if compile_modules else self.D

    @staticmethod
    def _sequential(layers, biases, last: torch.nn.Module | None) -> torch.nn.Sequential:
        modules: list[torch.nn.Module] = []
        for i, (layer, bias) in enumerate(zip(layers, biases, strict=True)):
            linear = torch.nn.Linear(layer.in_features, layer.out_features, device=layer.weight.device)
            with torch.no_grad():
                linear.weight.copy_(layer.weight)
                linear.bias.copy_(bias)
            modules.append(linear)
            if i < len(layers) - 1:
                modules.append(torch.nn.LeakyReLU(0.2))
        if last is not None:
            modules.append(last)
        return torch.nn.Sequential(*modules)

    def __call__(self, batch: StepInputs) -> dict[str, torch.Tensor]:
        real, z = batch.real[0], batch.z
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        fake = self.run_g(z)
        real_logits, fake_logits = self.run_d(real), self.run_d(fake.detach())
        loss_d = bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()
        judged = self.run_d(fake)
        loss_g = bce(judged, torch.ones_like(judged))
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}


def handwritten_peers(models: Models, cfg: TrainConfig) -> dict[str, HandwrittenGAN]:
    """The hand-written loop, eager and with ``torch.compile``, from copies of ``models``; empty where the
    config has no plain-MLP equivalent (more than one modality, the stddev feature)."""
    try:
        return {"hand-written": HandwrittenGAN(models.copy(cfg), cfg),
                "hand-written-compiled": HandwrittenGAN(models.copy(cfg), cfg, compile_modules=True)}
    except ValueError:
        return {}
