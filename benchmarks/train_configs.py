"""The training-step benchmark's configs (seed-mnist, digits, wide) and the random data some of them use."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fastmmgan.config import TrainConfig
from fastmmgan.data import MultimodalDataset, digits_specs, load_dataset
from fastmmgan.modalities import ModalitySpec


def random_dataset(specs: Sequence[ModalitySpec], n: int, seed: int = 0, present: float = 1.0) -> MultimodalDataset:
    """n samples of uniform random features; each modality present with probability ``present``
    (at least one per sample)."""
    gen = torch.Generator().manual_seed(seed)
    features = tuple(torch.rand(n, s.dim, generator=gen) for s in specs)
    mask = torch.rand(n, len(specs), generator=gen) < present
    mask[torch.arange(n), torch.randint(0, len(specs), (n,), generator=gen)] = True
    return MultimodalDataset(tuple(specs), features, mask)


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark row: a name, the training config and how to get its data for a batch size."""

    name: str
    cfg: TrainConfig
    data: Callable[[int], MultimodalDataset]


def _seed_mnist_data(batch: int) -> MultimodalDataset:
    return random_dataset((ModalitySpec("image", "image", image_shape=(28, 28)),), max(2048, 2 * batch))


def _digits_data(batch: int) -> MultimodalDataset:
    return load_dataset("digits", seed=0)


def _wide_data(batch: int) -> MultimodalDataset:
    return random_dataset(digits_specs(), 2 * batch)


SEED_MNIST = TrainConfig(
    z_dim=100, z_components=0, g_widths=(128, 256), d_widths=(256, 128), mbstd_group=0, mmd_weight=0.0,
    diversity_weight=0.0,
)
"""The seeds' MNIST GAN exactly: G 100-128-256-784 sigmoid, D 784-256-128-1, leaky-ReLU 0.2, non-saturating
loss, Adam(2e-4 / 1e-4, betas 0.5, 0.999); no recipe extras (stddev feature, MMD, mode seeking)."""

CONFIGS: dict[str, BenchConfig] = {
    "seed-mnist": BenchConfig("seed-mnist", SEED_MNIST, _seed_mnist_data),
    "digits": BenchConfig("digits", TrainConfig(), _digits_data),
    "wide": BenchConfig("wide", TrainConfig(g_width=1024, d_width=1024), _wide_data),
    "digits-attention": BenchConfig("digits-attention", TrainConfig(fusion="attention"), _digits_data),
}
SUITE_CONFIGS = ("seed-mnist", "digits", "wide")
"""The configs the pytest-benchmark suite and ``python -m fastmmgan.bench`` time by default (the shipped fusion)."""


def default_batches(name: str, cuda: bool) -> list[int]:
    """Batch sizes a config is timed at: the targets' 64 and 1024; ``wide`` at 4096 on a GPU, 1024 on a CPU;
    ``digits-attention`` at 64 (the default batch, where it is compared with ``digits``)."""
    if name == "wide":
        return [4096 if cuda else 1024]
    if name == "digits-attention":
        return [64]
    return [64, 1024]
