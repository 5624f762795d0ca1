"""What a person looks at or listens to: PNG image grids, WAV clips, caption text files."""

from __future__ import annotations

import io
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .checkpoint import atomic_write_bytes


def image_grid(images: np.ndarray, rows: int | None = None, scale: int = 4, pad: int = 1) -> Image.Image:
    """Tile grey images [n, H, W] in [0, 1] into one picture, ``rows`` x ceil(n/rows), upscaled by ``scale``."""
    n, h, w = images.shape
    rows = rows or int(np.ceil(np.sqrt(n)))
    cols = int(np.ceil(n / rows))
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32) * 0.5
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    pixels = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)


def save_png(path: str | Path, image: Image.Image) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def wav_bytes(waveform: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV file of a waveform [T] in [-1, 1]."""
    pcm = (np.clip(waveform, -1, 1) * 32767).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def save_wav(path: str | Path, waveform: np.ndarray, sample_rate: int) -> Path:
    return atomic_write_bytes(path, wav_bytes(waveform, sample_rate))


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file as a float32 mono waveform in [-1, 1] and its sample rate (8/16/32-bit PCM; channels averaged)."""
    with wave.open(str(path), "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        frames = w.readframes(w.getnframes())
    dtype = {1: np.uint8, 2: "<i2", 4: "<i4"}.get(width)
    if dtype is None:
        raise ValueError(f"unsupported sample width {width} bytes")
    data = np.frombuffer(frames, dtype=dtype).astype(np.float32)
    data = (data - 128.0) / 128.0 if width == 1 else data / float(2 ** (8 * width - 1))
    return data.reshape(-1, channels).mean(axis=1), rate


def save_captions(path: str | Path, lines: Sequence[str]) -> Path:
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
