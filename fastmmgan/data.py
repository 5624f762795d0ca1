"""Multimodal datasets: the built-in ``digits`` (image, caption, keypad tone) and user ``.npz`` files.

A dataset holds one float32 feature tensor per modality ([N, dim_m], values in [0, 1]),
a presence mask [N, M] (bool) and optional integer labels [N].
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import FastMMGANError
from .feature_store import FeatureColumn, take_rows
from .modalities import KINDS, ModalitySpec, tokenize

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Word order of the vocabulary is the order captions read in when decoded from a bag of words.
DIGITS_VOCAB = ("a", "the", "handwritten", "number", "digit", *DIGIT_WORDS, *(str(d) for d in range(10)))
CAPTION_TEMPLATES = (
    "a handwritten {word}",
    "the number {digit}",
    "digit {word}",
    "the digit {digit}",
    "number {word}",
    "a {word}",
    "handwritten digit {digit}",
    "the handwritten number {word}",
)
# ITU-T Q.23 keypad: (row Hz, column Hz) of each digit's tone.
DTMF = {
    1: (697, 1209), 2: (697, 1336), 3: (697, 1477),
    4: (770, 1209), 5: (770, 1336), 6: (770, 1477),
    7: (852, 1209), 8: (852, 1336), 9: (852, 1477),
    0: (941, 1336),
}
SAMPLE_RATE = 8000
CLIP_SAMPLES = 1024


@dataclass
class MultimodalDataset:
    """Features per modality, in spec order; ``mask[i, m]`` says whether sample i has modality m.

    A feature column is a float32 tensor [N, dim_m] in memory, or for a prepared dataset a
    :class:`~fastmmgan.feature_store.FeatureColumn` that reads its rows from a memory map (index it as a tensor)."""

    specs: tuple[ModalitySpec, ...]
    features: tuple[torch.Tensor | FeatureColumn, ...]
    mask: torch.Tensor
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.mask)
        if len(self.specs) != len(self.features) or self.mask.shape != (n, len(self.specs)):
            raise FastMMGANError(f"mask shape {list(self.mask.shape)} does not match {len(self.specs)} modalities")
        for spec, x in zip(self.specs, self.features):
            if tuple(x.shape) != (n, spec.dim):
                raise FastMMGANError(f"modality {spec.name!r}: features of shape {list(x.shape)}, expected [{n}, {spec.dim}]")
        if self.labels is not None and self.labels.shape != (n,):
            raise FastMMGANError(f"labels of shape {list(self.labels.shape)}, expected [{n}]")

    def __len__(self) -> int:
        return len(self.mask)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def to(self, device: torch.device | str) -> MultimodalDataset:
        labels = None if self.labels is None else self.labels.to(device)
        return MultimodalDataset(self.specs, tuple(x.to(device) for x in self.features), self.mask.to(device), labels)

    def features_to(self, device: torch.device | str) -> MultimodalDataset:
        """The same dataset with only its feature columns on ``device`` (mask and labels stay on the CPU, where
        the batch draws' generators run)."""
        return MultimodalDataset(self.specs, tuple(x.to(device) for x in self.features), self.mask, self.labels)

    def subset(self, index: torch.Tensor) -> MultimodalDataset:
        labels = None if self.labels is None else self.labels[index]
        return MultimodalDataset(self.specs, tuple(take_rows(x, index) for x in self.features), self.mask[index], labels)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[MultimodalDataset, MultimodalDataset]:
        """Deterministic train/test split by seed."""
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_test = int(round(len(self) * test_fraction))
        return self.subset(perm[n_test:]), self.subset(perm[:n_test])


def stored_bytes(ds: MultimodalDataset) -> int:
    """Bytes the dataset's feature columns hold in their stored form (uint8 pixels of a prepared dataset, float32
    of an in-memory one)."""
    total = 0
    for x in ds.features:
        if isinstance(x, FeatureColumn):
            total += len(x) * x.row_bytes
        else:
            total += x.numel() * x.element_size()
    return total


def digits_specs() -> tuple[ModalitySpec, ...]:
    """Specs of the built-in dataset: 8x8 image, caption, 0.128 s keypad tone at 8 kHz."""
    return (
        ModalitySpec("image", "image", image_shape=(8, 8)),
        ModalitySpec("text", "text", vocab=DIGITS_VOCAB),
        ModalitySpec("audio", "audio", sample_rate=SAMPLE_RATE, clip_samples=CLIP_SAMPLES, n_fft=256, hop=128, n_bins=64),
    )


def digit_caption(digit: int, rng: np.random.Generator) -> str:
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return template.format(word=DIGIT_WORDS[digit], digit=digit)


def dtmf_tone(digit: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE, samples: int = CLIP_SAMPLES) -> np.ndarray:
    """A keypad tone with random duration, start, phases, amplitude and noise: float32 [samples] in [-1, 1]."""
    low, high = DTMF[digit]
    length = int(rng.integers(samples * 2 // 5, samples + 1))
    start = int(rng.integers(0, samples - length + 1))
    t = np.arange(length) / sample_rate
    phases = rng.uniform(0, 2 * np.pi, size=2)
    amp = rng.uniform(0.3, 0.9)
    tone = 0.5 * amp * (np.sin(2 * np.pi * low * t + phases[0]) + np.sin(2 * np.pi * high * t + phases[1]))
    wave = rng.normal(0.0, rng.uniform(0.005, 0.03), size=samples)
    wave[start : start + length] += tone
    return np.clip(wave, -1, 1).astype(np.float32)


def load_digits_dataset(seed: int = 0) -> MultimodalDataset:
    """The built-in tri-modal dataset: scikit-learn's 1797 8x8 digits with a caption and a keypad tone each."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    images = (bunch.images / 16.0).astype(np.float32)
    captions = [digit_caption(int(d), rng) for d in labels]
    tones = np.stack([dtmf_tone(int(d), rng) for d in labels])
    specs = digits_specs()
    raw = {"image": images, "text": captions, "audio": tones}
    features = tuple(spec.encode(raw[spec.name]) for spec in specs)
    mask = torch.ones(len(labels), len(specs), dtype=torch.bool)
    return MultimodalDataset(specs, features, mask, torch.from_numpy(labels))


def _text_vocab(texts: Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for text in texts:
        for word in tokenize(text):
            seen.setdefault(word, None)
    return tuple(seen)


def _parse_kinds(arr: np.ndarray) -> dict[str, str]:
    if arr.dtype.kind != "U" or arr.ndim != 1:
        raise FastMMGANError("'kinds' must be a 1-D string array of 'name=kind' entries, e.g. ['image=image', 'caption=text']")
    kinds: dict[str, str] = {}
    for entry in arr.tolist():
        name, sep, kind = entry.partition("=")
        if not sep or not name:
            raise FastMMGANError(f"'kinds' entry {entry!r} is not of the form name=kind")
        if kind not in KINDS:
            raise FastMMGANError(f"modality {name!r}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
        if name in kinds:
            raise FastMMGANError(f"modality {name!r} is declared twice in 'kinds'")
        kinds[name] = kind
    if not kinds:
        raise FastMMGANError("'kinds' declares no modality")
    return kinds


def _spec_for(name: str, kind: str, arr: np.ndarray, sample_rate: int | None) -> ModalitySpec:
    if kind == "image":
        colour = arr.ndim == 4 and arr.shape[3] == 3
        if arr.ndim != 3 and not colour:
            raise FastMMGANError(f"modality {name!r}: image data must be [N, H, W] (grey) or [N, H, W, 3] (RGB), "
                                 f"got shape {list(arr.shape)}")
        return ModalitySpec(name, kind, image_shape=(int(arr.shape[1]), int(arr.shape[2])), channels=3 if colour else 1)
    if kind == "text":
        if arr.ndim != 1 or arr.dtype.kind != "U":
            raise FastMMGANError(f"modality {name!r}: text data must be a 1-D string array, got {arr.dtype} {list(arr.shape)}")
        vocab = _text_vocab(arr.tolist())
        if not vocab:
            raise FastMMGANError(f"modality {name!r}: captions contain no words")
        return ModalitySpec(name, kind, vocab=vocab)
    if arr.ndim != 2:
        raise FastMMGANError(f"modality {name!r}: audio data must be [N, samples], got shape {list(arr.shape)}")
    if sample_rate is None:
        raise FastMMGANError(f"modality {name!r}: audio needs a 'sample_rate' array (one integer) in the file")
    return audio_spec(name, sample_rate, int(arr.shape[1]))


def audio_spec(name: str, sample_rate: int, clip_samples: int) -> ModalitySpec:
    """An audio modality of ``clip_samples``-sample clips: STFT frames of up to 256 samples (fewer for short
    clips, so a clip spans several frames), half overlapping."""
    n_fft = min(256, 1 << max(3, (clip_samples // 2).bit_length() - 1))
    return ModalitySpec(name, "audio", sample_rate=sample_rate, clip_samples=clip_samples, n_fft=n_fft, hop=n_fft // 2)


def _check_numeric(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind not in "fiub":
        raise FastMMGANError(f"modality {name!r}: expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise FastMMGANError(f"modality {name!r}: data contains NaN or infinite values")
    return arr


def load_npz_dataset(path: str | Path) -> MultimodalDataset:
    """A user dataset from an ``.npz`` file.

    Keys: ``kinds`` (string array of ``name=kind``), one array per declared modality (first axis = samples):
    images [N,H,W] (grey) or [N,H,W,3] (RGB) in [0,1] (uint8 is scaled by 1/255), text [N] strings, audio [N,T]
    waveforms in [-1,1] plus ``sample_rate``; optional ``labels`` [N] integers and ``mask`` [N,M] (0/1, in ``kinds`` order).
    """
    path = Path(path)
    if not path.is_file():
        raise FastMMGANError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FastMMGANError(f"cannot read {path} as an .npz file: {e}") from None
    if "kinds" not in arrays:
        raise FastMMGANError(f"{path}: missing 'kinds' array declaring each modality (e.g. ['image=image', 'caption=text'])")
    kinds = _parse_kinds(arrays.pop("kinds"))
    sample_rate = None
    if "sample_rate" in arrays:
        sr = arrays.pop("sample_rate")
        if sr.size != 1 or sr.dtype.kind not in "iu" or int(sr.reshape(-1)[0]) <= 0:
            raise FastMMGANError(f"{path}: 'sample_rate' must be one positive integer")
        sample_rate = int(sr.reshape(-1)[0])
    labels = arrays.pop("labels", None)
    mask = arrays.pop("mask", None)
    missing = [name for name in kinds if name not in arrays]
    if missing:
        raise FastMMGANError(f"{path}: declared modalities missing from the file: {', '.join(missing)}")
    unknown = sorted(set(arrays) - set(kinds))
    if unknown:
        raise FastMMGANError(f"{path}: arrays not declared in 'kinds': {', '.join(unknown)}")
    lengths = {name: len(arrays[name]) if arrays[name].ndim else 0 for name in kinds}
    n = next(iter(lengths.values()))
    if len(set(lengths.values())) != 1:
        raise FastMMGANError(f"{path}: modalities have different numbers of samples: {lengths}")
    if n == 0:
        raise FastMMGANError(f"{path}: the dataset is empty")

    specs, features = [], []
    for name, kind in kinds.items():
        arr = arrays[name]
        spec = _spec_for(name, kind, arr, sample_rate)
        if kind == "image":
            arr = _check_numeric(name, arr) / (255.0 if arr.dtype == np.uint8 else 1.0)
        elif kind == "audio":
            arr = _check_numeric(name, arr)
        specs.append(spec)
        features.append(spec.encode(arr if kind != "text" else arr.tolist()))

    if mask is None:
        mask_t = torch.ones(n, len(specs), dtype=torch.bool)
    else:
        if mask.shape != (n, len(specs)) or mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
            raise FastMMGANError(f"{path}: 'mask' must be 0/1 of shape [{n}, {len(specs)}], got {mask.dtype} {list(mask.shape)}")
        mask_t = torch.from_numpy(mask.astype(bool))
    labels_t = None
    if labels is not None:
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise FastMMGANError(f"{path}: 'labels' must be integers of shape [{n}], got {labels.dtype} {list(labels.shape)}")
        labels_t = torch.from_numpy(labels.astype(np.int64))
    return MultimodalDataset(tuple(specs), tuple(features), mask_t, labels_t)


def load_dataset(name: str = "digits", path: str | Path | None = None, seed: int = 0) -> MultimodalDataset:
    """The built-in ``digits`` in memory, or a user ``.npz`` file when ``path`` is given (folders, ``hf:`` data
    and ``colour-digits`` are prepared into a cache: :func:`fastmmgan.prepare.open_dataset`)."""
    if path is not None:
        return load_npz_dataset(path)
    if name != "digits":
        raise FastMMGANError(f"unknown built-in dataset {name!r} (in memory: digits; colour-digits is prepared from "
                             "files by fastmmgan.prepare.open_dataset)")
    return load_digits_dataset(seed)


def main(argv: list[str] | None = None) -> int:
    """``python -m fastmmgan.data export {colour-digits,digits} DIR``: write a built-in dataset as files."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m fastmmgan.data", description="Write a built-in dataset as a folder of "
                                "PNG and WAV files with metadata.jsonl (the layout --data DIR reads).")
    sub = p.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a built-in dataset into DIR")
    export.add_argument("name", choices=("colour-digits", "digits"))
    export.add_argument("dir")
    export.add_argument("--seed", type=int, default=0, help="seed of colours, captions and tones")
    args = p.parse_args(argv)
    from .builtin_export import export_builtin

    print(export_builtin(args.name, args.dir, seed=args.seed))
    return 0


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
