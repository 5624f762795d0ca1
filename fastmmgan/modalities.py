"""Modality specs and their codecs: raw data a person has <-> fixed-size feature vectors in [0, 1].

Every modality's features live in [0, 1] so every generator head is a sigmoid:
- image: pixels of an ``[H, W]`` grey image, or of an ``[H, W, 3]`` RGB one (``channels=3``), flattened in
  H, W, C order (channels interleaved, as PIL and numpy hold RGB);
- text: a bag of words (1 where a vocabulary word occurs), decoded as the words scoring > 0.5 in vocabulary order;
- audio: a log-magnitude spectrogram of a fixed-length clip above a noise floor (log1p|STFT| below
  0.7, about -50 dB of full scale, reads as 0), decoded to a waveform by fast Griffin-Lim.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .errors import FastMMGANError
from .griffin_lim import griffin_lim, stft_pair

KINDS = ("image", "text", "audio")
_TOKEN = re.compile(r"[a-z0-9]+")
_AUDIO_LOG_FLOOR = 0.7
_AUDIO_LOG_SCALE = 3.0
_AUDIO_SILENCE_RAMP = 0.05


@dataclass(frozen=True)
class ModalitySpec:
    """One modality: its name, kind, feature size and what turns features back into something to look at or hear."""

    name: str
    kind: str
    image_shape: tuple[int, int] | None = None
    vocab: tuple[str, ...] | None = None
    sample_rate: int | None = None
    clip_samples: int | None = None
    n_fft: int = 256
    hop: int = 128
    n_bins: int | None = None
    channels: int = 1
    """Colour channels of an image modality: 1 grey, 3 RGB (any other kind has 1)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FastMMGANError(f"modality {self.name!r}: unknown kind {self.kind!r} (expected one of {', '.join(KINDS)})")
        needs = {"image": ("image_shape",), "text": ("vocab",), "audio": ("sample_rate", "clip_samples")}[self.kind]
        for attr in needs:
            if getattr(self, attr) is None:
                raise FastMMGANError(f"modality {self.name!r} of kind {self.kind} needs {attr}")
        self._check_values()

    def _check_values(self) -> None:
        """Types and ranges, so a damaged spec (a checkpoint's, an ONNX file's metadata) fails here, by name."""

        def count(value: Any, low: int = 1, high: float = math.inf) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

        problems = []
        if not isinstance(self.name, str) or not self.name:
            problems.append("name must be a non-empty string")
        if self.image_shape is not None and (len(self.image_shape) != 2 or not all(count(v) for v in self.image_shape)):
            problems.append(f"image_shape must be two positive integers, got {self.image_shape!r:.40}")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels not in (1, 3):
            problems.append(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r:.20}")
        elif self.channels != 1 and self.kind != "image":
            problems.append(f"channels {self.channels} is for image modalities only ({self.kind} has 1)")
        if self.vocab is not None and not (self.vocab and all(isinstance(w, str) and w for w in self.vocab)):
            problems.append("vocab must be a non-empty list of non-empty words")
        for attr in ("sample_rate", "clip_samples"):
            if getattr(self, attr) is not None and not count(getattr(self, attr)):
                problems.append(f"{attr} must be a positive integer, got {getattr(self, attr)!r:.40}")
        if not count(self.n_fft, 2) or not count(self.hop, 1, self.n_fft if count(self.n_fft) else 1):
            problems.append(f"n_fft must be an integer >= 2 and hop one in 1..n_fft, got {self.n_fft!r:.20}, {self.hop!r:.20}")
        elif self.n_bins is not None and not count(self.n_bins, 1, self.n_fft // 2 + 1):
            problems.append(f"n_bins must be in 1..{self.n_fft // 2 + 1}, got {self.n_bins!r:.20}")
        elif self.kind == "audio" and count(self.clip_samples) and self.clip_samples <= self.n_fft // 2:
            problems.append(f"clip_samples ({self.clip_samples}) must exceed n_fft / 2 ({self.n_fft // 2})")
        if problems:
            raise FastMMGANError(f"modality {self.name!r:.40}: {'; '.join(problems)}")

    @property
    def frames(self) -> int:
        return self.clip_samples // self.hop + 1

    @property
    def bins(self) -> int:
        return self.n_bins or self.n_fft // 2 + 1

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """Shape of one decoded image: ``(H, W)`` grey, ``(H, W, 3)`` RGB (image modalities only)."""
        h, w = self.image_shape
        return (h, w) if self.channels == 1 else (h, w, self.channels)

    @property
    def dim(self) -> int:
        """Feature size of this modality."""
        if self.kind == "image":
            return self.image_shape[0] * self.image_shape[1] * self.channels
        if self.kind == "text":
            return len(self.vocab)
        return self.frames * self.bins

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (those that are None left out; ``channels`` only when not 1, so a grey spec's dict
        is what it was before colour existed)."""
        d = asdict(self)
        d.pop("extra")
        if d["channels"] == 1:
            d.pop("channels")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModalitySpec:
        """The spec saved as ``d`` (by :meth:`to_dict`); a clear error when ``d`` does not describe one."""
        if not isinstance(d, dict):
            raise FastMMGANError(f"a modality spec must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        for key in ("image_shape", "vocab"):
            if d.get(key) is not None:
                if not isinstance(d[key], (list, tuple)):
                    raise FastMMGANError(f"modality {d.get('name')!r:.40}: {key} must be a list, got {d[key]!r:.40}")
                d[key] = tuple(d[key])
        try:
            return cls(**d)
        except TypeError as e:  # missing or unknown fields
            raise FastMMGANError(f"not a modality spec: {e}") from None

    def encode(self, raw: Any) -> torch.Tensor:
        """Raw data for n samples -> features [n, dim] float32 in [0, 1]: images [n, H, W] (grey) or
        [n, H, W, 3] (RGB) in [0, 1], or one image without the n axis; waveforms [n, T]; a list of strings."""
        return {"image": _encode_image, "text": _encode_text, "audio": _encode_audio}[self.kind](self, raw)

    def decode(self, features: torch.Tensor) -> Any:
        """Features [n, dim] -> raw data: images float32 [n, H, W] (grey) or [n, H, W, 3] (RGB) in [0, 1],
        waveforms float32 [n, T], or a list of strings."""
        return {"image": _decode_image, "text": _decode_text, "audio": _decode_audio}[self.kind](self, features)


def _as_float_array(spec: ModalitySpec, raw: Any, ndim: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise FastMMGANError(f"modality {spec.name!r}: expected {what} as numbers ({e})") from None
    if arr.ndim == ndim - 1:
        arr = arr[None]
    if arr.ndim != ndim:
        raise FastMMGANError(f"modality {spec.name!r}: expected {what}, got an array of shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise FastMMGANError(f"modality {spec.name!r}: data contains NaN or infinite values")
    return arr


def image_layout(spec: ModalitySpec) -> str:
    """The shape an image modality's raw images have, for messages: ``[n, 8, 8] (grey)``, ``[n, 8, 8, 3] (RGB)``."""
    return f"[n, {', '.join(map(str, spec.pixel_shape))}] ({'grey' if spec.channels == 1 else 'RGB, channels last'})"


def _encode_image(spec: ModalitySpec, raw: Any) -> torch.Tensor:
    shape = spec.pixel_shape
    arr = _as_float_array(spec, raw, len(shape) + 1, f"images {image_layout(spec)} in [0, 1]")
    if arr.shape[1:] != shape:
        given = list(arr.shape[1:] if np.ndim(raw) == len(shape) else arr.shape)  # as given: no added n axis
        raise FastMMGANError(f"modality {spec.name!r}: expected images of shape {image_layout(spec)}, got {given}")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise FastMMGANError(f"modality {spec.name!r}: image values must be in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]")
    return torch.from_numpy(arr.reshape(len(arr), spec.dim).copy())


def _decode_image(spec: ModalitySpec, features: torch.Tensor) -> np.ndarray:
    return features.detach().float().clamp(0, 1).cpu().numpy().reshape(-1, *spec.pixel_shape)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of a caption."""
    return _TOKEN.findall(text.lower())


@lru_cache(maxsize=64)
def _vocab_index(vocab: tuple[str, ...]) -> dict[str, int]:
    return {word: i for i, word in enumerate(vocab)}


def _encode_text(spec: ModalitySpec, raw: Any) -> torch.Tensor:
    if isinstance(raw, str):
        raw = [raw]
    texts = list(raw)
    if not all(isinstance(t, str) for t in texts):
        raise FastMMGANError(f"modality {spec.name!r}: expected a list of strings")
    index = _vocab_index(spec.vocab)
    columns: dict[str, list[int]] = {}
    for text in dict.fromkeys(texts):  # captions repeat across a batch: tokenize each once
        words = tokenize(text)
        unknown = sorted({w for w in words if w not in index})
        if unknown:
            raise FastMMGANError(f"modality {spec.name!r}: words not in the vocabulary: {', '.join(unknown)}")
        columns[text] = [index[w] for w in words]
    out = np.zeros((len(texts), len(spec.vocab)), dtype=np.float32)
    for row, text in enumerate(texts):
        out[row, columns[text]] = 1.0
    return torch.from_numpy(out)


def _decode_text(spec: ModalitySpec, features: torch.Tensor) -> list[str]:
    scores = features.detach().float().cpu().numpy()
    return [" ".join(spec.vocab[i] for i in np.flatnonzero(row > 0.5)) for row in scores]


def _window(spec: ModalitySpec) -> torch.Tensor:
    return torch.hann_window(spec.n_fft)


def _stft(spec: ModalitySpec, wave: torch.Tensor) -> torch.Tensor:
    return torch.stft(wave, spec.n_fft, spec.hop, window=_window(spec), center=True, return_complex=True)


def _encode_audio(spec: ModalitySpec, raw: Any) -> torch.Tensor:
    arr = _as_float_array(spec, raw, 2, f"waveforms [n, samples] at {spec.sample_rate} Hz")
    wave = torch.zeros(len(arr), spec.clip_samples)
    n = min(arr.shape[1], spec.clip_samples)
    wave[:, :n] = torch.from_numpy(arr[:, :n].copy())
    mag = _stft(spec, wave).abs()[:, : spec.bins, :]
    feats = ((torch.log1p(mag) - _AUDIO_LOG_FLOOR) / _AUDIO_LOG_SCALE).clamp(0, 1)
    return feats.transpose(1, 2).reshape(len(arr), spec.dim)


def audio_magnitude(spec: ModalitySpec, features: torch.Tensor) -> np.ndarray:
    """Audio features [n, dim] -> the spectrogram magnitudes they describe, [n, frames, bins] float32."""
    feats = features.detach().float().cpu().clamp(0, 1).reshape(-1, spec.frames, spec.bins).numpy()
    # Features fade to silence linearly below _AUDIO_SILENCE_RAMP, so the magnitude is a continuous function of
    # them: a hard "0 is silent, anything above is the floor's magnitude" turns 1e-13 vs 0 into a jump of ~1.
    fade = np.clip(feats / _AUDIO_SILENCE_RAMP, 0.0, 1.0)
    return (np.expm1(feats * _AUDIO_LOG_SCALE + _AUDIO_LOG_FLOOR) * fade).astype(np.float32)


def _decode_audio(spec: ModalitySpec, features: torch.Tensor) -> np.ndarray:
    """Features -> waveforms [n, clip_samples] float32 in [-1, 1] by fast Griffin-Lim (see :mod:`.griffin_lim`)."""
    wave = griffin_lim(audio_magnitude(spec, features), stft_pair(spec.n_fft, spec.hop, spec.clip_samples))
    peak = np.maximum(np.abs(wave).max(axis=1, keepdims=True), 1.0)
    return (wave / peak).astype(np.float32)
