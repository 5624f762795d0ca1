"""fastmmgan: a fast multimodal GAN library for PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import FastMMGANError  # noqa: E402
from .sampler import Sampler, load_generator  # noqa: E402

__all__ = ["FastMMGANError", "Sampler", "load_generator", "__version__"]
