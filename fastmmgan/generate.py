"""``python -m fastmmgan.generate RUN_OR_CKPT --n 16 --given text="seven" --out DIR``: samples as PNG/WAV/TXT."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .cli import add_verbosity_flags, configure_logging, run_cli
from .errors import FastMMGANError, first_line
from .media import image_grid, read_wav, save_captions, save_png, save_wav
from .modalities import ModalitySpec
from .sampler import Sampler, load_generator


def parse_given(items: list[str], specs: tuple[ModalitySpec, ...]) -> dict[str, Any]:
    """``name=value`` pairs -> raw conditions: text is the caption itself, images a picture file
    (converted to grey or RGB as the model's images are, resized to the model's size) or .npy, audio a WAV
    file at the model's rate or .npy."""
    by_name = {s.name: s for s in specs}
    given: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise FastMMGANError(f"--given {item!r}: expected name=value, e.g. text=\"seven\"")
        if name not in by_name:
            raise FastMMGANError(f"--given: unknown modality {name!r} (this model has: {', '.join(by_name)})")
        if name in given:
            raise FastMMGANError(f"--given: modality {name!r} given twice")
        given[name] = value if by_name[name].kind == "text" else _load_condition(by_name[name], Path(value))
    return given


def _load_condition(spec: ModalitySpec, path: Path) -> np.ndarray:
    """A condition file as an array. Damaged files raise many unrelated exception types inside the readers
    (numpy's header parser: SyntaxError, TokenError; PIL: SyntaxError, ValueError, DecompressionBombError;
    scipy: ValueError, struct.error), so each reader's failure becomes one clear error here."""
    if not path.is_file():
        raise FastMMGANError(f"--given {spec.name}: file not found: {path}")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - see the docstring
            raise FastMMGANError(f"--given {spec.name}: cannot read {path} as .npy: {first_line(e)}") from None
    if spec.kind == "image":
        # Pillow's BILINEAR widens its kernel by the downscale factor, so shrinking a photo averages the pixels
        # (antialiased) rather than sampling them.
        try:
            with Image.open(path) as img:
                picture = img.convert("L" if spec.channels == 1 else "RGB").resize(spec.image_shape[::-1], Image.BILINEAR)
        except Exception as e:  # noqa: BLE001 - see the docstring
            raise FastMMGANError(f"--given {spec.name}: cannot read {path} as an image: {first_line(e)}") from None
        return np.asarray(picture, dtype=np.float32) / 255.0
    try:
        wave, _ = read_wav(path, sample_rate=spec.sample_rate)
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise FastMMGANError(f"--given {spec.name}: cannot read {path} as a WAV file: {first_line(e)}") from None
    return wave


def write_outputs(sampler: Sampler, result: dict[str, Any], out: Path) -> list[Path]:
    """One file per modality in ``result``: ``<name>.png`` grid (grey or RGB as the model's images are),
    ``<name>.wav`` (clips separated by silence), ``<name>.txt``."""
    written = []
    for spec in sampler.modalities:
        if spec.name not in result:
            continue
        data = result[spec.name]
        if spec.kind == "image":
            written.append(save_png(out / f"{spec.name}.png", image_grid(data)))
        elif spec.kind == "text":
            written.append(save_captions(out / f"{spec.name}.txt", data))
        else:
            gap = np.zeros(spec.sample_rate // 8, dtype=np.float32)
            clips = np.concatenate([np.concatenate([w, gap]) for w in data])
            written.append(save_wav(out / f"{spec.name}.wav", clips, spec.sample_rate))
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmmgan.generate", description=__doc__)
    p.add_argument("model", help="run directory or checkpoint file")
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--given", action="append", default=[], metavar="NAME=VALUE",
                   help="a condition, repeatable: text=\"seven\", image=digit.png, audio=tone.wav")
    p.add_argument("--seed", type=int, default=None, help="noise seed (same seed, same output)")
    p.add_argument("--modality", action="append", default=None, metavar="NAME",
                   help="write only this modality, repeatable (default: all; decoding audio is the slow part)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default="samples", help="output directory")
    add_verbosity_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    sampler = load_generator(args.model, device=args.device)
    given = parse_given(args.given, sampler.modalities)
    result = sampler.sample(args.n, given=given, seed=args.seed, modalities=args.modality)
    for path in write_outputs(sampler, result, Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
