"""``python -m fastmmgan.evaluate RUN_OR_CKPT_OR_ONNX [--json] [--n N] [--seed S]``: offline quality metrics.

Conditions come from the test split of the run's own dataset and seed (read from the checkpoint, or for an
``.onnx`` file from ``--run`` or a ``config.json`` beside it); the evaluators are cached as ``RUN/evaluators.pt``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import CHECKPOINT_DIR, load_checkpoint, resolve_checkpoint
from .cli import add_verbosity_flags, configure_logging, run_cli
from .config import TrainConfig
from .data import MultimodalDataset
from .errors import FastMMGANError
from .evaluator import Evaluator, missing_classes
from .evaluator_nets import CACHE_NAME
from .prepare import open_dataset
from .sampler import generator_from_state


def split_for(
    cfg: TrainConfig, specs: list[dict[str, Any]] | None = None
) -> tuple[MultimodalDataset, MultimodalDataset]:
    """The train and test splits a run was trained with; ``specs`` (from a checkpoint) must still match."""
    ds, _ = open_dataset(cfg, progress=False)
    if specs is not None and [s.to_dict() for s in ds.specs] != specs:
        source = cfg.data or cfg.dataset
        raise FastMMGANError(f"the dataset {source} no longer matches the one the model was trained on")
    return ds.split(cfg.test_fraction, cfg.seed)


def _run_dir(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent


def load_model(path: Path, run: Path | None) -> tuple[Any, TrainConfig, list[dict[str, Any]] | None, Path, int | None]:
    """(generator or ONNX wrapper, training config, saved specs, run directory for the cache, step)."""
    if path.suffix == ".onnx":
        return _load_onnx(path, run)
    state = load_checkpoint(path)
    try:
        generator, cfg = generator_from_state(state), TrainConfig.from_dict(state["config"])
    except FastMMGANError as e:
        raise FastMMGANError(f"{path}: {e}") from None
    return generator, cfg, state["specs"], _run_dir(resolve_checkpoint(path)), state.get("step")


def _load_onnx(path: Path, run: Path | None) -> tuple[Any, TrainConfig, None, Path, int | None]:
    if not path.is_file():
        raise FastMMGANError(f"ONNX model not found: {path}")
    try:
        from .export import OnnxGenerator
    except ImportError as e:
        raise FastMMGANError(f"cannot evaluate {path}: the ONNX runtime wrapper is unavailable ({e})") from None
    model = OnnxGenerator(path)
    cfg, run_dir = _onnx_run_config(path, run)
    meta = getattr(model, "metadata", None)
    if getattr(meta, "config_hash", cfg.model_hash()) != cfg.model_hash():
        raise FastMMGANError(f"{path} was not exported from the run in {run_dir} (its model or dataset differ)")
    return model, cfg, None, run_dir, getattr(meta, "step", None)


def _onnx_run_config(path: Path, run: Path | None) -> tuple[TrainConfig, Path]:
    """The config of the run an ONNX file came from: ``--run``, else a ``config.json`` beside it or one up."""
    if run is not None:
        state = load_checkpoint(run)
        return TrainConfig.from_dict(state["config"]), _run_dir(resolve_checkpoint(run))
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.json").is_file():
            try:
                return TrainConfig.from_dict(json.loads((folder / "config.json").read_text())), folder
            except (ValueError, TypeError) as e:
                raise FastMMGANError(f"{folder / 'config.json'} is not a readable run config: {e}") from None
    raise FastMMGANError(f"{path}: no config.json beside it; pass --run RUN (the run it was exported from) "
                         "so the evaluation uses that run's dataset and test split")


def _pct(value: float) -> str:
    return f"{100 * value:5.1f}%"


def format_table(metrics: Mapping[str, float], names: list[str], header: list[str]) -> str:
    """The readable report: conditional accuracies, from-noise class statistics, distances with their floors."""
    lines = [*header, ""]
    pairs = [(a, b) for a in names for b in names if a != b and f"acc/{a}_to_{b}" in metrics]
    if pairs:
        lines.append("conditional accuracy (evaluator's label of the output == the condition's label)")
        lines += [f"  {f'{a} -> {b}':<24}{_pct(metrics[f'acc/{a}_to_{b}'])}" for a, b in pairs]
        ceilings = ", ".join(f"{n} {_pct(metrics[f'evaluator_acc/{n}']).strip()}" for n in names)
        lines += [f"  evaluators on real test data: {ceilings}", ""]
    colour = [(a, b) for a, b in pairs if f"colour_acc/{a}_to_{b}" in metrics]
    if colour:
        lines.append("colour named by the condition's caption (images: the strokes' colour; captions: the colour word)")
        lines += [f"  {f'{a} -> {b}':<24}{_pct(metrics[f'colour_acc/{a}_to_{b}'])}   colour and label both right "
                  f"{_pct(metrics[f'both_acc/{a}_to_{b}']).strip()}" for a, b in colour]
        reads = ", ".join(f"{k.split('/')[1]} {_pct(v).strip()}" for k, v in metrics.items() if k.startswith("colour_acc_real/"))
        lines += [f"  colour reader on real test images: {reads}", ""]
    pairs = [(a, b) for a in names for b in names if a != b and f"spread/{a}_to_{b}" in metrics]
    if pairs:
        lines.append("conditional diversity (8 samples per condition; spread: within-condition distance / real "
                     "within-class, 1.0 = as varied as the data)")
        lines.append(f"  {'direction':<24}{'spread':>8}{'(eval space)':>14}{'class recall':>14}{'(floor)':>9}"
                     f"{'distinct':>10}{'(data)':>8}")
        for a, b in pairs:
            key = f"{a}_to_{b}"
            distinct = (f"{metrics[f'distinct/{key}']:>10.2f}{metrics[f'distinct_real/{key}']:>8.2f}"
                        if f"distinct/{key}" in metrics else "")
            lines.append(f"  {f'{a} -> {b}':<24}{metrics[f'spread/{key}']:>8.2f}{metrics[f'spread_embed/{key}']:>14.2f}"
                         f"{metrics[f'cond_recall/{key}']:>14.3f}{metrics[f'cond_recall_floor/{key}']:>9.3f}{distinct}")
        lines.append("")
    if "agreement" in metrics:
        lines.append("from noise")
        lines.append(f"  {'agreement (all same label)':<28}{_pct(metrics['agreement'])}")
        for name in names:
            missing = ", ".join(map(str, missing_classes(metrics, name))) or "none"
            lines.append(f"  {f'coverage {name}':<28}{_pct(metrics[f'coverage/{name}'])}   missing: {missing}")
        for name in names:
            prefix = f"class_ratio/{name}/"
            ratios = " ".join(f"{k[len(prefix):]}:{v:.2f}" for k, v in metrics.items() if k.startswith(prefix))
            lines.append(f"  {f'rate vs real {name}':<28}{ratios}")
        lines.append("")
    lines.append("evaluator feature space: generated vs real test (floor: real train vs real test)")
    lines.append(f"  {'modality':<10}{'Frechet':>10}{'floor':>10}{'ratio':>8}{'precision':>11}{'(floor)':>9}"
                 f"{'recall':>9}{'(floor)':>9}")
    for name in names:
        fid, floor = metrics[f"fid/{name}"], metrics[f"fid_floor/{name}"]
        ratio = fid / floor if floor > 0 else math.inf
        lines.append(f"  {name:<10}{fid:>10.3f}{floor:>10.3f}{ratio:>7.2f}x{metrics[f'precision/{name}']:>11.3f}"
                     f"{metrics[f'precision_floor/{name}']:>9.3f}{metrics[f'recall/{name}']:>9.3f}"
                     f"{metrics[f'recall_floor/{name}']:>9.3f}")
    return "\n".join(lines)


def _finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmmgan.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run directory, checkpoint file or exported .onnx file")
    p.add_argument("--n", type=int, default=1000, help="generated samples per direction")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and of the order of the conditions")
    p.add_argument("--run", default=None, help="for an .onnx file: the run (or checkpoint) it was exported from")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    add_verbosity_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    if args.n < 2:
        raise FastMMGANError(f"--n must be at least 2, got {args.n}")
    start = time.perf_counter()
    model, cfg, specs, run_dir, step = load_model(Path(args.model), None if args.run is None else Path(args.run))
    train_ds, test_ds = split_for(cfg, specs)
    evaluator = Evaluator.build(train_ds, test_ds, cache_path=run_dir / CACHE_NAME, seed=cfg.seed)
    metrics = evaluator.evaluate(model, n=args.n, seed=args.seed)
    seconds = time.perf_counter() - start
    names = list(train_ds.names)
    missing = {name: missing_classes(metrics, name) for name in names} if "coverage" in metrics else {}
    if args.json:
        report = {"model": args.model, "step": step, "n": args.n, "seed": args.seed, "test_samples": len(test_ds),
                  "seconds": round(seconds, 3), "metrics": _finite(metrics), "missing_classes": missing}
        print(json.dumps(report, indent=2))
        return 0
    at_step = "" if step is None else f" (step {step})"
    header = [f"model  {args.model}{at_step}",
              f"data   {cfg.data or cfg.dataset}: test split of {len(test_ds)} samples (seed {cfg.seed}, "
              f"test fraction {cfg.test_fraction}); {args.n} generated samples per direction, seed {args.seed}",
              f"time   {seconds:.1f} s"]
    print(format_table(metrics, names, header))
    return 0


if __name__ == "__main__":
    run_cli(main)
