"""What a person looks at or listens to: PNG image grids, WAV clips, caption text files."""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from scipy import signal
from scipy.io import wavfile

from .checkpoint import atomic_write_bytes


def image_grid(images: np.ndarray, rows: int | None = None, scale: int = 4, pad: int = 1) -> Image.Image:
    """Tile images in [0, 1], grey [n, H, W] or RGB [n, H, W, 3], into one picture ("L" or "RGB"), ``rows`` x
    ceil(n/rows) on a mid-grey background, upscaled by ``scale``."""
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
        raise ValueError(f"expected grey images [n, H, W] or RGB images [n, H, W, 3], got shape {list(images.shape)}")
    n, h, w = images.shape[:3]
    rows = rows or int(np.ceil(np.sqrt(n)))
    cols = int(np.ceil(n / rows))
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, *images.shape[3:]), dtype=np.float32) * 0.5
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    pixels = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    mode = "L" if images.ndim == 3 else "RGB"
    return Image.fromarray(pixels, mode=mode).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)


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


def read_wav(path: str | Path | BinaryIO, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """A WAV file as a float32 mono waveform in [-1, 1] and its sample rate.

    Reads 8/16/24/32-bit PCM and 32/64-bit float files (scipy's reader; 24-bit PCM arrives left-aligned
    in int32), averages the channels, and with ``sample_rate`` resamples to it (polyphase filtering,
    ``scipy.signal.resample_poly``). ValueError names anything else; OSError (a missing file) passes through.
    """
    try:
        rate, data = wavfile.read(path if hasattr(path, "read") else str(path))
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - scipy's reader fails on malformed files with assorted types
        raise ValueError(f"not a readable WAV file ({type(e).__name__}: {str(e).strip() or 'malformed'})") from None
    if data.dtype == np.uint8:
        wave_ = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype.kind == "i":
        wave_ = data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    elif data.dtype.kind == "f":
        wave_ = data.astype(np.float32)
    else:
        raise ValueError(f"unsupported sample format {data.dtype}")
    if wave_.ndim == 2:
        wave_ = wave_.mean(axis=1)
    if wave_.ndim != 1 or wave_.size == 0:
        raise ValueError("the file holds no audio samples")
    if sample_rate is not None and rate != sample_rate:
        factor = math.gcd(int(rate), int(sample_rate))
        wave_ = signal.resample_poly(wave_, sample_rate // factor, rate // factor).astype(np.float32)
        rate = sample_rate
    return np.clip(wave_, -1.0, 1.0), int(rate)


def save_captions(path: str | Path, lines: Sequence[str]) -> Path:
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
