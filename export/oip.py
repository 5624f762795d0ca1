"""The Open Inference Protocol (KServe v2, HTTP/REST) routes of the HTTP server, for clients written against
NVIDIA Triton Inference Server (e.g. ``tritonclient.http``): the protocol's messages, the parsing and checking of
infer requests, the model metadata, and the registration of the ``/v2`` routes on the app.

It is our own code rather than a KServe or Triton server because it is only a small JSON mapping onto the same
:class:`~fastmmgan.export.batching.MicroBatcher` that ``/generate`` uses (see :mod:`fastmmgan.export.server`).

The model is the ONNX graph itself, with the tensors ``python -m fastmmgan.export --triton-repo`` declares
(inputs ``z`` [-1, z_dim], one ``<modality>`` [-1, dim] each, ``mask`` [-1, M]; outputs ``<modality>_out``
[-1, dim]; all FP32), under the name of the ONNX file's stem (``fastmmgan`` when the stem is no valid name;
``--model-name`` to choose one) and version ``1``:
- ``GET /v2/health/live``, ``GET /v2/health/ready``: ``{"live": true}``, ``{"ready": true}`` (400 with
  ``{"ready": false}`` while the batching worker is not running: OIP says 4xx means false).
- ``GET /v2``: ``{"name", "version", "extensions"}``.
- ``GET /v2/models/{name}[/versions/1]``: ``{"name", "versions", "platform": "onnxruntime_onnx", "inputs",
  "outputs"}``, each tensor ``{"name", "datatype", "shape"}``; ``.../ready``: ``{"name", "ready"}``.
- ``POST /v2/models/{name}[/versions/1]/infer``: ``{"id"?, "inputs": [{"name", "shape", "datatype", "data"}],
  "outputs"?: [{"name"}]}`` answers ``{"model_name", "model_version", "id"?, "outputs": [{"name", "datatype",
  "shape", "data"}]}``, ``data`` flat in row-major order (requests may send it flat or nested). ``z`` is
  required; a missing ``<modality>`` input is zeros (a mask sent may not mark it as given), and a missing
  ``mask`` marks exactly the modality inputs sent as given. Values must be finite, the mask 0 or 1, at most
  ``max_n`` rows per request. Tensor data travels
  as JSON only: binary tensor data and shared memory are refused with 400; a request for binary outputs gets
  JSON outputs (tritonclient reads both). Errors are ``{"error": "one line"}``: 400 bad request, 404 unknown
  model or version, 413 body too large, 503 queue full.

``/v2`` answers equal ``OnnxGenerator.run`` on the same tensors.
"""

from __future__ import annotations

import json
import logging
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
from .runtime import OnnxGenerator
from .triton_repo import MODEL_NAME

log = logging.getLogger("fastmmgan.serve")

# What a Triton server reports for the same file (see triton_repo.py), so one client works against both.
# Version "1" is the directory Triton's repository keeps the model in.
OIP_DATATYPE = "FP32"
MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
DEFAULT_MODEL_NAME = "fastmmgan"
BINARY_PARAMETERS = ("binary_data_size",)
SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
BINARY_REFUSED = (
    "binary tensor data is not supported: send each tensor's values as JSON \"data\" "
    "(tritonclient: set_data_from_numpy(array, binary_data=False))"
)


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


def _refuse_extensions(obj: Mapping[str, Any]) -> None:
    """400 for the OIP extensions this server does not implement, before field validation would call the
    binary form's missing ``data`` a mere missing field."""
    for key in ("inputs", "outputs"):
        tensors = obj.get(key)
        for tensor in tensors if isinstance(tensors, list) else ():
            params = tensor.get("parameters") if isinstance(tensor, dict) else None
            if not isinstance(params, dict):
                continue
            if any(p in params for p in BINARY_PARAMETERS):
                raise bad(400, BINARY_REFUSED)
            if any(p in params for p in SHARED_MEMORY_PARAMETERS):
                raise bad(400, 'shared-memory tensors are not supported: send each tensor\'s values as JSON "data"')
            if params.get("classification"):
                raise bad(400, "the classification extension is not supported: ask for the output without it")


def parse_infer_request(body: bytes) -> InferRequest:
    """JSON body -> Open Inference Protocol infer request (400 when anything is wrong, as OIP specifies)."""
    obj = json_object(body, '{"inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [...]}]}')
    _refuse_extensions(obj)
    try:
        return InferRequest.model_validate(obj)
    except ValidationError as e:
        raise bad(400, one_line(e.errors())) from None


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


def tensor_from_request(tensor: InferInputTensor, width: int) -> np.ndarray:
    """One FP32 input ``[rows, width]`` as float32; 400 for a wrong datatype, shape, count or value."""
    where = f"input {tensor.name!r}"
    if tensor.datatype != OIP_DATATYPE:
        raise bad(400, f"{where}: datatype {tensor.datatype!r}, expected {OIP_DATATYPE}")
    if len(tensor.shape) != 2 or tensor.shape[1] != width:
        raise bad(400, f"{where}: shape {tensor.shape}, expected [-1, {width}] (rows, {width} values each)")
    flat: list[Any] = []
    try:
        nested = _nested(tensor.data, 1, len(tensor.shape), flat)
    except ValueError as e:
        raise bad(400, f"{where}: {e}") from None
    if len(nested) > 1 and nested != tensor.shape:
        raise bad(400, f"{where}: nested data of shape {nested} for shape {tensor.shape}")
    count = tensor.shape[0] * tensor.shape[1]
    if len(flat) != count:
        raise bad(400, f"{where}: {len(flat)} values for shape {tensor.shape} ({count} expected)")
    try:
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
            values = np.array(flat, dtype=np.float64).astype(np.float32)
    except OverflowError:  # an integer beyond float64
        values = np.full(1, np.inf, np.float32)
    if not np.isfinite(values).all():
        raise bad(400, f"{where}: values must be finite float32 numbers (NaN, infinity or beyond 3.4e38 found)")
    return values.reshape(tensor.shape)


def inputs_from_request(
    req: InferRequest, input_names: Sequence[str], widths: Sequence[int], max_rows: int
) -> list[np.ndarray]:
    """The graph inputs ``[z, x_1..x_M, mask]`` of an infer request. ``z`` is required; a missing modality input
    is zeros (not given), a missing mask marks exactly the modality inputs sent as given; 400 when wrong."""
    z_name, *x_names, mask_name = input_names
    width = dict(zip(input_names, widths, strict=True))
    sent: dict[str, np.ndarray] = {}
    for tensor in req.inputs:
        if tensor.name not in width:
            raise bad(400, f"unknown input {tensor.name!r} (this model's inputs: {', '.join(input_names)})")
        if tensor.name in sent:
            raise bad(400, f"input {tensor.name!r} is sent twice")
        sent[tensor.name] = tensor_from_request(tensor, width[tensor.name])
    if z_name not in sent:
        raise bad(400, f"input {z_name!r} is required: the noise, shape [-1, {width[z_name]}]")
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
    xs = [sent[name] if name in sent else np.zeros((rows, width[name]), np.float32) for name in x_names]
    return [sent[z_name], *xs, mask]


def outputs_from_request(req: InferRequest, output_names: Sequence[str]) -> list[int]:
    """Indices of the outputs to answer with, in the order asked (all, in graph order, when none are named)."""
    if not req.outputs:
        return list(range(len(output_names)))
    chosen: list[int] = []
    for out in req.outputs:
        if out.name not in output_names:
            raise bad(400, f"unknown output {out.name!r} (this model's outputs: {', '.join(output_names)})")
        if output_names.index(out.name) in chosen:
            raise bad(400, f"output {out.name!r} is asked for twice")
        chosen.append(output_names.index(out.name))
    return chosen


def infer_answer(
    model_name: str, req: InferRequest, output_names: Sequence[str], outputs: Sequence[np.ndarray], chosen: Sequence[int]
) -> bytes:
    """The JSON answer: the chosen outputs as flat FP32 data; 400 when the model's outputs are not finite
    (strict JSON has no NaN, and only inputs far outside the trained range produce them)."""
    tensors = []
    for i in chosen:
        out = outputs[i]
        if not np.isfinite(out).all():
            raise bad(400, f"output {output_names[i]!r} is not finite for these inputs (values far outside the usual range?)")
        tensors.append({"name": output_names[i], "datatype": OIP_DATATYPE, "shape": list(out.shape),
                        "data": out.ravel().tolist()})
    answer: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION}
    if req.id is not None:
        answer["id"] = req.id
    answer["outputs"] = tensors
    return json.dumps(answer, allow_nan=False).encode()


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


def model_metadata(generator: OnnxGenerator, name: str) -> ModelMetadata:
    """The OIP model metadata: the graph's own tensors, -1 for the batch axis, as Triton reports them."""
    specs = generator.modalities
    in_widths = [generator.z_dim, *(s.dim for s in specs), len(specs)]
    tensors = [
        [TensorMetadata(name=n, datatype=OIP_DATATYPE, shape=[-1, w]) for n, w in zip(names, widths, strict=True)]
        for names, widths in ((generator.input_names, in_widths), (generator.output_names, [s.dim for s in specs]))
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
    specs = list(generator.modalities)
    input_names, output_names = list(generator.input_names), list(generator.output_names)
    in_widths = [generator.z_dim, *(s.dim for s in specs), len(specs)]
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
        return {"name": "fastmmgan", "version": __version__, "extensions": []}

    async def model_ready(name: str, version: str | None) -> Response:
        check_model(name, version)
        ready = batcher.running
        return JSONResponse({"name": served, "ready": ready}, status_code=200 if ready else 400)

    async def model_info(name: str, version: str | None) -> ModelMetadata:
        check_model(name, version)
        return metadata_v2

    async def infer(request: Request, name: str, version: str | None) -> Response:
        check_model(name, version)
        if "inference-header-content-length" in request.headers:
            raise bad(400, BINARY_REFUSED)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise bad(400, f"compressed request bodies ({encoding}) are not supported")
        body = await read_body(request, limits.max_body_bytes)

        def parse() -> tuple[InferRequest, list[np.ndarray], list[int]]:  # CPU work: off the event loop
            req = parse_infer_request(body)
            return req, inputs_from_request(req, input_names, in_widths, limits.max_n), outputs_from_request(req, output_names)

        req, inputs, chosen = await run_in_threadpool(parse)
        try:
            outputs = await batcher.submit(inputs)
        except ServerBusy as e:
            raise bad(503, str(e)) from None
        answer = await run_in_threadpool(infer_answer, served, req, output_names, outputs, chosen)
        return Response(answer, media_type="application/json")

    infer_errors = error_answers(OIPError, {400: "malformed request, or invalid tensors (name, datatype, shape, count, values)",
                                            404: "unknown model or version", 413: "request body too large",
                                            503: "request queue full"})
    infer_body = json_body(InferRequest, {"id": "example", "inputs": [
        {"name": input_names[0], "shape": [1, generator.z_dim], "datatype": OIP_DATATYPE, "data": [0.5] * generator.z_dim}
    ]})
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
                          response_model=InferResponse, responses=infer_errors, openapi_extra=infer_body,
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
