"""``python -m fastmmgan.train``: train a multimodal GAN on the built-in digits or a user .npz file."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .checkpoint import CHECKPOINT_DIR, LAST
from .cli import add_verbosity_flags, configure_logging, run_cli
from .config import COMPILE_BACKENDS, PRECISIONS, TrainConfig
from .distributed import shutdown
from .errors import FastMMGANError, first_line
from .losses import LOSSES

_DEFAULTS = TrainConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastmmgan.train",
        description="Train one generator for every direction (text->image, audio->image, image->text, noise->all).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default=_DEFAULTS.dataset, help="built-in dataset (digits: image, caption, keypad tone)")
    src.add_argument("--data", default=None, help="user .npz file: one array per modality plus 'kinds' (see README)")
    p.add_argument("--steps", type=int, default=_DEFAULTS.steps, help="total training steps (D update + G update each)")
    p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="samples per step")
    p.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="Adam learning rate of the generator")
    p.add_argument("--d-lr", type=float, default=_DEFAULTS.d_lr, help="Adam learning rate of the discriminator")
    p.add_argument("--loss", choices=LOSSES, default=_DEFAULTS.loss, help="GAN loss (ns = non-saturating)")
    p.add_argument("--gp-weight", type=float, default=_DEFAULTS.gp_weight, help="gradient penalty weight for wgan-gp")
    p.add_argument("--r1-weight", type=float, default=_DEFAULTS.r1_weight,
                   help="gamma of the R1 penalty on the discriminator's gradient at real data (0: off; not with wgan-gp)")
    p.add_argument("--diversity-weight", type=float, default=_DEFAULTS.diversity_weight,
                   help="weight of the mode-seeking term that keeps samples from noise diverse (0: off)")
    p.add_argument("--mmd-weight", type=float, default=_DEFAULTS.mmd_weight,
                   help="weight of the MMD between samples from noise and real data (keeps every cluster)")
    p.add_argument("--z-dim", type=int, default=_DEFAULTS.z_dim, help="noise size")
    p.add_argument("--z-components", type=int, default=None,
                   help="mixture components of the noise: the argmax of its first K entries picks one "
                        "(default: z-dim; 0: plain Gaussian noise)")
    p.add_argument("--g-width", type=int, default=_DEFAULTS.g_width, help="generator width (shared space size)")
    p.add_argument("--g-depth", type=int, default=_DEFAULTS.g_depth, help="generator dense layers after the fusion")
    p.add_argument("--d-width", type=int, default=_DEFAULTS.d_width, help="discriminator width")
    p.add_argument("--d-depth", type=int, default=_DEFAULTS.d_depth, help="discriminator dense layers after the fusion")
    p.add_argument("--g-widths", type=widths_list, default=None,
                   help="generator widths per layer, the fusion's first (e.g. 128,256: the seeds' 100-128-256-784); "
                        "overrides --g-width/--g-depth")
    p.add_argument("--d-widths", type=widths_list, default=None,
                   help="discriminator widths per layer, the fusion's first (e.g. 256,128: the seeds' 784-256-128-1); "
                        "overrides --d-width/--d-depth")
    p.add_argument("--mbstd-group", type=int, default=_DEFAULTS.mbstd_group,
                   help="rows per group of the discriminator's minibatch-stddev feature (0: off, the seeds' plain MLP)")
    p.add_argument("--ema-decay", type=float, default=_DEFAULTS.ema_decay, help="decay of the EMA generator used for samples")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="seed of data split, init, batches and noise")
    p.add_argument("--device", default=_DEFAULTS.device, help="auto | cpu | cuda (auto: CUDA when available)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=_DEFAULTS.compile,
                   help="use the compiled training step (--no-compile: the reference eager step)")
    p.add_argument("--compile-backend", choices=COMPILE_BACKENDS, default=_DEFAULTS.compile_backend,
                   help="torch.compile backend of the step: inductor (fast), or aot_eager (the same autograd graphs "
                        "run op by op: with FASTMMGAN_KERNELS=triton TRITON_INTERPRET=1 it runs the CUDA step's "
                        "Triton kernels on CPU)")
    p.add_argument("--precision", choices=PRECISIONS, default=_DEFAULTS.precision,
                   help="autocast of the losses' forward and backward: auto (bf16 on CUDA, fp32 on CPU), bf16, fp32; "
                        "weights, gradients and Adam stay fp32")
    p.add_argument("--config", default=None, metavar="CONFIG_JSON",
                   help="start from a run's config.json (re-runs that run); flags given as well override its values")
    p.add_argument("--out", default=None,
                   help="run directory (config, checkpoints, samples, metrics); default runs/<dataset or data file name>")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint: a path, or with no value the --out run's last checkpoint")
    p.add_argument("--ckpt-every", type=int, default=_DEFAULTS.ckpt_every, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=_DEFAULTS.keep_checkpoints, help="how many step checkpoints to keep")
    p.add_argument("--sample-every", type=int, default=_DEFAULTS.sample_every,
                   help="steps between sample sheets (0: only at the end)")
    p.add_argument("--eval-every", type=int, default=_DEFAULTS.eval_every,
                   help="steps between quality metrics in metrics.jsonl and TensorBoard (0: never)")
    p.add_argument("--log-every", type=int, default=_DEFAULTS.log_every, help="steps between metrics lines")
    p.add_argument("--max-bad-steps", type=int, default=_DEFAULTS.max_bad_steps,
                   help="stop after this many non-finite (skipped) updates in a row")
    p.add_argument("--dist-timeout", type=float, default=_DEFAULTS.dist_timeout,
                   help="seconds a process waits for the others under torchrun before failing")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_verbosity_flags(p)
    return p


def widths_list(text: str) -> tuple[int, ...]:
    """``"128,256"`` -> (128, 256); argparse turns the ValueError into a usage error (exit 2)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths such as 128,256, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = [f for f in TrainConfig.__dataclass_fields__ if hasattr(args, f)]
    return TrainConfig(**{name: getattr(args, name) for name in names})


def load_config_json(path: str) -> dict[str, object]:
    """A run's config.json as parser defaults (so flags given on the command line still win)."""
    try:
        saved = TrainConfig.from_dict(json.loads(Path(path).read_text()))
    except OSError as e:
        raise FastMMGANError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:  # JSON errors; FastMMGANError for values a config cannot hold
        raise FastMMGANError(f"--config {path}: not a run config: {first_line(e)}") from None
    return saved.to_dict()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line over the defaults: TrainConfig's, or those of ``--config`` when given."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config is not None:
        saved = load_config_json(first.config)
        if saved.get("data") is not None:
            saved["dataset"] = _DEFAULTS.dataset  # --data and --dataset exclude each other; data wins
        parser.set_defaults(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    return parser.parse_args(argv)


def default_out(cfg: TrainConfig) -> Path:
    """``runs/<name>``: the data file's name without its suffix, or the built-in dataset's name."""
    return Path("runs") / (Path(cfg.data).stem if cfg.data else cfg.dataset)


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
    out = Path(args.out) if args.out is not None else default_out(cfg)
    check_out_dir(out)
    resume = None
    if args.resume == "auto":
        resume = out / CHECKPOINT_DIR / LAST
        if not resume.is_file():
            raise FastMMGANError(f"--resume: no checkpoint to resume in {out}")
    elif args.resume is not None:
        resume = Path(args.resume)
    from .trainer import Trainer

    trainer = Trainer(cfg, out, resume=resume)
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
