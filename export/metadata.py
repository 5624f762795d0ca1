"""What an exported generator file says about itself, in the ONNX model's ``metadata_props``.

A served ``.onnx`` file needs nothing else: the modality specs (with the text vocabulary and the audio
settings), the noise size, the library version and the config hash travel inside it.
The graph's input and output names follow from the specs (see :func:`io_names`); the graph holds every
modality's features flat, ``[batch, dim]``, and :func:`tensor_shape` is the per-sample shape the serving
layouts (Triton's repository, the ``/v2`` routes) declare for them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fastmmgan.errors import FastMMGANError
from fastmmgan.modalities import ModalitySpec

FORMAT = "fastmmgan-onnx-generator"
FORMAT_VERSION = 1
Z_INPUT = "z"
MASK_INPUT = "mask"
OUTPUT_SUFFIX = "_out"
_PREFIX = "fastmmgan."


def output_name(spec: ModalitySpec) -> str:
    """The graph output holding a modality's generated features (an ONNX value cannot be input and output)."""
    return spec.name + OUTPUT_SUFFIX


def io_names(specs: Sequence[ModalitySpec]) -> tuple[list[str], list[str]]:
    """Graph input names ``[z, <modality>..., mask]`` and output names ``[<modality>_out...]``; all distinct."""
    inputs = [Z_INPUT, *(s.name for s in specs), MASK_INPUT]
    outputs = [output_name(s) for s in specs]
    seen: set[str] = set()
    for name in inputs + outputs:
        if name in seen:
            raise FastMMGANError(
                f"modality names clash with the ONNX graph's names: {name!r} is used twice "
                f"(the graph reserves {Z_INPUT!r}, {MASK_INPUT!r} and '<modality>{OUTPUT_SUFFIX}')"
            )
        seen.add(name)
    return inputs, outputs


def tensor_shape(spec: ModalitySpec) -> tuple[int, ...]:
    """The per-sample shape a server declares for a modality's graph input and output: ``(H, W, 3)`` for an RGB
    image (its features are the image's pixels in H, W, C order, so only the shape changes), ``(dim,)`` for
    every other modality, grey images included (flat, as they have always been served)."""
    return spec.pixel_shape if spec.kind == "image" and spec.channels != 1 else (spec.dim,)


@dataclass(frozen=True)
class GeneratorMetadata:
    """Everything needed to sample from an exported generator without its checkpoint."""

    specs: tuple[ModalitySpec, ...]
    z_dim: int
    version: str
    config_hash: str
    precision: str = "fp32"
    step: int = 0

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (ONNX stores strings only)."""
        return {
            _PREFIX + "format": FORMAT,
            _PREFIX + "format_version": str(FORMAT_VERSION),
            _PREFIX + "modalities": json.dumps([s.to_dict() for s in self.specs]),
            _PREFIX + "z_dim": str(self.z_dim),
            _PREFIX + "version": self.version,
            _PREFIX + "config_hash": self.config_hash,
            _PREFIX + "precision": self.precision,
            _PREFIX + "step": str(self.step),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "the model") -> GeneratorMetadata:
        """Parse ``metadata_props``; a clear error when the file was not written by ``fastmmgan.export``."""
        if props.get(_PREFIX + "format") != FORMAT:
            raise FastMMGANError(f"{source} has no fastmmgan metadata (was it written by python -m fastmmgan.export?)")
        version = props.get(_PREFIX + "format_version", "")
        if version != str(FORMAT_VERSION):
            raise FastMMGANError(f"{source}: export format version {version!r} is not supported ({FORMAT_VERSION} is)")
        try:
            specs = tuple(ModalitySpec.from_dict(d) for d in json.loads(props[_PREFIX + "modalities"]))
            return cls(
                specs=specs,
                z_dim=int(props[_PREFIX + "z_dim"]),
                version=props[_PREFIX + "version"],
                config_hash=props[_PREFIX + "config_hash"],
                precision=props.get(_PREFIX + "precision", "fp32"),
                step=int(props.get(_PREFIX + "step", "0")),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise FastMMGANError(f"{source}: damaged fastmmgan metadata ({type(e).__name__}: {e})") from None

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary: specs with their feature sizes, noise size, versions."""
        return {
            "modalities": [{**s.to_dict(), "dim": s.dim} for s in self.specs],
            "z_dim": self.z_dim,
            "fastmmgan_version": self.version,
            "config_hash": self.config_hash,
            "precision": self.precision,
            "step": self.step,
        }
