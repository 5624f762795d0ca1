"""A model-repository entry for NVIDIA Triton Inference Server: ``<repo>/<name>/1/model.onnx`` + ``config.pbtxt``.

Triton's ONNX Runtime backend serves the exported file as is. The batch axis is Triton's implicit one: with
``max_batch_size > 0`` (which dynamic batching requires) ``dims`` list the per-sample shape only and Triton
reports every tensor as ``[-1, dim]``; writing ``-1`` for the batch inside ``dims`` as well would declare a
second batch axis. Dynamic batching merges concurrent requests, like ``python -m fastmmgan.serve`` does.

An RGB image modality's input and output are declared ``[H, W, 3]`` with ``reshape { shape: [dim] }``: clients
send and receive images, the graph sees its flat features (the same values in the same H, W, C order), as the
``/v2`` routes of ``python -m fastmmgan.serve`` do. Every other tensor's dims are the graph's own.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastmmgan.checkpoint import atomic_write_bytes
from fastmmgan.errors import FastMMGANError

from .metadata import GeneratorMetadata, io_names, tensor_shape

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""The model names a Triton Inference Server repository accepts (the HTTP server holds its names to the same rule)."""
MAX_QUEUE_DELAY_US = 2000


def _tensor(name: str, width: int, shape: tuple[int, ...] | None = None) -> str:
    """One tensor entry: ``dims`` the per-sample ``shape`` clients see (default ``[width]``, the graph's own); a
    shape other than that gets a ``reshape`` to the graph's ``[width]``."""
    dims = (width,) if shape is None else shape
    reshape = "" if dims == (width,) else f"\n    reshape: {{ shape: [ {width} ] }}"
    return f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, dims))} ]{reshape}\n  }}'


def triton_config(meta: GeneratorMetadata, name: str, max_batch_size: int = 1024) -> str:
    """The ``config.pbtxt`` text: float32 inputs/outputs, batch axis implicit, dynamic batching on."""
    inputs, outputs = io_names(meta.specs)
    in_widths = [meta.z_dim, *(s.dim for s in meta.specs), len(meta.specs)]
    in_shapes = [None, *(tensor_shape(s) for s in meta.specs), None]
    out_widths = [s.dim for s in meta.specs]
    out_shapes = [tensor_shape(s) for s in meta.specs]
    return "\n".join([
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(_tensor(*t) for t in zip(inputs, in_widths, in_shapes, strict=True)) + "\n]",
        "output [\n" + ",\n".join(_tensor(*t) for t in zip(outputs, out_widths, out_shapes, strict=True)) + "\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n}}",
        "",
    ])


def check_triton_args(name: str, max_batch_size: int) -> None:
    """Refuse a model name Triton cannot use as a directory, or a batch limit below 1."""
    if not MODEL_NAME.match(name):
        raise FastMMGANError(f"Triton model name {name!r}: use letters, digits, '_', '.' or '-'")
    if max_batch_size < 1:
        raise FastMMGANError(f"Triton max batch size must be positive, got {max_batch_size}")


def write_triton_repo(
    repo: str | Path, model: bytes, meta: GeneratorMetadata, name: str, max_batch_size: int = 1024
) -> Path:
    """Write ``<repo>/<name>/1/model.onnx`` and ``<repo>/<name>/config.pbtxt`` atomically; returns ``<repo>/<name>``."""
    check_triton_args(name, max_batch_size)
    model_dir = Path(repo) / name
    atomic_write_bytes(model_dir / "1" / "model.onnx", model)
    atomic_write_bytes(model_dir / "config.pbtxt", triton_config(meta, name, max_batch_size).encode())
    return model_dir
