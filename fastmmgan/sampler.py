"""Using a trained generator: raw conditions in, every modality out in raw form.

Shared by :func:`load_generator` (PyTorch) and the ONNX Runtime wrapper in ``fastmmgan.export``,
so both turn the same ``given`` and ``seed`` into the same inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .errors import FastMMGANError
from .modalities import ModalitySpec, image_layout
from .models import Generator


def draw_noise(n: int, z_dim: int, seed: int | None) -> torch.Tensor:
    """Noise z [n, z_dim] float32 from a CPU generator seeded by ``seed`` (fresh entropy when None)."""
    rng = torch.Generator()
    if seed is None:
        rng.seed()
    else:
        rng.manual_seed(int(seed))
    return torch.randn(n, z_dim, generator=rng)


def noise_for(n: int, z_dim: int, seed: int | None, z: Any = None) -> torch.Tensor:
    """The noise of a sampling call: ``z`` checked (see :func:`check_latents`) when given, else drawn from ``seed``."""
    return draw_noise(n, z_dim, seed) if z is None else check_latents(z, n, z_dim)


def _broadcast(spec: ModalitySpec, value: Any, n: int) -> Any:
    if spec.kind == "text":
        texts = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else None
        if texts is None or not all(isinstance(t, str) for t in texts):
            raise FastMMGANError(f"given {spec.name!r}: expected a string or a list of strings")
        if len(texts) == 1:
            texts = texts * n
        if len(texts) != n:
            raise FastMMGANError(f"given {spec.name!r}: {len(texts)} captions for n={n} samples")
        return texts
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise FastMMGANError(f"given {spec.name!r}: expected an array of numbers") from None
    item_ndim = _item_ndim(spec)
    if spec.kind == "image" and (arr.ndim not in (item_ndim, item_ndim + 1) or arr.shape[-item_ndim:] != spec.pixel_shape):
        raise FastMMGANError(f"given {spec.name!r}: expected images of shape {image_layout(spec)} or one image "
                             f"without the n axis, got shape {list(arr.shape)}")
    if arr.ndim == item_ndim:
        arr = np.broadcast_to(arr, (n, *arr.shape))
    if arr.ndim != item_ndim + 1:
        raise FastMMGANError(f"given {spec.name!r}: expected {item_ndim + 1} dimensions, got shape {list(arr.shape)}")
    if len(arr) != n:
        raise FastMMGANError(f"given {spec.name!r}: {len(arr)} items for n={n} samples")
    if spec.kind == "audio":
        out = np.zeros((n, spec.clip_samples), dtype=np.float32)
        k = min(arr.shape[1], spec.clip_samples)
        out[:, :k] = arr[:, :k]
        arr = out
    return np.ascontiguousarray(arr)


def _item_ndim(spec: ModalitySpec) -> int:
    """Dimensions of one raw sample that is an array: an image [H, W] or [H, W, 3], a clip [T]."""
    return len(spec.pixel_shape) if spec.kind == "image" else 1


def encode_conditions(
    specs: Sequence[ModalitySpec], n: int, given: Mapping[str, Any] | None
) -> tuple[list[torch.Tensor], torch.Tensor, dict[str, Any]]:
    """Raw conditions -> (features [n, dim_m] per modality, zeros where not given; given mask [n, M] bool;
    the conditions normalised to the raw output forms)."""
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise FastMMGANError(f"n must be a positive integer, got {n!r}")
    given = dict(given or {})
    names = [s.name for s in specs]
    unknown = [k for k in given if k not in names]
    if unknown:
        raise FastMMGANError(f"unknown modality {unknown[0]!r} (this model has: {', '.join(names)})")
    xs, raw = [], {}
    mask = torch.zeros(n, len(specs), dtype=torch.bool)
    for m, spec in enumerate(specs):
        if spec.name in given:
            raw[spec.name] = _broadcast(spec, given[spec.name], n)
            xs.append(spec.encode(raw[spec.name]))
            mask[:, m] = True
        else:
            xs.append(torch.zeros(n, spec.dim))
    return xs, mask, raw


def batch_size_of(specs: Sequence[ModalitySpec], given: Mapping[str, Any]) -> int:
    """How many samples ``given`` holds (raw values as :meth:`Sampler.sample` takes them): a list of captions,
    images [n, H, W] (grey) or [n, H, W, 3] (RGB) or clips [n, T] count n, a single caption, image [H, W] or
    [H, W, 3] or clip [T] counts 1. Modalities that disagree are an error."""
    kinds = {s.name: s.kind for s in specs}
    by_name = {s.name: s for s in specs}
    counts = {}
    for name, value in given.items():
        if name not in kinds:
            raise FastMMGANError(f"unknown modality {name!r} (this model has: {', '.join(kinds)})")
        if kinds[name] == "text":
            counts[name] = 1 if isinstance(value, str) else len(value) if isinstance(value, Sequence) else 0
        else:
            arr = np.asarray(value) if not isinstance(value, torch.Tensor) else value
            single = _item_ndim(by_name[name])
            counts[name] = 1 if arr.ndim == single else len(arr) if arr.ndim == single + 1 else 0
        if counts[name] == 0:
            raise FastMMGANError(f"given {name!r}: expected one {kinds[name]} or a batch of them")
    if not counts:
        raise FastMMGANError("nothing given to encode")
    if len(set(counts.values())) > 1:
        sizes = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise FastMMGANError(f"given modalities hold different numbers of samples ({sizes})")
    return next(iter(counts.values()))


def check_latents(z: Any, n: int, z_dim: int) -> torch.Tensor:
    """``z`` as float32 [n, z_dim] on the CPU; a clear error when it has another shape or is not finite."""
    try:
        t = torch.as_tensor(np.asarray(z, dtype=np.float32) if not isinstance(z, torch.Tensor) else z).float().cpu()
    except (TypeError, ValueError):
        raise FastMMGANError("z: expected an array of numbers") from None
    if t.ndim == 1:
        t = t.expand(n, -1)
    if tuple(t.shape) != (n, z_dim):
        raise FastMMGANError(f"z: expected shape [{n}, {z_dim}] (or [{z_dim}]), got {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise FastMMGANError("z: has non-finite values")
    return t.contiguous()


def wanted_modalities(specs: Sequence[ModalitySpec], modalities: str | Sequence[str] | None) -> list[ModalitySpec]:
    """The specs a caller asks for, in the model's order (all of them for None); unknown names are an error."""
    if modalities is None:
        return list(specs)
    names = [modalities] if isinstance(modalities, str) else list(modalities)
    known = [s.name for s in specs]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        problem = f"unknown modality {unknown[0]!r}" if unknown else "no modality asked for"
        raise FastMMGANError(f"{problem} (this model has: {', '.join(known)})")
    return [s for s in specs if s.name in names]


def decode_outputs(
    specs: Sequence[ModalitySpec],
    features: Sequence[torch.Tensor],
    given_raw: Mapping[str, Any],
    modalities: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Generated features -> raw forms of the modalities asked for (all by default), in the model's order;
    given modalities come back as given. Decoding is most of a sample's cost (audio above all), so modalities
    nobody asked for are not decoded."""
    index = {s.name: i for i, s in enumerate(specs)}
    return {
        s.name: given_raw[s.name] if s.name in given_raw else s.decode(features[index[s.name]])
        for s in wanted_modalities(specs, modalities)
    }


class Sampler:
    """A trained generator (the EMA copy) ready to sample from raw conditions; a
    :class:`~fastmmgan.sampler_protocol.MultimodalSampler`."""

    def __init__(self, generator: Generator, device: str | torch.device = "cpu") -> None:
        self.generator = generator.to(device).eval()
        self.device = torch.device(device)

    @property
    def modalities(self) -> tuple[ModalitySpec, ...]:
        return self.generator.specs

    @property
    def z_dim(self) -> int:
        return self.generator.z_dim

    @torch.no_grad()
    def generate(self, z: torch.Tensor, xs: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        """Features per modality (CPU float32 [n, dim_m]) for exact inputs: noise z [n, z_dim], condition
        features xs [n, dim_m] (zeros where not given) and mask [n, M] (bool)."""
        dev = self.device
        out = self.generator(z.to(dev), [x.to(dev) for x in xs], mask.to(dev))
        return [o.float().cpu() for o in out]

    @property
    def has_encoder(self) -> bool:
        """Whether the model was trained with an encoder (``--recon-weight`` or ``--latent-weight``)."""
        return self.generator.encoder is not None

    @torch.no_grad()
    def posterior(self, xs: Sequence[torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's (mu, logvar), each CPU float32 [n, z_dim], for features xs [n, dim_m] (zeros where
        absent) and the presence mask [n, M] (bool). The feature-level form of :meth:`encode`."""
        if self.generator.encoder is None:
            raise FastMMGANError("this model has no encoder (train it with --recon-weight or --latent-weight)")
        dev = self.device
        mu, logvar = self.generator.encoder([x.to(dev) for x in xs], mask.to(dev))
        return mu.float().cpu(), logvar.float().cpu()

    @torch.no_grad()
    def encode(self, given: Mapping[str, Any], sample: bool = False, seed: int | None = None) -> torch.Tensor:
        """The latents of real samples: float32 [n, z_dim] on the CPU, to pass to :meth:`sample` as ``z``.

        ``given`` maps modality names to raw values as :meth:`sample` takes them (n captions, images [n,H,W]
        or [n,H,W,3], clips [n,T]; any subset of the modalities, the rest counts as absent). Returns the
        encoder's posterior mean, or with ``sample=True`` a draw from the posterior (seeded by ``seed``). Decoding the latents
        under some of the same conditions (``sample(n, {"text": captions}, z=latents)``) rebuilds the others
        as the encoder saw them; mixing latents of two samples interpolates their style.
        """
        n = batch_size_of(self.modalities, given)
        xs, mask, _ = encode_conditions(self.modalities, n, given)
        mu, logvar = self.posterior(xs, mask)
        if not sample:
            return mu
        return mu + (0.5 * logvar).exp() * draw_noise(n, self.z_dim, seed)

    @torch.no_grad()
    def sample_features(
        self, n: int, given: Mapping[str, Any] | None = None, seed: int | None = None, z: Any = None,
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Generated features [n, dim_m] per modality (CPU float32) and the normalised conditions."""
        xs, mask, raw = encode_conditions(self.modalities, n, given)
        return self.generate(noise_for(n, self.z_dim, seed, z), xs, mask), raw

    def sample(
        self,
        n: int,
        given: Mapping[str, Any] | None = None,
        seed: int | None = None,
        modalities: str | Sequence[str] | None = None,
        z: Any = None,
    ) -> dict[str, Any]:
        """n samples of every modality (or of those named in ``modalities``): images float32 in [0,1], [n,H,W]
        grey or [n,H,W,3] RGB, audio [n,T] float32 in [-1,1], text a list of n strings. ``given`` maps modality
        names to raw conditions in the same forms (or one item for every sample); same seed, same output.
        ``z`` ([n, z_dim] or one [z_dim] for every sample, e.g. from :meth:`encode`) replaces the noise drawn
        from ``seed``."""
        wanted_modalities(self.modalities, modalities)  # a bad name fails before the generator runs
        feats, raw = self.sample_features(n, given, seed, z)
        return decode_outputs(self.modalities, feats, raw, modalities)


def generator_from_state(state: Mapping[str, Any], key: str = "ema") -> Generator:
    """Rebuild the generator a checkpoint describes and load its weights (EMA by default); a clear error
    when the checkpoint's config, specs or weights are damaged or do not fit together."""
    try:
        cfg = TrainConfig.from_dict(state["config"])
        specs = [ModalitySpec.from_dict(d) for d in state["specs"]]
        generator = Generator.from_config(specs, cfg)
        generator.load_state_dict(state[key])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:  # FastMMGANError is a ValueError: kept as is
        if isinstance(e, FastMMGANError):
            raise
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # load_state_dict's first line is a heading ("Error(s) in loading state_dict ...:"); the next says what.
        reason = next((line for line in lines if not line.endswith(":")), lines[0] if lines else type(e).__name__)
        raise FastMMGANError(f"checkpoint does not describe a loadable generator: {reason}") from None
    return generator


def load_generator(path: str | Path, device: str = "cpu") -> Sampler:
    """A sampler from a run directory or checkpoint file (uses the EMA generator)."""
    state = load_checkpoint(path)
    try:
        return Sampler(generator_from_state(state), device)
    except FastMMGANError as e:
        raise FastMMGANError(f"{path}: {e}") from None
