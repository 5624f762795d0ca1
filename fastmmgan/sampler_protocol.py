"""What every fastmmgan generator front-end offers: :class:`~fastmmgan.Sampler` (PyTorch) and
:class:`~fastmmgan.export.OnnxGenerator` (ONNX Runtime) both implement :class:`MultimodalSampler`, so the
evaluator, ``generate`` and user code take either."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from .modalities import ModalitySpec


@runtime_checkable
class MultimodalSampler(Protocol):
    """A trained generator behind a sampling interface.

    Raw level: :meth:`sample` takes raw conditions (captions, images, clips) and returns decoded samples.
    Feature level: :meth:`generate` maps exact inputs to features, the call the evaluator scores.
    """

    @property
    def modalities(self) -> tuple[ModalitySpec, ...]:
        """The modalities, in the generator's input and output order."""
        ...

    @property
    def z_dim(self) -> int:
        """Width of the noise input."""
        ...

    def generate(self, z: torch.Tensor, xs: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        """Features per modality (float32 [n, dim_m], CPU) for noise z [n, z_dim] float32, condition features
        xs (one [n, dim_m] float32 per modality, zeros where not given) and mask [n, M] (bool: given)."""
        ...

    def sample_features(
        self, n: int, given: Mapping[str, Any] | None = None, seed: int | None = None, z: Any = None,
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Generated features per modality for raw conditions, and the conditions as normalised."""
        ...

    def sample(
        self,
        n: int,
        given: Mapping[str, Any] | None = None,
        seed: int | None = None,
        modalities: str | Sequence[str] | None = None,
        z: Any = None,
    ) -> dict[str, Any]:
        """n decoded samples of every modality (or of those named); same seed, same samples. ``z``
        ([n, z_dim] latents, e.g. from an encoder) replaces the seeded noise."""
        ...
