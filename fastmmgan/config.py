"""The training configuration: one dataclass, saved as JSON with every run and checkpoint."""

from __future__ import annotations

import argparse
import hashlib
import json
import types
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from .errors import FastMMGANError
from .losses import LOSSES, check_loss
from .modalities import KINDS

ADDED_FIELDS: dict[str, Any] = {"z_components": 0, "r1_weight": 0.0, "mmd_weight": 0.0, "g_widths": None,
                                 "d_widths": None, "mbstd_group": 4, "cond_diversity_weight": 0.0,
                                 "recon_weight": 0.0, "kl_weight": 0.01, "latent_weight": 0.0, "e_width": 256,
                                 "e_depth": 2, "conditioned_components": True, "fusion": "projection",
                                 "energy_weight": 0.0, "energy_spread": 1.0, "energy_noise_rows": False,
                                 "condition_noise": 0.0, "energy_spread_kinds": "image,text,audio",
                                 "modalities": None, "image_size": None, "image_channels": None, "sample_rate": None,
                                 "clip_seconds": None, "max_vocab": 1000, "skip_bad_files": False, "cache_dir": None,
                                 "data_on_device": "auto", "prefetch": "auto"}
"""Fields added after the first release, with the values that reproduce runs saved without them."""
PRECISIONS = ("auto", "bf16", "fp32")
FUSIONS = ("projection", "attention")
ATTENTION_HEADS = 4
"""Heads of the attention fusion (its width must be a multiple)."""
COMPILE_BACKENDS = ("inductor", "aot_eager")
DATASETS = ("digits", "colour-digits")
AUTO_YES_NO = ("auto", "yes", "no")


def image_size_flag(text: str) -> tuple[int, ...]:
    """``"32"`` -> (32,), ``"32,48"`` -> (32, 48); argparse turns the error into a usage error (exit 2)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H or H,W such as 32 or 32,48, got {text!r}") from None


def _setting(default: Any, help: str, **cli: Any) -> Any:
    """A config field with its command-line help (and argparse extras such as ``choices``) beside its default:
    ``python -m fastmmgan.train`` builds one flag per field from these (see :func:`fastmmgan.train.add_config_flags`)."""
    return field(default=default, metadata={"help": help, **cli})


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as JSON or the CLI gives it: lists for tuples, ints for floats) fits the type ``hint``."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


@dataclass
class TrainConfig:
    """Everything that decides a run; each field is also a ``python -m fastmmgan.train`` flag (``--batch-size``
    for ``batch_size``) with the help text given here. The defaults train the digits model the README
    measures (2 CPU cores, about 7 minutes; machines of this kind have run it up to 1.4x slower)."""

    dataset: str = _setting("digits", "built-in dataset: digits (8x8 grey digit, caption, keypad tone) or colour-digits "
                                      "(16x16 colour digit, caption naming colour and digit, keypad tone)",
                            choices=DATASETS, group="data source")
    data: str | None = _setting(None, "your data: a folder (metadata.jsonl/metadata.csv beside the files, or one "
                                      "subfolder per class), hf:PATH (a Hugging Face dataset saved to disk, or parquet/"
                                      "arrow files), or an .npz file (see README)", group="data source")
    modalities: str | None = _setting(None, "which columns of --data to train on and their kinds, name=kind,... (e.g. "
                                            "image=image,caption=text,speech=audio; a name is a column or the "
                                            "<name>_file_name column); default: every file column and the caption")
    image_size: tuple[int, ...] | None = _setting(None, "resize every image of --data to H[,W] (antialiased); default: "
                                                        "the files' own size, which must then be the same for all",
                                                  metavar="H[,W]", type=image_size_flag)
    image_channels: int | None = _setting(None, "1 (grey) or 3 (RGB); default: the data's own, grey if every file is",
                                          choices=(1, 3))
    sample_rate: int | None = _setting(None, "resample the audio of --data to this rate in Hz (default: the most common "
                                             "rate in the files)")
    clip_seconds: float | None = _setting(None, "length of an audio clip in seconds: longer files are cropped (randomly "
                                                "in training, at the centre in evaluation), shorter ones padded "
                                                "(default: the files' median length)")
    max_vocab: int = _setting(1000, "keep the N most frequent caption words of --data (0: all); the rest are dropped and "
                                    "counted in the log")
    skip_bad_files: bool = _setting(False, "leave out unreadable files of --data (listed in the run's bad_files.jsonl) "
                                           "instead of stopping at the first")
    cache_dir: str | None = _setting(None, "where prepared datasets are kept (default: $FASTMMGAN_CACHE or "
                                           "~/.cache/fastmmgan)")
    data_on_device: str = _setting("auto", "keep the training data on the GPU: auto (when it fits in a quarter of the "
                                           "free device memory), yes, no", choices=AUTO_YES_NO)
    prefetch: str = _setting("auto", "draw the next batch in a background thread while the step runs (pinned memory "
                                     "on CUDA): auto (on CUDA when the data is not on the device), yes, no",
                             choices=AUTO_YES_NO)
    steps: int = _setting(30000, "total training steps (D update + G update each)")
    batch_size: int = _setting(64, "samples per step (global: split over torchrun's processes)")
    lr: float = _setting(2e-4, "Adam learning rate of the generator")
    d_lr: float | None = _setting(1e-4, "Adam learning rate of the discriminator")
    betas: tuple[float, float] = _setting((0.5, 0.999), "Adam betas of both optimizers", metavar=("BETA1", "BETA2"))
    loss: str = _setting("ns", "GAN loss (ns = non-saturating)", choices=LOSSES)
    gp_weight: float = _setting(10.0, "gradient penalty weight for wgan-gp")
    r1_weight: float = _setting(0.0, "gamma of the R1 penalty on the discriminator's gradient at real data (0: off; "
                                     "not with wgan-gp)")
    diversity_weight: float = _setting(1.2, "weight of the mode-seeking term that keeps samples from noise diverse (0: off)")
    mmd_weight: float = _setting(40.0, "weight of the MMD between samples from noise and real data (keeps every cluster)")
    cond_diversity_weight: float = _setting(0.0, "weight of the mode-seeking term on conditioned rows: the same "
                                                 "conditions from two noise draws must give different images and "
                                                 "audio (0: off; costs a second generator pass)")
    energy_weight: float = _setting(48.0, "weight of the conditional energy score, which makes samples of one "
                                          "condition as varied as the data: two samples of a row's conditions (two "
                                          "noise draws) must lie as far from its real sample, and from each other, "
                                          "as real samples of those conditions do (0: off, one output per "
                                          "condition; costs a second generator pass)")
    energy_spread: float = _setting(1.35, "weight of the energy score's spread half, |X - X'| / 2, against its "
                                           "pull half (1: the strictly proper score, whose minimum is the data's "
                                           "spread; above 1 it offsets the adversarial loss's pull towards one "
                                           "output per condition; must stay below sqrt(2), where the score has no "
                                           "minimum); applies to the outputs --energy-spread-kinds names")
    energy_spread_kinds: str = _setting("image", "comma-separated output kinds (image, text, audio) whose "
                                                 "energy score takes --energy-spread; the others take the "
                                                 "proper score (spread 1)")
    energy_noise_rows: bool = _setting(False, "score the rows generated from noise alone too, each against its own "
                                               "real sample (a draw of the data as a whole): the energy score of the "
                                               "unconditional distribution")
    condition_noise: float = _setting(0.3, "Gaussian noise added during training to the features of the modalities "
                                           "the generator is given, in units of each modality's feature std over "
                                           "the batch (a regulariser against learning each training sample's own "
                                           "pairing; sampling adds none; 0: off)")
    recon_weight: float = _setting(0.0, "weight of the cVAE-GAN term: conditioned rows whose noise the encoder takes from "
                                        "their own real sample must reconstruct it (0 with --latent-weight 0: no "
                                        "encoder)")
    kl_weight: float = _setting(0.01, "weight of the encoder's KL divergence to the noise prior (per sample, summed "
                                      "over noise dimensions)")
    latent_weight: float = _setting(0.0, "weight of latent regression: the encoder must recover the noise of "
                                         "conditioned rows from what the generator made of it")
    e_width: int = _setting(256, "encoder width (with --recon-weight or --latent-weight)")
    e_depth: int = _setting(2, "encoder dense layers after the fusion")
    z_dim: int = _setting(64, "noise size")
    z_components: int | None = _setting(None, "mixture components of the noise: the argmax of its first K entries picks "
                                               "one (default: z-dim; 0: plain Gaussian noise)")
    conditioned_components: bool = _setting(True, "feed the noise's mixture component to rows given a modality too "
                                                   "(--no-conditioned-components: only to rows generated from noise "
                                                   "alone, where the condition does not pick the cluster)")
    fusion: str = _setting("projection", "how G, D and the encoder fuse the modalities into the shared space: "
                                         "projection (masked mean of per-modality projections) or attention "
                                         "(masked self-attention over one token per modality)", choices=FUSIONS)
    g_width: int = _setting(512, "generator width (shared space size)")
    g_depth: int = _setting(2, "generator dense layers after the fusion")
    d_width: int = _setting(256, "discriminator width")
    d_depth: int = _setting(2, "discriminator dense layers after the fusion")
    g_widths: tuple[int, ...] | None = _setting(None, "generator widths per layer, the fusion's first (e.g. 128,256: the "
                                                      "seeds' 100-128-256-784); overrides --g-width/--g-depth")
    d_widths: tuple[int, ...] | None = _setting(None, "discriminator widths per layer, the fusion's first (e.g. 256,128: "
                                                      "the seeds' 784-256-128-1); overrides --d-width/--d-depth")
    mbstd_group: int = _setting(4, "rows per group of the discriminator's minibatch-stddev feature (0: off, the seeds' "
                                   "plain MLP)")
    ema_decay: float = _setting(0.999, "decay of the EMA generator used for samples")
    seed: int = _setting(0, "seed of data split, init, batches and noise")
    test_fraction: float = _setting(0.2, "share of the data held out as the test split (metrics, conditions of samples)")
    device: str = _setting("auto", "auto | cpu | cuda | cuda:N (auto: CUDA when available)")
    compile: bool = _setting(True, "use the compiled training step (--no-compile: the reference eager step)")
    compile_backend: str = _setting("inductor", "torch.compile backend of the step: inductor (fast), or aot_eager (the "
                                                "same autograd graphs run op by op: with FASTMMGAN_KERNELS=triton "
                                                "TRITON_INTERPRET=1 it runs the CUDA step's Triton kernels on CPU)",
                                    choices=COMPILE_BACKENDS)
    precision: str = _setting("auto", "autocast of the losses' forward and backward: auto (bf16 on CUDA, fp32 on CPU), "
                                      "bf16, fp32; weights, gradients and Adam stay fp32", choices=PRECISIONS)
    ckpt_every: int = _setting(1000, "steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = _setting(3, "how many step checkpoints to keep")
    sample_every: int = _setting(1000, "steps between sample sheets (0: only at the end)")
    eval_every: int = _setting(0, "steps between quality metrics in metrics.jsonl and TensorBoard (0: never)")
    log_every: int = _setting(50, "steps between metrics lines")
    max_bad_steps: int = _setting(20, "stop after this many non-finite (skipped) updates in a row")
    dist_timeout: float = _setting(300.0, "seconds a process waits for the others under torchrun before failing")

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                hint = hints[f.name]
                expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
                raise FastMMGANError(f"{f.name.replace('_', '-')}: expected {expected}, got {value!r:.60}")
        self.betas = tuple(self.betas)
        check_loss(self.loss)
        for name in ("g_widths", "d_widths"):
            widths = getattr(self, name)
            if widths is not None:
                widths = tuple(int(w) for w in widths)
                if len(widths) < 2 or min(widths) <= 0:
                    raise FastMMGANError(
                        f"{name.replace('_', '-')} needs the fusion's width and at least one layer's, all positive "
                        f"(e.g. 128,256), got {','.join(map(str, widths))}"
                    )
                setattr(self, name, widths)
        if self.mbstd_group < 0:
            raise FastMMGANError(f"mbstd-group must be >= 0 (0: off), got {self.mbstd_group}")
        positive = ("steps", "batch_size", "z_dim", "g_width", "g_depth", "d_width", "d_depth", "e_width", "e_depth",
                    "keep_checkpoints",
                    "max_bad_steps", "dist_timeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("ckpt_every", "sample_every", "eval_every", "log_every"):
            if getattr(self, name) < 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("diversity_weight", "r1_weight", "mmd_weight", "cond_diversity_weight", "energy_weight", "recon_weight",
                     "kl_weight", "latent_weight", "condition_noise"):
            if not getattr(self, name) >= 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        unknown = [k for k in self.energy_spread_kinds.split(",") if k not in KINDS]
        if unknown:
            raise FastMMGANError(f"energy-spread-kinds: unknown kind {unknown[0]!r} (expected a comma-separated subset of "
                                 f"{','.join(KINDS)})")
        if not 0.0 <= self.energy_spread < 2**0.5:
            raise FastMMGANError(f"energy-spread must be in [0, sqrt(2) = 1.414), got {self.energy_spread}")
        for name in ("lr", "gp_weight"):
            if not getattr(self, name) > 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.z_components is None:
            self.z_components = self.z_dim
        if not 0 <= self.z_components <= self.z_dim:
            raise FastMMGANError(f"z-components must be in [0, z-dim={self.z_dim}], got {self.z_components}")
        if self.d_lr is not None and not self.d_lr > 0:
            raise FastMMGANError(f"d-lr must be positive, got {self.d_lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise FastMMGANError(f"ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.test_fraction < 1.0:
            raise FastMMGANError(f"test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.compile_backend not in COMPILE_BACKENDS:
            expected = ", ".join(COMPILE_BACKENDS)
            raise FastMMGANError(f"unknown compile-backend {self.compile_backend!r} (expected one of {expected})")
        if self.fusion not in FUSIONS:
            raise FastMMGANError(f"unknown fusion {self.fusion!r} (expected one of {', '.join(FUSIONS)})")
        if self.fusion == "attention":
            firsts = {"g-width": (self.g_widths or (self.g_width,))[0], "d-width": (self.d_widths or (self.d_width,))[0],
                      "e-width": self.e_width}
            for flag, width in firsts.items():
                if width % ATTENTION_HEADS:
                    raise FastMMGANError(f"--fusion attention needs fusion widths divisible by its {ATTENTION_HEADS} "
                                         f"heads; {flag} gives {width}")
        self._check_data_settings()
        if self.precision not in PRECISIONS:
            raise FastMMGANError(f"unknown precision {self.precision!r} (expected one of {', '.join(PRECISIONS)})")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise FastMMGANError(f"unknown device {self.device!r} (expected auto, cpu or cuda)")

    def _check_data_settings(self) -> None:
        if self.dataset not in DATASETS:
            raise FastMMGANError(f"unknown dataset {self.dataset!r} (built in: {', '.join(DATASETS)})")
        if self.image_size is not None:
            self.image_size = tuple(int(v) for v in self.image_size)
            if len(self.image_size) not in (1, 2) or min(self.image_size) <= 0:
                raise FastMMGANError(f"image-size must be H or H,W with positive sizes, got {self.image_size}")
        if self.image_channels not in (None, 1, 3):
            raise FastMMGANError(f"image-channels must be 1 or 3, got {self.image_channels}")
        for name in ("sample_rate", "clip_seconds"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise FastMMGANError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_vocab < 0:
            raise FastMMGANError(f"max-vocab must be >= 0 (0: every word), got {self.max_vocab}")
        for name in ("data_on_device", "prefetch"):
            if getattr(self, name) not in AUTO_YES_NO:
                raise FastMMGANError(f"{name.replace('_', '-')} must be one of {', '.join(AUTO_YES_NO)}, "
                                     f"got {getattr(self, name)!r}")

    @property
    def uses_encoder(self) -> bool:
        """Whether the generator holds an :class:`~fastmmgan.models.Encoder` (a cVAE-GAN or latent regression term is on)."""
        return self.recon_weight > 0 or self.latent_weight > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        for name in ("g_widths", "d_widths"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config saved as ``d``; a field added since then takes the value that kept the old behaviour."""
        if not isinstance(d, dict):
            raise FastMMGANError(f"a run config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{**ADDED_FIELDS, **{k: v for k, v in d.items() if k in known}})

    def model_hash(self) -> str:
        """Short hash of what decides the generator's architecture and data (z_components and g_widths only
        when used, so runs saved before they existed keep their hash)."""
        keys = ["dataset", "data", "z_dim", "g_width", "g_depth"] + (["z_components"] if self.z_components else [])
        if not self.conditioned_components:
            keys.append("conditioned_components")
        if self.fusion != "projection":
            keys.append("fusion")
        values = {k: getattr(self, k) for k in keys}
        if self.g_widths:  # only when used, as z_components
            values["g_widths"] = list(self.g_widths)
        if self.uses_encoder:
            values["encoder"] = [self.e_width, self.e_depth]
        blob = json.dumps(values, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]
