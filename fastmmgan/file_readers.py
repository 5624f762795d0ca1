"""Reading one image or audio file as a dataset stores it: Pillow for images, soundfile for audio.

A source is a path, raw file bytes, or (images) an already opened ``PIL.Image``. Every failure of a reader,
whatever exception type the library raises for a damaged file, becomes :class:`BadFile` with a short reason,
so the caller can name the file and row in one line, or skip it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au"})
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "F"})


class BadFile(Exception):
    """A file that cannot be read as the image or audio it should be; the message is the reason."""


def kind_of_path(name: str) -> str | None:
    """``image`` or ``audio`` by a file name's extension, None for anything else."""
    suffix = Path(name).suffix.lower()
    return "image" if suffix in IMAGE_EXTENSIONS else "audio" if suffix in AUDIO_EXTENSIONS else None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _open_image(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says: size (height, width) and whether it is grey."""

    size: tuple[int, int]
    grey: bool


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """(height, width) as the image is meant to be seen: EXIF orientations 5-8 (a phone held sideways) swap them."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: read the image as stored
        orientation = 1
    return (img.width, img.height) if orientation in (5, 6, 7, 8) else (img.height, img.width)


def image_info(source: Any) -> ImageInfo:
    """The header of an image (no pixel decoding); :class:`BadFile` when it is not an image."""
    try:
        img = _open_image(source)
        return ImageInfo(_upright_size(img), img.mode in _GREY_MODES)
    except Exception as e:  # noqa: BLE001 - Pillow raises assorted types for damaged files
        raise BadFile(f"not a readable image ({_reason(e)})") from None


def _full_scale(mode: str, pixels: np.ndarray) -> float:
    """The value of white in a wide grey mode: 65535 for 16-bit files, 1 for float images, and for 32-bit
    integer images 65535 when any value needs more than 8 bits (Pillow opens some 16-bit PNGs as "I"), else 255."""
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "F":
        return 1.0
    return 65535.0 if pixels.max(initial=0) > 255 else 255.0


def read_image(source: Any, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """An image as uint8 [H, W, channels] (channels 1: grey, 3: RGB), resized to ``size`` (H, W) with Pillow's
    antialiasing Lanczos filter when it differs. Any mode converts (16-bit grey scales to 8 bits, alpha is
    dropped, palettes expand). A truncated or damaged file is :class:`BadFile`."""
    try:
        img = _open_image(source)
        img.load()  # decode now: a truncated file fails here, not later
        img = ImageOps.exif_transpose(img)  # upright, as viewers show it (and as datasets' Image feature decodes)
        if img.mode in _WIDE_MODES:  # Pillow's convert("L") clips 16-bit values instead of scaling them
            wide = np.asarray(img, dtype=np.float64)
            img = Image.fromarray(np.clip(wide / _full_scale(img.mode, wide) * 255.0, 0, 255).round().astype(np.uint8))
        img = img.convert("L" if channels == 1 else "RGB")
        if size is not None and (img.height, img.width) != tuple(size):
            img = img.resize((size[1], size[0]), Image.LANCZOS)
        pixels = np.asarray(img, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - Pillow raises assorted types for damaged files
        raise BadFile(f"not a readable image ({_reason(e)})") from None
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header says: sample rate and length in frames."""

    sample_rate: int
    frames: int


def _sound_source(source: Any) -> Any:
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source


def audio_info(source: Any) -> AudioInfo:
    """An audio file's header; :class:`BadFile` when soundfile cannot read it or it holds no samples."""
    import soundfile

    try:
        info = soundfile.info(_sound_source(source))
    except Exception as e:  # noqa: BLE001 - libsndfile's errors arrive as several types
        raise BadFile(f"not a readable audio file ({_reason(e)})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise BadFile("the audio file holds no samples")
    return AudioInfo(int(info.samplerate), int(info.frames))


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``wave`` [T] from ``rate`` to ``target`` Hz by polyphase filtering (scipy's ``resample_poly``)."""
    if rate == target:
        return wave
    from scipy import signal

    g = math.gcd(int(rate), int(target))
    return signal.resample_poly(wave, target // g, rate // g).astype(np.float32)


def read_audio(source: Any, sample_rate: int, max_samples: int | None = None) -> np.ndarray:
    """An audio file (WAV, FLAC, OGG, ... anything libsndfile reads) as float32 mono [T] in [-1, 1] at
    ``sample_rate``: channels averaged, resampled when its rate differs. With ``max_samples``, a longer clip
    keeps its centre ``max_samples`` (cut before resampling, with a margin for the filter)."""
    import soundfile

    try:
        with soundfile.SoundFile(_sound_source(source)) as f:
            rate, frames = int(f.samplerate), int(f.frames)
            start = 0
            if max_samples is not None:
                # resample_poly's filter reaches 10 * max(up, down) / up input samples to each side of an output
                # sample: keep that much more of the file on each side, so the kept centre is filtered whole.
                margin = 2 * math.ceil(10 * max(rate, sample_rate) / sample_rate) + 2 if rate != sample_rate else 0
                keep = min(frames, math.ceil(max_samples * rate / sample_rate) + 2 * margin)
                step = rate // math.gcd(rate, sample_rate)  # start on the output grid: the samples are the whole file's
                start = (frames - keep) // 2 // step * step
                f.seek(start)
                frames = keep
            data = f.read(frames, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile's errors arrive as several types
        raise BadFile(f"not a readable audio file ({_reason(e)})") from None
    if data.size == 0:
        raise BadFile("the audio file holds no samples")
    wave = resample(data.mean(axis=1), rate, sample_rate)
    if max_samples is not None and len(wave) > max_samples:
        cut = (len(wave) - max_samples) // 2
        wave = wave[cut : cut + max_samples]
    if not np.isfinite(wave).all():
        raise BadFile("the audio holds NaN or infinite samples")
    return np.clip(wave, -1.0, 1.0).astype(np.float32)
