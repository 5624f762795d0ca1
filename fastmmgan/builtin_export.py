"""The built-in datasets written as files in the ``imagefolder`` layout, the way a user's data arrives.

``colour-digits``: scikit-learn's 1797 handwritten digits upscaled to 16x16 and drawn in one of six named
colours on a dark background, a caption naming colour and digit ("a red seven", "the number 7 in blue",
...) and the digit's keypad tone. It tests compositional conditioning: a caption sets two attributes at
once. ``digits``: the built-in grey 8x8 set, as files. Both are written as PNG + WAV files with a
``metadata.jsonl`` (``image_file_name``, ``audio_file_name``, ``caption``, ``label`` = the digit), so
``--dataset colour-digits`` trains through the same folder reader and cache as a user's folder.

``python -m fastmmgan.data export colour-digits DIR`` writes one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .checkpoint import file_lock
from .data import DIGIT_WORDS, SAMPLE_RATE, digit_caption, dtmf_tone
from .errors import FastMMGANError
from .media import wav_bytes

BUILTIN_VERSION = 1
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 210, 220),
}
"""The six colours a colour-digit is drawn in, by the name its captions use."""
COLOUR_TEMPLATES = (
    "a {colour} {word}",
    "the number {digit} in {colour}",
    "a {colour} digit {word}",
    "{word} in {colour}",
    "the {colour} number {digit}",
    "a handwritten {colour} {word}",
    "digit {digit} drawn in {colour}",
    "the {colour} digit {word}",
)
COLOUR_SIZE = 16
_BACKGROUND = 18.0


def colour_caption(digit: int, colour: str, rng: np.random.Generator) -> str:
    template = COLOUR_TEMPLATES[rng.integers(len(COLOUR_TEMPLATES))]
    return template.format(colour=colour, word=DIGIT_WORDS[digit], digit=digit)


def colour_digit_image(digit_image: np.ndarray, colour: str, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 digit (values 0-16) as a 16x16 RGB uint8 image: the strokes in ``colour`` (brightness jittered
    by up to 10%) over a dark, slightly noisy background."""
    ink = Image.fromarray((digit_image / 16.0 * 255).astype(np.uint8), mode="L")
    alpha = np.asarray(ink.resize((COLOUR_SIZE, COLOUR_SIZE), Image.BICUBIC), dtype=np.float32)[..., None] / 255.0
    rgb = np.asarray(COLOURS[colour], dtype=np.float32) * rng.uniform(0.9, 1.0)
    background = _BACKGROUND + rng.normal(0.0, 3.0, size=(COLOUR_SIZE, COLOUR_SIZE, 1))
    return np.clip(background * (1 - alpha) + rgb * alpha, 0, 255).round().astype(np.uint8)


def _rows(name: str, seed: int) -> list[tuple[np.ndarray, str, np.ndarray, int]]:
    """(image uint8, caption, tone float32 [1024], digit) per sample of built-in ``name``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rng = np.random.default_rng(seed)
    rows = []
    names = list(COLOURS)
    for image, digit in zip(bunch.images, bunch.target.astype(int), strict=True):
        if name == "colour-digits":
            colour = names[int(rng.integers(len(names)))]
            rows.append((colour_digit_image(image, colour, rng), colour_caption(digit, colour, rng),
                         dtmf_tone(digit, rng), int(digit)))
        else:
            grey = (image / 16.0 * 255).round().astype(np.uint8)
            rows.append((grey, digit_caption(digit, rng), dtmf_tone(digit, rng), int(digit)))
    return rows


def export_builtin(name: str, out: str | Path, seed: int = 0) -> Path:
    """Write built-in dataset ``name`` (``colour-digits`` or ``digits``) into folder ``out`` in the imagefolder
    layout; written into a temporary folder beside it and renamed, so ``out`` is complete or absent."""
    if name not in ("colour-digits", "digits"):
        raise FastMMGANError(f"unknown built-in dataset {name!r} (colour-digits, digits)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FastMMGANError(f"{out} exists and is not empty")
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "audio").mkdir()
    try:
        records = []
        for i, (image, caption, tone, digit) in enumerate(_rows(name, seed)):
            stem = f"{i:05d}"
            Image.fromarray(image).save(tmp / "images" / f"{stem}.png")
            (tmp / "audio" / f"{stem}.wav").write_bytes(wav_bytes(tone, SAMPLE_RATE))
            records.append({"image_file_name": f"images/{stem}.png", "audio_file_name": f"audio/{stem}.wav",
                            "caption": caption, "label": digit})
        (tmp / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def builtin_folder(name: str, root: Path) -> Path:
    """The files of built-in ``name`` under cache ``root``, written on first use (under a lock: processes
    started together write it once)."""
    folder = root / "builtin" / f"{name}-v{BUILTIN_VERSION}"
    if (folder / "metadata.jsonl").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.parent / f".{folder.name}.lock"):
        if not (folder / "metadata.jsonl").is_file():  # export_builtin renames a complete folder into place
            shutil.rmtree(folder, ignore_errors=True)
            export_builtin(name, folder)
    return folder

