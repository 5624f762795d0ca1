"""One training step's random draws: the batch, which modalities the generator is given, mismatched pairs, noise.

Everything is a pure function of ``(cfg.seed, step)``, so resuming a run needs no random-stream state and
any number of processes agrees on the global batch.

Row-order contract: rows are sorted by the subset of modalities the generator is given, so the rows
generated from noise alone (the empty subset) come first. The discriminator's minibatch-stddev groups and
the step's MMD term (:func:`fastmmgan.step.batch_mmd`, which reads the leading unconditional rows) rely on
it; under torchrun each process takes a contiguous slice of the globally ordered batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .config import TrainConfig
from .data import MultimodalDataset
from .feature_store import draw_rows


@dataclass
class StepInputs:
    """One step's tensors: real features per modality [B, dim_m], presence mask [B, M] (bool),
    given mask [B, M] (bool, modalities the generator is conditioned on), mismatched real samples
    (one modality taken from another row, see :func:`draw_step_inputs`) with their
    weights [B] (0 where a row has too few modalities to mismatch), noise z [B, z_dim], the noise of each
    row's second draw z_alt [B, z_dim] (the next row's z in the global batch, so it is the same under any
    number of processes), alpha [B, 1] (WGAN-GP interpolation), the EMA decay for this step (0-d float32),
    and the features the generator reads for its given modalities, ``conditions`` (M tensors [B, dim_m]: ``real``
    itself, or with ``cfg.condition_noise`` > 0 ``real`` plus Gaussian noise of that many times the modality's
    feature std over the batch; with one modality, which no row is given, ``real`` itself)."""

    real: list[torch.Tensor]
    mask: torch.Tensor
    given: torch.Tensor
    mismatched: list[torch.Tensor]
    mismatch_weight: torch.Tensor
    z: torch.Tensor
    z_alt: torch.Tensor
    alpha: torch.Tensor
    ema_beta: torch.Tensor
    conditions: list[torch.Tensor]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> StepInputs:
        real = [fn(x) for x in self.real]
        same = all(c is r for c, r in zip(self.conditions, self.real, strict=True))  # no condition noise: one copy
        return StepInputs(
            real, fn(self.mask), fn(self.given), [fn(x) for x in self.mismatched], fn(self.mismatch_weight), fn(self.z),
            fn(self.z_alt), fn(self.alpha), fn(self.ema_beta), real if same else [fn(x) for x in self.conditions],
        )

    def to(self, device: torch.device) -> StepInputs:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> StepInputs:
        """The same inputs in page-locked memory, so their copy to a GPU overlaps the step (CPU tensors only)."""
        return self._map(lambda t: t.pin_memory() if t.device.type == "cpu" else t)


def _seed_for(*key: int) -> int:
    return int(np.random.SeedSequence([k & 0xFFFFFFFF for k in key]).generate_state(1)[0])


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch (cached: every step of the epoch slices the same permutation)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_seed_for(seed, epoch, 0)))


UNCONDITIONAL_SHARE = 0.25


def _feature_std(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """0-d: the std of one modality's features [B, dim] over the batch's rows that have it (``present`` [B]
    bool), the scale of its condition noise: a 576-bin spectrogram and an 8x8 image differ in spread."""
    rows = x[present]
    return rows.std() if rows.numel() > 1 else torch.ones((), device=x.device)



def draw_step_inputs(
    ds: MultimodalDataset, step: int, cfg: TrainConfig, rank: int = 0, world: int = 1
) -> StepInputs:
    """The random draws of one step, a pure function of (seed, step): exact resume needs no stream state.

    The global batch is drawn whole and rank ``rank`` of ``world`` takes its slice, so any number of
    processes sees the same global batch. Batches walk a per-epoch permutation; the ragged tail is dropped.
    Mismatched samples take one present modality from a random other row of the batch.

    The generator is given a random proper subset of each row's modalities: none for a quarter of the rows
    (unconditional generation), else uniform over the non-empty proper subsets. Rows are ordered by that
    subset, so the discriminator's minibatch-stddev groups compare samples made the same way and a
    collapsed unconditional generator stands out.
    """
    n, b = len(ds), cfg.batch_size
    per_epoch = n // b
    epoch, pos = divmod(step, per_epoch)
    idx = _epoch_order(n, cfg.seed, epoch)[pos * b : (pos + 1) * b]
    rng = torch.Generator().manual_seed(_seed_for(cfg.seed, step, 1))
    m = len(ds.specs)
    unconditional = torch.rand(b, generator=rng) < UNCONDITIONAL_SHARE
    some = torch.randint(1, max(2, 2**m - 1), (b,), generator=rng) if m > 1 else torch.zeros(b, dtype=torch.long)
    patterns = torch.where(unconditional, 0, some).sort().values
    bits = (patterns[:, None] >> torch.arange(m)) & 1
    mask = ds.mask[idx]
    given = bits.bool() & mask
    # Columns read from files draw their augmentation (audio: a random crop) from a stream of their own, so
    # in-memory data leaves every other draw as it was.
    crops = torch.Generator().manual_seed(_seed_for(cfg.seed, step, 2))
    real = [draw_rows(x, idx, crops) for x in ds.features]
    if m > 1:
        partner = torch.randperm(b, generator=rng)
        swap_pick = torch.multinomial(mask.float() + 1e-6, 1, generator=rng)
        swap = torch.zeros_like(mask).scatter_(1, swap_pick, True)
        mismatched = [torch.where(swap[:, m : m + 1].to(x.device), x[partner], x) for m, x in enumerate(real)]
        valid = (mask & mask[partner]).sum(dim=1) >= 2
        valid &= ((swap & mask & mask[partner]).any(dim=1)) & (partner != torch.arange(b))
    else:  # one modality: no row can be mismatched (the step does not judge these rows at all)
        mismatched, valid = real, torch.zeros(b, dtype=torch.bool)
    z = torch.randn(b, cfg.z_dim, generator=rng)
    alpha = torch.rand(b, 1, generator=rng)
    beta = torch.tensor(min(cfg.ema_decay, (1.0 + step) / (10.0 + step)), dtype=torch.float32)
    sl = slice(rank * b // world, (rank + 1) * b // world)
    own = [x[sl] for x in real]
    conditions = own
    # Drawn last, so runs without it keep every other draw; one modality is never given, so nothing reads it.
    if cfg.condition_noise and m > 1:
        conditions = [x[sl] + (cfg.condition_noise * _feature_std(x, mask[:, k].to(x.device))
                               * torch.randn(x.shape, generator=rng)[sl].to(x.device)).to(x.dtype)
                      for k, x in enumerate(real)]
    return StepInputs(
        own, mask[sl], given[sl], [x[sl] for x in mismatched], valid[sl].float(), z[sl], z.roll(-1, 0)[sl], alpha[sl],
        beta, conditions,
    )
