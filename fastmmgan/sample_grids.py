"""Sample sheets written during training: every direction the model serves, as PNG, WAV and text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data import MultimodalDataset
from .media import image_grid, save_captions, save_png, save_wav
from .modalities import ModalitySpec
from .models import Generator
from .sampler import draw_noise

PER_CONDITION = 8


def condition_rows(ds: MultimodalDataset, max_rows: int = 10) -> tuple[torch.Tensor, list[str]]:
    """Indices of example samples to condition on (one per label where labels exist) and their row names."""
    if ds.labels is None:
        idx = torch.arange(min(max_rows, len(ds)))
        return idx, [f"sample {i}" for i in idx.tolist()]
    picks = []
    for label in torch.unique(ds.labels).tolist()[:max_rows]:
        picks.append(int(torch.nonzero(ds.labels == label)[0]))
    idx = torch.tensor(picks)
    return idx, [f"label {int(ds.labels[i])}" for i in idx.tolist()]


def _generate(generator: Generator, xs: Sequence[torch.Tensor], given: torch.Tensor, seed: int) -> list[torch.Tensor]:
    device = next(generator.parameters()).device
    z = draw_noise(len(given), generator.z_dim, seed).to(device)
    with torch.no_grad():
        out = generator(z, [x.to(device) for x in xs], given.to(device))
    return [o.float().cpu() for o in out]


def _write(spec: ModalitySpec, feats: torch.Tensor, rows: int, names: list[str], path: Path) -> None:
    if spec.kind == "image":
        save_png(path.with_suffix(".png"), image_grid(spec.decode(feats), rows=rows))
    elif spec.kind == "text":
        per = len(feats) // rows
        captions = spec.decode(feats)
        save_captions(path.with_suffix(".txt"), [f"{names[i // per]}: {c}" for i, c in enumerate(captions)])
    else:
        per = len(feats) // rows
        waves = spec.decode(feats[::per])
        gap = np.zeros(spec.sample_rate // 8, dtype=np.float32)
        save_wav(path.with_suffix(".wav"), np.concatenate([np.concatenate([w, gap]) for w in waves]), spec.sample_rate)


def write_samples(generator: Generator, ds: MultimodalDataset, out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write ``noise_to_X`` for every modality and ``A_to_B`` for every ordered pair into ``out_dir``.

    Conditioned sheets have one row per example condition (one per label when labels exist),
    PER_CONDITION samples each; audio sheets keep one clip per row, separated by silence.
    """
    out_dir = Path(out_dir)
    was_training = generator.training
    generator.eval()
    specs, m = ds.specs, len(ds.specs)
    idx, names = condition_rows(ds)
    rows = len(idx)
    n = rows * PER_CONDITION
    reps = idx.repeat_interleave(PER_CONDITION)
    written = []

    zeros = [torch.zeros(n, s.dim) for s in specs]
    noise_out = _generate(generator, zeros, torch.zeros(n, m, dtype=torch.bool), seed)
    for spec, feats in zip(specs, noise_out):
        path = out_dir / f"noise_to_{spec.name}"
        _write(spec, feats, PER_CONDITION, [f"row {r}" for r in range(PER_CONDITION)], path)
        written.append(path)

    for a, src in enumerate(specs):
        if not bool(ds.mask[idx, a].all()):
            continue
        xs = [ds.features[a][reps] if k == a else zeros[k] for k in range(m)]
        given = torch.zeros(n, m, dtype=torch.bool)
        given[:, a] = True
        out = _generate(generator, xs, given, seed)
        for b, dst in enumerate(specs):
            if b != a:
                path = out_dir / f"{src.name}_to_{dst.name}"
                _write(dst, out[b], rows, names, path)
                written.append(path)
    generator.train(was_training)
    return written
