"""ONNX export of fastmmgan generators and an ONNX Runtime sampler with the :class:`fastmmgan.Sampler` interface.

``python -m fastmmgan.export RUN_OR_CKPT --out gen.onnx`` writes a checked, self-describing ``.onnx`` file;
``OnnxGenerator("gen.onnx").sample(n, given, seed)`` samples from it like ``fastmmgan.load_generator`` does;
``fastmmgan.export.server`` serves it over HTTP (``python -m fastmmgan.serve``, with the ``serve`` extra).
"""

from __future__ import annotations

from .exporter import (
    DEFAULT_OPSET,
    EXPORTERS,
    TOLERANCES,
    ExportReport,
    export_generator,
    nonstandard_ops,
    trace_to_onnx,
)
from .metadata import GeneratorMetadata, io_names, tensor_shape
from .runtime import OnnxGenerator

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "TOLERANCES",
    "ExportReport",
    "GeneratorMetadata",
    "OnnxGenerator",
    "export_generator",
    "io_names",
    "nonstandard_ops",
    "tensor_shape",
    "trace_to_onnx",
]
