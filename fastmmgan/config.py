"""The training configuration: one dataclass, saved as JSON with every run and checkpoint."""

from __future__ import annotations

import hashlib
import json
import types
from dataclasses import asdict, dataclass, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from .errors import FastMMGANError
from .losses import check_loss

ADDED_FIELDS: dict[str, Any] = {"z_components": 0, "r1_weight": 0.0, "mmd_weight": 0.0, "g_widths": None,
                                 "d_widths": None, "mbstd_group": 4}
"""Fields added after the first release, with the values that reproduce runs saved without them."""
PRECISIONS = ("auto", "bf16", "fp32")
COMPILE_BACKENDS = ("inductor", "aot_eager")


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as JSON or the CLI gives it: lists for tuples, ints for floats) fits the type ``hint``."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


@dataclass
class TrainConfig:
    """Everything that decides a run. The defaults train the digits model the README measures (2 CPU
    cores, under 10 minutes)."""

    dataset: str = "digits"
    data: str | None = None
    steps: int = 25000
    batch_size: int = 64
    lr: float = 2e-4
    d_lr: float | None = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    loss: str = "ns"
    gp_weight: float = 10.0
    r1_weight: float = 0.0
    diversity_weight: float = 1.2
    mmd_weight: float = 10.0
    z_dim: int = 64
    z_components: int | None = None
    g_width: int = 512
    g_depth: int = 2
    d_width: int = 256
    d_depth: int = 2
    g_widths: tuple[int, ...] | None = None
    d_widths: tuple[int, ...] | None = None
    mbstd_group: int = 4
    ema_decay: float = 0.999
    seed: int = 0
    test_fraction: float = 0.2
    device: str = "auto"
    compile: bool = True
    compile_backend: str = "inductor"
    precision: str = "auto"
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    sample_every: int = 1000
    eval_every: int = 0
    log_every: int = 50
    max_bad_steps: int = 20
    dist_timeout: float = 300.0

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                hint = hints[f.name]
                expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
                raise FastMMGANError(f"{f.name.replace('_', '-')}: expected {expected}, got {value!r:.60}")
        self.betas = tuple(self.betas)
        check_loss(self.loss)
        for name in ("g_widths", "d_widths"):
            widths = getattr(self, name)
            if widths is not None:
                widths = tuple(int(w) for w in widths)
                if len(widths) < 2 or min(widths) <= 0:
                    raise FastMMGANError(
                        f"{name.replace('_', '-')} needs the fusion's width and at least one layer's, all positive "
                        f"(e.g. 128,256), got {','.join(map(str, widths))}"
                    )
                setattr(self, name, widths)
        if self.mbstd_group < 0:
            raise FastMMGANError(f"mbstd-group must be >= 0 (0: off), got {self.mbstd_group}")
        positive = ("steps", "batch_size", "z_dim", "g_width", "g_depth", "d_width", "d_depth", "keep_checkpoints",
                    "max_bad_steps", "dist_timeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("ckpt_every", "sample_every", "eval_every", "log_every"):
            if getattr(self, name) < 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("diversity_weight", "r1_weight", "mmd_weight"):
            if not getattr(self, name) >= 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "gp_weight"):
            if not getattr(self, name) > 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.z_components is None:
            self.z_components = self.z_dim
        if not 0 <= self.z_components <= self.z_dim:
            raise FastMMGANError(f"z-components must be in [0, z-dim={self.z_dim}], got {self.z_components}")
        if self.d_lr is not None and not self.d_lr > 0:
            raise FastMMGANError(f"d-lr must be positive, got {self.d_lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise FastMMGANError(f"ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.test_fraction < 1.0:
            raise FastMMGANError(f"test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.compile_backend not in COMPILE_BACKENDS:
            expected = ", ".join(COMPILE_BACKENDS)
            raise FastMMGANError(f"unknown compile-backend {self.compile_backend!r} (expected one of {expected})")
        if self.precision not in PRECISIONS:
            raise FastMMGANError(f"unknown precision {self.precision!r} (expected one of {', '.join(PRECISIONS)})")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise FastMMGANError(f"unknown device {self.device!r} (expected auto, cpu or cuda)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        for name in ("g_widths", "d_widths"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config saved as ``d``; a field added since then takes the value that kept the old behaviour."""
        if not isinstance(d, dict):
            raise FastMMGANError(f"a run config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{**ADDED_FIELDS, **{k: v for k, v in d.items() if k in known}})

    def model_hash(self) -> str:
        """Short hash of what decides the generator's architecture and data (z_components and g_widths only
        when used, so runs saved before they existed keep their hash)."""
        keys = ["dataset", "data", "z_dim", "g_width", "g_depth"] + (["z_components"] if self.z_components else [])
        values = {k: getattr(self, k) for k in keys}
        if self.g_widths:  # only when used, as z_components
            values["g_widths"] = list(self.g_widths)
        blob = json.dumps(values, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]
