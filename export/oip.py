"""The Open Inference Protocol (KServe v2, HTTP/REST) routes of the HTTP server, for clients written against
NVIDIA Triton Inference Server (e.g. ``tritonclient.http``): the protocol's messages, the parsing and checking of
infer requests (JSON tensors and Triton's binary tensor data extension), the model metadata, and the registration
of the ``/v2`` routes on the app.

It is our own code rather than a KServe or Triton server because it is only a small mapping onto the same
:class:`~fastmmgan.export.batching.MicroBatcher` that ``/generate`` uses (see :mod:`fastmmgan.export.server`).

The model is the ONNX graph itself, with the tensors ``python -m fastmmgan.export --triton-repo`` declares
(inputs ``z`` [-1, z_dim], one ``<modality>`` [-1, dim] each, ``mask`` [-1, M]; outputs ``<modality>_out``
[-1, dim]; all FP32; an RGB image modality's input and output are [-1, H, W, 3] instead, the same values in
the same order, see :func:`~fastmmgan.export.metadata.tensor_shape`), under the name of the ONNX file's stem
(``fastmmgan`` when the stem is no valid name; ``--model-name`` to choose one) and version ``1``:
- ``GET /v2/health/live``, ``GET /v2/health/ready``: ``{"live": true}``, ``{"ready": true}`` (400 with
  ``{"ready": false}`` while the batching worker is not running: OIP says 4xx means false).
- ``GET /v2``: ``{"name", "version", "extensions": ["binary_tensor_data"]}``.
- ``GET /v2/models/{name}[/versions/1]``: ``{"name", "versions", "platform": "onnxruntime_onnx", "inputs",
  "outputs"}``, each tensor ``{"name", "datatype", "shape"}``; ``.../ready``: ``{"name", "ready"}``.
- ``POST /v2/models/{name}[/versions/1]/infer``: ``{"id"?, "inputs": [{"name", "shape", "datatype", "data"}],
  "outputs"?: [{"name"}]}`` answers ``{"model_name", "model_version", "id"?, "outputs": [{"name", "datatype",
  "shape", "data"}]}``, ``data`` flat in row-major order (requests may send it flat or nested). ``z`` is
  required; a missing ``<modality>`` input is zeros (a mask sent may not mark it as given), and a missing
  ``mask`` marks exactly the modality inputs sent as given. Values must be finite, the mask 0 or 1, at most
  ``max_n`` rows per request. Errors are ``{"error": "one line"}``: 400 bad request, 404 unknown model or
  version, 413 body too large, 503 queue full. Shared memory, classification and compressed bodies are
  refused with 400.

Binary tensor data (Triton's ``binary_tensor_data`` extension, what ``tritonclient.http`` sends and asks for
by default):
- Request: header ``Inference-Header-Content-Length: N``; the body's first N bytes are the JSON request and the
  rest is the raw bytes of each input whose ``parameters.binary_data_size`` is set, one after the other in the
  order of ``inputs`` (such an input has no ``data``). FP32 only, little-endian, row-major: each size is
  4 x the element count of the input's ``shape``, and the sizes add up to exactly the bytes after the JSON.
  JSON and binary inputs may be mixed; without the header the body is all JSON and no input may be binary.
- Answer: an output is binary when its ``parameters.binary_data`` says so, else when the request's
  ``parameters.binary_data_output`` does (tritonclient sets the latter when it names no outputs). With any
  binary output the answer is ``application/octet-stream`` with the header ``Inference-Header-Content-Length``:
  the JSON answer (binary outputs carry ``parameters: {"binary_data_size": n}`` and no ``data``) and then their
  raw bytes in the order of ``outputs``. Otherwise it is plain JSON. Strict JSON has no NaN, so a JSON output
  that is not finite is a 400; binary outputs carry any float32.

``/v2`` answers equal ``OnnxGenerator.run`` on the same tensors.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.concurrency import run_in_threadpool

from fastmmgan import __version__
from fastmmgan.errors import FastMMGANError

from .batching import MicroBatcher, ServerBusy
from .http_common import ServeLimits, bad, error_answers, json_body, json_object, one_line, read_body
from .metadata import tensor_shape
from .runtime import OnnxGenerator
from .triton_repo import MODEL_NAME

log = logging.getLogger("fastmmgan.serve")

# What a Triton server reports for the same file (see triton_repo.py), so one client works against both.
# Version "1" is the directory Triton's repository keeps the model in.
OIP_DATATYPE = "FP32"
MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
DEFAULT_MODEL_NAME = "fastmmgan"
SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
EXAMPLE_REQUEST = '{"inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [...]}]}'

# Triton's binary tensor data extension (see the module's docstring): the header giving the length of the JSON
# part of a body whose rest is raw tensor bytes, the media type of such an answer, and FP32 on the wire.
BINARY_EXTENSION = "binary_tensor_data"
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"
WIRE_FP32 = np.dtype("<f4")  # little-endian IEEE 754 single, 4 bytes a value


# The protocol's messages.


class OIPError(BaseModel):
    """An error answer of the ``/v2`` routes, as the Open Inference Protocol specifies it."""

    error: str


class LiveResponse(BaseModel):
    """``GET /v2/health/live``."""

    live: bool


class ReadyResponse(BaseModel):
    """``GET /v2/health/ready``: true once the batching worker runs."""

    ready: bool


class ModelReadyResponse(BaseModel):
    """``GET /v2/models/{name}/ready``."""

    name: str
    ready: bool


class ServerMetadata(BaseModel):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    """One input or output of the model; -1 marks the batch axis."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InferInputTensor(BaseModel):
    """One input tensor of an infer request; ``data`` flat in row-major order or nested as ``shape`` says."""

    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="the values: flat in row-major order, or lists nested as shape says")


class BinaryInputTensor(InferInputTensor):
    """An input tensor of a request with binary data: its values are ``data``, or the ``parameters.binary_data_size``
    bytes that are its share of the binary part of the body."""

    data: list[Any] | None = None


class InferRequestedOutput(BaseModel):
    """An output the client wants (all of them when the request names none)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """The JSON body of ``POST /v2/models/{name}/infer``."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInputTensor] = Field(min_length=1)
    outputs: list[InferRequestedOutput] | None = None


class BinaryInferRequest(InferRequest):
    """The JSON part of a body with binary tensor data (header ``Inference-Header-Content-Length``)."""

    inputs: list[BinaryInputTensor] = Field(min_length=1)  # type: ignore[assignment]


class InferOutputTensor(BaseModel):
    """One output tensor of an infer answer."""

    name: str
    datatype: str
    shape: list[int]
    data: list[float] = Field(description="the values, flat in row-major order")


class InferResponse(BaseModel):
    """The answer of ``POST /v2/models/{name}/infer``; ``id`` echoes the request's."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutputTensor]


# Infer requests: parsing and checking, and the answer.


def _refuse_extensions(obj: Mapping[str, Any], binary_part: bool) -> None:
    """400 for the OIP extensions this server does not implement, and for binary inputs in a body without a
    binary part, before field validation would call their missing ``data`` a mere missing field."""
    for key in ("inputs", "outputs"):
        tensors = obj.get(key)
        for tensor in tensors if isinstance(tensors, list) else ():
            params = tensor.get("parameters") if isinstance(tensor, dict) else None
            if not isinstance(params, dict):
                continue
            if any(p in params for p in SHARED_MEMORY_PARAMETERS):
                raise bad(400, "shared-memory tensors are not supported: send each tensor's values in the body")
            if params.get("classification"):
                raise bad(400, "the classification extension is not supported: ask for the output without it")
            if key == "inputs" and "binary_data_size" in params and not binary_part:
                raise bad(400, f"input {tensor.get('name')!r}: parameters.binary_data_size without a {HEADER_LENGTH} header "
                               "(the length of the JSON part of the body, the binary data following it)")


def split_body(body: bytes, header_length: str) -> tuple[bytes, bytes]:
    """A body with binary tensor data -> (its JSON part, its binary part), at ``Inference-Header-Content-Length``;
    400 when that is no byte count within the body."""
    value = header_length.strip()
    if not re.fullmatch(r"[0-9]{1,19}", value):
        raise bad(400, f"{HEADER_LENGTH} {header_length[:40]!r} is no byte count (the length of the JSON part of the body)")
    size = int(value)
    if size > len(body):
        raise bad(400, f"{HEADER_LENGTH} {size} is past the end of the {len(body)}-byte body "
                       "(it is the length of the JSON part at the body's start)")
    return body[:size], body[size:]


def binary_inputs(req: InferRequest, binary: bytes) -> list[bytes | None]:
    """Each input's raw bytes (None for one sent as JSON ``data``): the binary part of the body cut, in input
    order, at the ``parameters.binary_data_size`` of the binary inputs. 400 unless each size is 4 bytes per
    element of the input's declared shape (FP32 only) and the sizes add up to exactly the binary part."""
    raws: list[bytes | None] = []
    offset = 0
    for tensor in req.inputs:
        where = f"input {tensor.name!r}"
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise bad(400, f'{where}: no "data" and no parameters.binary_data_size: send its values one way')
            raws.append(None)
            continue
        if tensor.data is not None:
            raise bad(400, f'{where}: both "data" and parameters.binary_data_size: send its values one way')
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad(400, f"{where}: parameters.binary_data_size must be a byte count, got {str(size)[:40]!r}")
        if tensor.datatype != OIP_DATATYPE:
            raise bad(400, f"{where}: datatype {tensor.datatype!r}, expected {OIP_DATATYPE}")
        expected = WIRE_FP32.itemsize * math.prod(tensor.shape)
        if size != expected:
            raise bad(400, f"{where}: binary_data_size {size} for shape {tensor.shape} "
                           f"({expected} expected: {WIRE_FP32.itemsize} bytes per {OIP_DATATYPE} value)")
        raws.append(binary[offset:offset + size])  # the binary inputs' bytes lie back to back, in input order
        offset += size
    if offset != len(binary):
        raise bad(400, f"binary tensor data: the inputs' binary_data_size add up to {offset} bytes, "
                       f"but {len(binary)} bytes follow the JSON part of the body ({HEADER_LENGTH})")
    return raws


def parse_infer_request(body: bytes, header_length: str | None = None) -> tuple[InferRequest, list[bytes | None]]:
    """Body -> Open Inference Protocol infer request and each input's raw bytes (None for JSON ``data``), 400 when
    anything is wrong, as OIP specifies. ``header_length``: the ``Inference-Header-Content-Length`` header, when
    the body is a JSON part followed by binary tensor data; None: the body is all JSON."""
    json_part, binary = (body, None) if header_length is None else split_body(body, header_length)
    obj = json_object(json_part, EXAMPLE_REQUEST)
    _refuse_extensions(obj, binary is not None)
    try:
        req = (InferRequest if binary is None else BinaryInferRequest).model_validate(obj)
    except ValidationError as e:
        raise bad(400, one_line(e.errors())) from None
    return req, [None] * len(req.inputs) if binary is None else binary_inputs(req, binary)


def _nested(node: list[Any], depth: int, rank: int, flat: list[Any]) -> list[int]:
    """Append the numbers of a flat or nested list to ``flat`` and return its shape; ValueError when it is
    ragged, nested deeper than ``rank`` or holds anything but numbers."""
    if node and all(isinstance(v, list) for v in node):
        if depth == rank:
            raise ValueError(f"data nested deeper than its {rank} dimensions")
        shapes = [_nested(v, depth + 1, rank, flat) for v in node]
        if any(shape != shapes[0] for shape in shapes):
            raise ValueError("nested data with rows of different lengths")
        return [len(node), *shapes[0]]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in node):
        raise ValueError("data must hold numbers only")
    flat.extend(node)
    return [len(node)]


def tensor_from_request(tensor: InferInputTensor, shape: tuple[int, ...], raw: bytes | None = None) -> np.ndarray:
    """One FP32 input ``[rows, *shape]`` (``shape``: the declared per-sample shape, ``(width,)`` or an RGB image's
    ``(H, W, 3)``) as float32 ``[rows, prod(shape)]``, the graph's layout, from its JSON ``data`` or its ``raw``
    bytes (binary data, their size already checked against the shape by :func:`binary_inputs`); 400 for a wrong
    datatype, shape, count or value."""
    where = f"input {tensor.name!r}"
    if tensor.datatype != OIP_DATATYPE:
        raise bad(400, f"{where}: datatype {tensor.datatype!r}, expected {OIP_DATATYPE}")
    if len(tensor.shape) != 1 + len(shape) or tuple(tensor.shape[1:]) != shape:
        what = f"{shape[0]} values each" if len(shape) == 1 else "RGB images, channels last"
        raise bad(400, f"{where}: shape {tensor.shape}, expected [-1, {', '.join(map(str, shape))}] (rows, {what})")
    flat_shape = (tensor.shape[0], math.prod(shape))
    if raw is not None:
        values = np.frombuffer(raw, WIRE_FP32).astype(np.float32)  # a copy in native order, row-major as sent
        return _finite(values, where).reshape(flat_shape)
    assert tensor.data is not None  # binary_inputs: each input has its data one way
    flat: list[Any] = []
    try:
        nested = _nested(tensor.data, 1, len(tensor.shape), flat)
    except ValueError as e:
        raise bad(400, f"{where}: {e}") from None
    if len(nested) > 1 and nested != tensor.shape:
        raise bad(400, f"{where}: nested data of shape {nested} for shape {tensor.shape}")
    count = math.prod(tensor.shape)
    if len(flat) != count:
        raise bad(400, f"{where}: {len(flat)} values for shape {tensor.shape} ({count} expected)")
    try:
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
            values = np.array(flat, dtype=np.float64).astype(np.float32)
    except OverflowError:  # an integer beyond float64
        return _finite(np.full(1, np.inf, np.float32), where)
    return _finite(values, where).reshape(flat_shape)


def _finite(values: np.ndarray, where: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise bad(400, f"{where}: values must be finite float32 numbers (NaN, infinity or beyond 3.4e38 found)")
    return values


def inputs_from_request(
    req: InferRequest, raws: Sequence[bytes | None], input_names: Sequence[str], shapes: Sequence[tuple[int, ...]],
    max_rows: int,
) -> list[np.ndarray]:
    """The graph inputs ``[z, x_1..x_M, mask]`` ([rows, width] each) of an infer request, each from its JSON data
    or from its bytes in ``raws`` (as :func:`parse_infer_request` gives them), sent in its declared per-sample
    shape (``shapes``, see :func:`model_metadata`). ``z`` is required; a missing modality input is zeros (not
    given), a missing mask marks exactly the modality inputs sent as given; 400 when wrong."""
    z_name, *x_names, mask_name = input_names
    shape = dict(zip(input_names, shapes, strict=True))
    sent: dict[str, np.ndarray] = {}
    for tensor, raw in zip(req.inputs, raws, strict=True):
        if tensor.name not in shape:
            raise bad(400, f"unknown input {tensor.name!r} (this model's inputs: {', '.join(input_names)})")
        if tensor.name in sent:
            raise bad(400, f"input {tensor.name!r} is sent twice")
        sent[tensor.name] = tensor_from_request(tensor, shape[tensor.name], raw)
    if z_name not in sent:
        raise bad(400, f"input {z_name!r} is required: the noise, shape [-1, {shape[z_name][0]}]")
    rows = len(sent[z_name])
    if any(len(a) != rows for a in sent.values()):
        counts = ", ".join(f"{name} {len(a)}" for name, a in sent.items())
        raise bad(400, f"the inputs must have the same number of rows, got {counts}")
    if not 1 <= rows <= max_rows:
        raise bad(400, f"{rows} rows: a request must have 1 to {max_rows} rows (this server's limit)")
    if mask_name in sent:
        mask = sent[mask_name]
        if not np.isin(mask, (0.0, 1.0)).all():
            raise bad(400, f"input {mask_name!r}: values must be 0 (not given) or 1 (given)")
        missing = [name for m, name in enumerate(x_names) if name not in sent and mask[:, m].any()]
        if missing:
            raise bad(400, f"input {mask_name!r} marks {missing[0]!r} as given, but no {missing[0]!r} input was sent")
    else:
        mask = np.repeat(np.array([[name in sent for name in x_names]], np.float32), rows, axis=0)
    xs = [sent[name] if name in sent else np.zeros((rows, math.prod(shape[name])), np.float32) for name in x_names]
    return [sent[z_name], *xs, mask]


def _flag(params: Mapping[str, Any] | None, key: str, where: str, default: bool) -> bool:
    """A true/false parameter (absent or null: ``default``); 400 for anything else."""
    value = (params or {}).get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(400, f"{where}parameters.{key} must be true or false, got {str(value)[:40]!r}")
    return value


def outputs_from_request(req: InferRequest, output_names: Sequence[str]) -> list[tuple[int, bool]]:
    """``(index, binary)`` of each output to answer with, in the order asked (all, in graph order, when none are
    named): binary as the output's ``parameters.binary_data`` says, else as the request's
    ``parameters.binary_data_output`` does (JSON when neither does)."""
    default = _flag(req.parameters, "binary_data_output", "", False)
    if not req.outputs:
        return [(i, default) for i in range(len(output_names))]
    chosen: list[tuple[int, bool]] = []
    for out in req.outputs:
        if out.name not in output_names:
            raise bad(400, f"unknown output {out.name!r} (this model's outputs: {', '.join(output_names)})")
        index = output_names.index(out.name)
        if any(i == index for i, _ in chosen):
            raise bad(400, f"output {out.name!r} is asked for twice")
        chosen.append((index, _flag(out.parameters, "binary_data", f"output {out.name!r}: ", default)))
    return chosen


def infer_answer(
    model_name: str, req: InferRequest, output_names: Sequence[str], outputs: Sequence[np.ndarray],
    chosen: Sequence[tuple[int, bool]], shapes: Sequence[tuple[int, ...]] | None = None,
) -> tuple[bytes, int | None]:
    """The answer body and, when it has binary outputs, the length of its JSON part (else None: all JSON). Each
    graph output [rows, width] is answered in its declared per-sample shape (``shapes``; None: as it is). JSON
    outputs are flat FP32 ``data``, 400 when not finite (strict JSON has no NaN, and only inputs far outside the
    trained range produce them); binary outputs are ``parameters.binary_data_size`` in the JSON and their bytes
    after it."""
    tensors, blobs = [], []
    for i, binary in chosen:
        out = outputs[i] if shapes is None else outputs[i].reshape(len(outputs[i]), *shapes[i])
        tensor: dict[str, Any] = {"name": output_names[i], "datatype": OIP_DATATYPE, "shape": list(out.shape)}
        if binary:
            # Little-endian FP32 in row-major order, appended in the order of the outputs in the JSON.
            blobs.append(np.ascontiguousarray(out, dtype=WIRE_FP32).tobytes())
            tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            if not np.isfinite(out).all():
                raise bad(400, f"output {output_names[i]!r} is not finite for these inputs "
                               "(values far outside the usual range? binary outputs carry them)")
            tensor["data"] = out.ravel().tolist()
        tensors.append(tensor)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION}
    if req.id is not None:
        answer["id"] = req.id
    answer["outputs"] = tensors
    header = json.dumps(answer, allow_nan=False).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


# The model: its name and metadata.


def check_model_name(name: str) -> str:
    """The model name of the ``/v2`` routes: the names a Triton model repository accepts, so one name serves both."""
    if not MODEL_NAME.match(name):
        raise FastMMGANError(
            f"model name {name!r}: use letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def default_model_name(generator: OnnxGenerator) -> str:
    """The ONNX file's stem (as ``--triton-repo`` names the model); ``fastmmgan`` for a model loaded from bytes
    or a stem that is no valid name."""
    source = Path(getattr(generator, "source", "") or "")
    if not source.is_file():
        return DEFAULT_MODEL_NAME
    if not MODEL_NAME.match(source.stem):
        log.warning("%s: %r is no valid model name, serving it as %r (see --model-name)",
                    source, source.stem, DEFAULT_MODEL_NAME)
        return DEFAULT_MODEL_NAME
    return source.stem


def tensor_shapes(generator: OnnxGenerator) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The per-sample shapes of the model's inputs ``[z, x_1..x_M, mask]`` and outputs: the graph's own widths,
    but ``(H, W, 3)`` for an RGB image modality (:func:`~fastmmgan.export.metadata.tensor_shape`)."""
    specs = generator.modalities
    outputs = [tensor_shape(s) for s in specs]
    return [(generator.z_dim,), *outputs, (len(specs),)], outputs


def model_metadata(generator: OnnxGenerator, name: str) -> ModelMetadata:
    """The OIP model metadata: the graph's own tensors (an RGB image's as [H, W, 3]), -1 for the batch axis, as
    Triton reports them for the repository ``--triton-repo`` writes."""
    in_shapes, out_shapes = tensor_shapes(generator)
    tensors = [
        [TensorMetadata(name=n, datatype=OIP_DATATYPE, shape=[-1, *s]) for n, s in zip(names, shapes, strict=True)]
        for names, shapes in ((generator.input_names, in_shapes), (generator.output_names, out_shapes))
    ]
    return ModelMetadata(name=name, versions=[MODEL_VERSION], platform=PLATFORM, inputs=tensors[0], outputs=tensors[1])


# The routes.


def is_oip_request(request: Request) -> bool:
    """Whether the request is for an Open Inference Protocol route, whose errors read ``{"error": ...}``."""
    path = request.scope.get("path", "")
    return path == "/v2" or path.startswith("/v2/")


def document_paths(paths: dict[str, Any], model_name: str) -> None:
    """Complete the OpenAPI ``paths`` of the ``/v2`` routes in place: their path parameters list the one model and
    version served, and they lose FastAPI's generic 422 answer (their path parameters are plain strings; a bad
    request there is a 400)."""
    known = {"name": [model_name], "version": [MODEL_VERSION]}
    for path, item in paths.items():
        if path.startswith("/v2"):
            for operation in item.values():
                operation["responses"].pop("422", None)
                for param in operation.get("parameters", []):
                    if param["in"] == "path" and param["name"] in known:
                        param["schema"]["enum"] = known[param["name"]]


def add_routes(app: FastAPI, generator: OnnxGenerator, batcher: MicroBatcher, limits: ServeLimits, served: str) -> None:
    """Register the ``/v2`` routes on ``app``: ``generator`` served as the model ``served``, its infer requests
    run by ``batcher`` within ``limits`` (rows per request, body bytes)."""
    input_names, output_names = list(generator.input_names), list(generator.output_names)
    in_shapes, out_shapes = tensor_shapes(generator)
    metadata_v2 = model_metadata(generator, served)

    def check_model(name: str, version: str | None) -> None:
        if name != served:
            raise bad(404, f"unknown model {name!r} (this server serves {served!r})")
        if version is not None and version != MODEL_VERSION:
            raise bad(404, f"model {served!r} has no version {version!r} (it has {MODEL_VERSION!r})")

    not_found = error_answers(OIPError, {404: "unknown model or version"})

    @app.get("/v2/health/live", response_model=LiveResponse)
    async def server_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", response_model=ReadyResponse,
             responses={400: {"model": ReadyResponse, "description": "not ready (OIP: a 4xx answer means false)"}})
    async def server_ready() -> Response:
        ready = batcher.running
        return JSONResponse({"ready": ready}, status_code=200 if ready else 400)

    @app.get("/v2", response_model=ServerMetadata)
    async def server_metadata() -> dict[str, Any]:
        return {"name": "fastmmgan", "version": __version__, "extensions": [BINARY_EXTENSION]}

    async def model_ready(name: str, version: str | None) -> Response:
        check_model(name, version)
        ready = batcher.running
        return JSONResponse({"name": served, "ready": ready}, status_code=200 if ready else 400)

    async def model_info(name: str, version: str | None) -> ModelMetadata:
        check_model(name, version)
        return metadata_v2

    async def infer(request: Request, name: str, version: str | None) -> Response:
        check_model(name, version)
        header_lengths = request.headers.getlist(HEADER_LENGTH)  # present: a JSON part, then binary tensor data
        if len(header_lengths) > 1:
            raise bad(400, f"{len(header_lengths)} {HEADER_LENGTH} headers: send one")
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise bad(400, f"compressed request bodies ({encoding}) are not supported")
        body = await read_body(request, limits.max_body_bytes)

        def parse() -> tuple[InferRequest, list[np.ndarray], list[tuple[int, bool]]]:  # CPU work: off the event loop
            req, raws = parse_infer_request(body, header_lengths[0] if header_lengths else None)
            inputs = inputs_from_request(req, raws, input_names, in_shapes, limits.max_n)
            return req, inputs, outputs_from_request(req, output_names)

        req, inputs, chosen = await run_in_threadpool(parse)
        try:
            outputs = await batcher.submit(inputs)
        except ServerBusy as e:
            raise bad(503, str(e)) from None
        answer, json_length = await run_in_threadpool(infer_answer, served, req, output_names, outputs, chosen, out_shapes)
        if json_length is None:
            return Response(answer, media_type="application/json")
        return Response(answer, media_type=BINARY_MEDIA_TYPE, headers={HEADER_LENGTH: str(json_length)})

    infer_errors = error_answers(OIPError, {400: "malformed request, or invalid tensors (name, datatype, shape, count, values)",
                                            404: "unknown model or version", 413: "request body too large",
                                            503: "request queue full"})
    infer_body = json_body(InferRequest, {"id": "example", "inputs": [
        {"name": input_names[0], "shape": [1, generator.z_dim], "datatype": OIP_DATATYPE, "data": [0.5] * generator.z_dim}
    ]})
    # The binary tensor data extension: the same JSON, followed by raw tensor bytes, its length in a header.
    raw_bytes = {"schema": {"type": "string", "format": "binary"}}
    infer_body["requestBody"]["description"] = (
        f"JSON, or with binary tensor data ({BINARY_MEDIA_TYPE}): the JSON request ({HEADER_LENGTH} bytes) followed by the "
        "little-endian FP32 bytes of each input with parameters.binary_data_size, in input order")
    infer_body["requestBody"]["content"][BINARY_MEDIA_TYPE] = raw_bytes
    length = {"schema": {"type": "integer", "minimum": 0},
              "description": "with binary tensor data: the length of the JSON part at the body's start"}
    infer_body["parameters"] = [{"name": HEADER_LENGTH, "in": "header", "required": False, **length}]
    infer_answers: dict[int | str, dict[str, Any]] = {200: {
        "description": f"the outputs as JSON or, when any is asked for as binary data, as {BINARY_MEDIA_TYPE}: the JSON "
                       f"answer ({HEADER_LENGTH} bytes; binary outputs have parameters.binary_data_size, no data) followed "
                       "by the little-endian FP32 bytes of the binary outputs, in output order",
        "content": {BINARY_MEDIA_TYPE: raw_bytes},
        "headers": {HEADER_LENGTH: length},
    }, **infer_errors}
    ready_answers = {400: {"model": ModelReadyResponse, "description": "not ready"}, **not_found}
    # Each route with and without /versions/{version}; separate endpoints, so neither documents the other's
    # path parameter as a query parameter.
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        versioned = "{version}" in prefix
        wrap = _versioned if versioned else _unversioned
        app.add_api_route(prefix, wrap(model_info), methods=["GET"], response_model=ModelMetadata,
                          responses=not_found, name="model metadata" + (" (version)" if versioned else ""))
        app.add_api_route(prefix + "/ready", wrap(model_ready), methods=["GET"], response_model=ModelReadyResponse,
                          responses=ready_answers, name="model ready" + (" (version)" if versioned else ""))
        app.add_api_route(prefix + "/infer", wrap(infer, with_request=True), methods=["POST"],
                          response_model=InferResponse, responses=infer_answers, openapi_extra=infer_body,
                          name="model infer" + (" (version)" if versioned else ""))


def _unversioned(handler: Callable[..., Any], with_request: bool = False) -> Callable[..., Any]:
    """An endpoint for ``/v2/models/{name}/...`` calling ``handler([request,] name, None)``."""
    if with_request:
        async def endpoint(request: Request, name: str) -> Any:
            return await handler(request, name, None)
    else:
        async def endpoint(name: str) -> Any:
            return await handler(name, None)
    return endpoint


def _versioned(handler: Callable[..., Any], with_request: bool = False) -> Callable[..., Any]:
    """An endpoint for ``/v2/models/{name}/versions/{version}/...`` calling ``handler([request,] name, version)``."""
    if with_request:
        async def endpoint(request: Request, name: str, version: str) -> Any:
            return await handler(request, name, version)
    else:
        async def endpoint(name: str, version: str) -> Any:
            return await handler(name, version)
    return endpoint
