"""A run's trainable state built from its config: G, D, the EMA generator and their fused Adams."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .config import TrainConfig
from .data import MultimodalDataset
from .models import Discriminator, Generator, calibrate_fusions_


@dataclass
class Models:
    """The networks and optimizers of one run (``ema`` is G's exponential moving average, no gradients)."""

    G: Generator
    D: Discriminator
    ema: Generator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam

    def copy(self, cfg: TrainConfig) -> Models:
        """Deep copies of the networks with fresh optimizers (call before the first step)."""
        G, D, ema = copy.deepcopy(self.G), copy.deepcopy(self.D), copy.deepcopy(self.ema)
        return Models(G, D, ema, make_optimizer(G, cfg.lr, cfg), make_optimizer(D, cfg.d_lr or cfg.lr, cfg))


def make_optimizer(model: torch.nn.Module, lr: float, cfg: TrainConfig) -> torch.optim.Adam:
    """``torch.optim.Adam`` with ``cfg.betas``, fused: the compiled step reads its hyper-parameters and state
    and applies the same update inside its graph (:mod:`fastmmgan.adam`)."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=cfg.betas, fused=True)


def build_models(train_ds: MultimodalDataset, cfg: TrainConfig, device: torch.device | str = "cpu") -> Models:
    """G, D, EMA and fused Adams initialised from ``cfg.seed``, with the fusions calibrated on up to 512
    training samples. The trainer builds every run this way, so a test or benchmark that calls it starts
    from the weights a run of the same config starts from."""
    torch.manual_seed(cfg.seed)
    G = Generator.from_config(train_ds.specs, cfg).to(device)
    D = Discriminator.from_config(train_ds.specs, cfg).to(device)
    calibrate_fusions_(G, D, train_ds.features, cfg.seed)
    ema = copy.deepcopy(G).eval().requires_grad_(False)
    return Models(G, D, ema, make_optimizer(G, cfg.lr, cfg), make_optimizer(D, cfg.d_lr or cfg.lr, cfg))
