"""``python -m fastmmgan.train``: train a multimodal GAN on the built-in digits or a user .npz file."""

from __future__ import annotations

import argparse
import json
import logging
import os
import types
from dataclasses import fields
from pathlib import Path
from typing import Union, get_args, get_origin, get_type_hints

from .checkpoint import CHECKPOINT_DIR, LAST, newest_checkpoint
from .cli import add_verbosity_flags, configure_logging, run_cli
from .config import TrainConfig
from .distributed import shutdown
from .errors import FastMMGANError, first_line

_DEFAULTS = TrainConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastmmgan.train",
        description="Train one generator for every direction (text->image, audio->image, image->text, noise->all).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_flags(p)
    p.add_argument("--config", default=None, metavar="CONFIG_JSON",
                   help="start from a run's config.json (re-runs that run); flags given as well override its values")
    p.add_argument("--out", default=None,
                   help="run directory (config, checkpoints, samples, metrics); default runs/<dataset or data file name>")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint: a path, or with no value the --out run's last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_verbosity_flags(p)
    return p


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field (``batch_size`` -> ``--batch-size``), its default, type and help
    taken from the field, so no setting is missing from the command line or documented twice."""
    hints = get_type_hints(TrainConfig)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in fields(TrainConfig):
        extra = dict(f.metadata)
        group = extra.pop("group", None)
        if group and group not in groups:
            groups[group] = parser.add_mutually_exclusive_group()
        target = groups[group] if group else parser
        kind = {k: v for k, v in _flag_kind(hints[f.name]).items() if k not in extra}
        target.add_argument("--" + f.name.replace("_", "-"), default=f.default, **kind, **extra)


def _flag_kind(hint: object) -> dict[str, object]:
    """argparse's ``type``/``nargs``/``action`` for a config field's type (``X | None`` parses as X)."""
    args = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) in (Union, types.UnionType) else []
    hint = args[0] if args else hint
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(hint) is tuple:
        items = get_args(hint)
        if len(items) == 2 and items[1] is Ellipsis:
            return {"type": widths_list}
        return {"type": items[0], "nargs": len(items)}
    return {"type": hint}


def widths_list(text: str) -> tuple[int, ...]:
    """``"128,256"`` -> (128, 256); argparse turns the ValueError into a usage error (exit 2)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths such as 128,256, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def load_config_json(path: str) -> dict[str, object]:
    """A run's config.json as parser defaults (so flags given on the command line still win)."""
    try:
        saved = TrainConfig.from_dict(json.loads(Path(path).read_text()))
    except OSError as e:
        raise FastMMGANError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:  # JSON errors; FastMMGANError for values a config cannot hold
        raise FastMMGANError(f"--config {path}: not a run config: {first_line(e)}") from None
    return saved.to_dict()


def resumed_config(args: argparse.Namespace) -> dict[str, object] | None:
    """The config saved in the checkpoint ``--resume`` names, or None where a bare ``--resume`` finds none yet
    (:func:`main` then says so)."""
    path = resume_path(args, run_dir(args, config_from_args(args)))
    if path is None or (args.resume == "auto" and not path.is_file()):
        return None
    from .checkpoint import load_checkpoint  # torch, only when resuming

    return TrainConfig.from_dict(load_checkpoint(path)["config"]).to_dict()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line over the defaults: TrainConfig's, or those of ``--config`` when given, or when resuming
    those the checkpoint was trained with (so a run keeps its recipe when the library's defaults change)."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    saved = None
    if first.config is not None:
        saved = load_config_json(first.config)
    elif first.resume is not None:
        saved = resumed_config(first)
    if saved is not None:
        if saved.get("data") is not None:
            saved["dataset"] = _DEFAULTS.dataset  # --data and --dataset exclude each other; data wins
        parser.set_defaults(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    return parser.parse_args(argv)


def default_out(cfg: TrainConfig) -> Path:
    """``runs/<name>``: the data file's name without its suffix, or the built-in dataset's name."""
    return Path("runs") / (Path(cfg.data).stem if cfg.data else cfg.dataset)


def run_dir(args: argparse.Namespace, cfg: TrainConfig) -> Path:
    """``--out``, or :func:`default_out` for ``cfg``."""
    return Path(args.out) if args.out is not None else default_out(cfg)


def resume_path(args: argparse.Namespace, out: Path) -> Path | None:
    """The checkpoint ``--resume`` names: its path, or for a bare ``--resume`` run ``out``'s newest one
    (:func:`~fastmmgan.checkpoint.newest_checkpoint`; None without ``--resume``)."""
    if args.resume is None:
        return None
    return newest_checkpoint(out) if args.resume == "auto" else Path(args.resume)


def check_out_dir(out: Path) -> None:
    """Fail early, with the path, when the run directory cannot be written."""
    target = out
    while not target.exists():
        target = target.parent
    if not target.is_dir() or not os.access(target, os.W_OK):
        raise FastMMGANError(f"--out {out}: {target} is not a writable directory")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args)
    cfg = config_from_args(args)
    out = run_dir(args, cfg)
    check_out_dir(out)
    resume = resume_path(args, out)
    if args.resume == "auto" and not resume.is_file():
        raise FastMMGANError(f"--resume: no checkpoint to resume in {out}")
    if args.resume == "auto" and resume.name != LAST:
        logging.getLogger("fastmmgan.train").warning(
            "--resume: %s has no %s (the run was stopped before pointing it at its newest checkpoint); resuming from "
            "%s", out / CHECKPOINT_DIR, LAST, resume.name)
    from .trainer import Trainer

    trainer = Trainer(cfg, out, resume=resume, progress=not args.no_progress)
    try:
        trainer.run(progress=not args.no_progress)
    finally:
        shutdown(trainer.dist)
    if not trainer.dist.is_main:
        return 0
    print(f"done: {trainer.step} steps; samples in {out / 'samples'}, checkpoint {out / CHECKPOINT_DIR / LAST}")
    return 0


if __name__ == "__main__":
    run_cli(main)
