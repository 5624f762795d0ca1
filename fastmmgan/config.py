"""The training configuration: one dataclass, saved as JSON with every run and checkpoint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import FastMMGANError
from .losses import check_loss


@dataclass
class TrainConfig:
    """Everything that decides a run. Defaults train a useful digits model on 2 CPU cores in a few minutes."""

    dataset: str = "digits"
    data: str | None = None
    steps: int = 12000
    batch_size: int = 64
    lr: float = 2e-4
    d_lr: float | None = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    loss: str = "ns"
    gp_weight: float = 10.0
    diversity_weight: float = 1.2
    z_dim: int = 32
    g_width: int = 256
    g_depth: int = 2
    d_width: int = 256
    d_depth: int = 2
    ema_decay: float = 0.999
    seed: int = 0
    test_fraction: float = 0.2
    device: str = "auto"
    compile: bool = True
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    sample_every: int = 1000
    eval_every: int = 0
    log_every: int = 50
    max_bad_steps: int = 20
    dist_timeout: float = 300.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        check_loss(self.loss)
        positive = ("steps", "batch_size", "z_dim", "g_width", "g_depth", "d_width", "d_depth", "keep_checkpoints",
                    "max_bad_steps", "dist_timeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("ckpt_every", "sample_every", "eval_every", "log_every"):
            if getattr(self, name) < 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.diversity_weight >= 0:
            raise FastMMGANError(f"diversity-weight must be >= 0, got {self.diversity_weight}")
        for name in ("lr", "gp_weight"):
            if not getattr(self, name) > 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.d_lr is not None and not self.d_lr > 0:
            raise FastMMGANError(f"d-lr must be positive, got {self.d_lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise FastMMGANError(f"ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.test_fraction < 1.0:
            raise FastMMGANError(f"test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise FastMMGANError(f"unknown device {self.device!r} (expected auto, cpu or cuda)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def model_hash(self) -> str:
        """Short hash of what decides the generator's architecture and data."""
        keys = ("dataset", "data", "z_dim", "g_width", "g_depth")
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]
