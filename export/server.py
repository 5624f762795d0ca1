"""``python -m fastmmgan.serve gen.onnx``: an HTTP server for an exported generator (FastAPI + uvicorn).

Endpoints:
- ``GET /health``: ``{"status": "ok", "provider": ..., "queued", "requests", "runs", "rows", "largest_batch"}``.
- ``GET /metadata``: the modalities (vocabulary, image shape, audio settings, feature sizes), noise size,
  versions, the execution provider and the server's limits.
- ``POST /generate`` with a JSON body ``{"n": 4, "given": {"text": ["seven", ...]}, "seed": 1}`` (all optional but
  ``n``; a missing seed is drawn and returned) answers ``{"n", "seed", "outputs": {<modality>: ...}}``: images
  ``[n, H, W]`` and audio ``[n, T]`` as nested arrays, text as a list of strings. Query options:
  ``?modality=NAME`` returns that modality only; ``?format=png`` one image modality as a PNG grid;
  ``?format=wav`` one audio modality as a WAV file of the n clips in order, 0.1 s of silence between them.
- ``GET /openapi.json`` (and ``/docs``): every route's body, query parameters, answers and error answers.

Open Inference Protocol (KServe v2, HTTP/REST), for clients written against NVIDIA Triton Inference Server
(e.g. ``tritonclient.http``): the model is the ONNX graph itself, with the tensors ``python -m fastmmgan.export
--triton-repo`` declares (inputs ``z`` [-1, z_dim], one ``<modality>`` [-1, dim] each, ``mask`` [-1, M]; outputs
``<modality>_out`` [-1, dim]; all FP32), under the name of the ONNX file's stem (``fastmmgan`` when the stem is
no valid name; ``--model-name`` to choose one) and version ``1``:
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

Concurrent requests are micro-batched: a request's conditions are encoded in the handler, then it joins a
bounded queue (full: 503). One worker merges queued requests (``/generate`` and ``/v2`` alike) into one ONNX
Runtime run of at most ``max_batch`` rows, waiting at most ``max_wait_ms`` for company, and hands each request
its rows back. Each ``/generate`` request keeps its own noise (drawn from its seed), so its samples equal
``OnnxGenerator.sample`` for that seed, and ``/v2`` answers equal ``OnnxGenerator.run`` on the same tensors.
Bad ``/generate`` requests get a 4xx and a one-line ``detail``: 400 malformed JSON, 413 body too large, 422
invalid fields, unknown modality or format, wrong sizes or lengths, words outside the vocabulary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastmmgan import __version__
from fastmmgan.cli import add_verbosity_flags, configure_logging, run_cli
from fastmmgan.errors import FastMMGANError
from fastmmgan.media import image_grid, wav_bytes
from fastmmgan.modalities import ModalitySpec
from fastmmgan.sampler import draw_noise, encode_conditions

from .runtime import OnnxGenerator
from .triton_repo import MODEL_NAME

log = logging.getLogger("fastmmgan.serve")

Runner = Callable[[np.ndarray, Sequence[np.ndarray], np.ndarray], list[np.ndarray]]
FORMATS = {"json": None, "png": "image", "wav": "audio"}
WAV_GAP_S = 0.1
REF = "#/components/schemas/"

# Open Inference Protocol: what a Triton server reports for the same file (see triton_repo.py), so one client
# works against both. Version "1" is the directory Triton's repository keeps the model in.
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


@dataclass(frozen=True)
class ServeLimits:
    """Bounds that keep one client from starving the others: samples per request, rows per ORT run,
    how long a request waits for others to batch with, queued requests, request body bytes."""

    max_n: int = 64
    max_batch: int = 256
    max_wait_ms: float = 2.0
    max_queue: int = 256
    max_body_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        for name in ("max_n", "max_batch", "max_queue", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise FastMMGANError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.max_wait_ms >= 0:
            raise FastMMGANError(f"max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.max_n > self.max_batch:
            raise FastMMGANError(f"max-n ({self.max_n}) must not exceed max-batch ({self.max_batch})")


class GenerateRequest(BaseModel):
    """The JSON body of ``POST /generate``."""

    model_config = ConfigDict(extra="forbid")
    n: StrictInt = Field(ge=1, description="samples to generate (at most the server's max_n)")
    given: dict[str, Any] | None = Field(
        default=None, description="conditions per modality: captions for text, arrays for images and audio"
    )
    seed: Annotated[StrictInt, Field(ge=0, lt=2**64)] | None = Field(
        default=None, description="noise seed; drawn and returned when missing"
    )


class GenerateResponse(BaseModel):
    """The JSON answer of ``POST /generate``."""

    n: int
    seed: int
    outputs: dict[str, Any] = Field(description="per modality: images [n, H, W], audio [n, T], text strings")


class ErrorDetail(BaseModel):
    """An error answer of the fastmmgan routes: one line naming the problem."""

    detail: str


class HealthResponse(BaseModel):
    """``GET /health``: the execution provider and the batching worker's counters."""

    model_config = ConfigDict(extra="allow")  # a counter added later is served, not silently dropped
    status: str
    provider: str
    queued: int
    requests: int
    runs: int
    rows: int
    largest_batch: int


class MetadataResponse(BaseModel):
    """``GET /metadata``: what the model file says about itself, the provider and the server's limits."""

    model_config = ConfigDict(extra="allow")  # a field the metadata gains later is served, not silently dropped
    modalities: list[dict[str, Any]]
    z_dim: int
    fastmmgan_version: str
    config_hash: str
    precision: str
    step: int
    provider: str
    limits: ServeLimits


# Open Inference Protocol (KServe v2) messages.


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


class ServerBusy(Exception):
    """The request queue is full."""


@dataclass
class _Job:
    inputs: list[np.ndarray]
    future: asyncio.Future

    @property
    def rows(self) -> int:
        return len(self.inputs[0])


class MicroBatcher:
    """Merges concurrent requests' inputs ``[z, x_1..x_M, mask]`` into one run of ``runner`` and splits the outputs.

    Jobs are never split: a batch closes when the next job would push it past ``max_batch`` rows (that job
    opens the next batch), when ``max_wait_ms`` has passed since the batch opened, or when the queue is empty
    and the wait is over. Runs happen one at a time on a worker thread, so the event loop keeps accepting.
    """

    def __init__(self, runner: Runner, max_batch: int, max_wait_ms: float, max_queue: int) -> None:
        self.runner = runner
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.requests = self.runs = self.rows = self.largest_batch = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._carry: _Job | None = None
        self._running: list[_Job] = []
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fastmmgan-ort")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = [*self._running, *([self._carry] if self._carry else [])]
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(ServerBusy("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def running(self) -> bool:
        """Whether the worker is taking requests: started, and neither stopped nor crashed."""
        return self._task is not None and not self._task.done()

    def stats(self) -> dict[str, int]:
        queued = self._queue.qsize() if self._queue is not None else 0
        counts = {"requests": self.requests, "runs": self.runs, "rows": self.rows, "largest_batch": self.largest_batch}
        return {"queued": queued, **counts}

    async def submit(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Queue one request's inputs; its outputs (one array per modality) when its batch has run."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if not self.running:  # nobody would ever answer a job queued now
            raise ServerBusy("the server is shutting down")
        job = _Job(inputs, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ServerBusy(f"server busy: {self.max_queue} requests already queued, retry later") from None
        self.requests += 1
        return await job.future

    async def _next_job(self, timeout: float) -> _Job | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _collect(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        jobs, rows = [first], first.rows
        deadline = loop.time() + self.max_wait
        while rows < self.max_batch:
            job = await self._next_job(deadline - loop.time())
            if job is None:
                break
            if rows + job.rows > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            rows += job.rows
        return [j for j in jobs if not j.future.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            self._running = jobs
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, jobs)
            except Exception as e:  # hand every waiting request the failure; keep serving
                outputs = [e] * len(jobs)
            self._running = []
            for job, out in zip(jobs, outputs, strict=True):
                if job.future.done():
                    continue
                if isinstance(out, Exception):
                    job.future.set_exception(out)
                else:
                    job.future.set_result(out)

    def _run(self, jobs: list[_Job]) -> list[list[np.ndarray]]:
        merged = [np.concatenate(parts) for parts in zip(*(j.inputs for j in jobs), strict=True)]
        z, *xs, mask = merged
        outputs = self.runner(z, xs, mask)
        rows = [j.rows for j in jobs]
        self.runs += 1
        self.rows += sum(rows)
        self.largest_batch = max(self.largest_batch, sum(rows))
        cuts = np.cumsum(rows)[:-1]
        per_output = [np.split(o, cuts) for o in outputs]
        return [list(parts) for parts in zip(*per_output, strict=True)]


def _bad(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _bad(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _bad(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def one_line(errors: Sequence[Mapping[str, Any]], drop: tuple[str, ...] = ()) -> str:
    """pydantic's (or FastAPI's) validation errors as one line ``field.path: message; ...``; a leading location
    part in ``drop`` (FastAPI's "body") is left out, so both name a field the same way."""
    problems = []
    for err in errors:
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in drop:
            loc = loc[1:]
        problems.append(f"{'.'.join(loc) or 'body'}: {err['msg']}")
    return "; ".join(problems).replace("\n", " ")


def _json_object(body: bytes, example: str) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise _bad(400, f"malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise _bad(400, f"the body must be a JSON object such as {example}")
    return obj


def parse_request(body: bytes) -> GenerateRequest:
    """JSON body -> request (400 when it is not a JSON object, 422 when a field is wrong)."""
    obj = _json_object(body, '{"n": 4, "given": {...}, "seed": 1}')
    try:
        return GenerateRequest.model_validate(obj)
    except ValidationError as e:
        raise _bad(422, one_line(e.errors())) from None


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
                raise _bad(400, BINARY_REFUSED)
            if any(p in params for p in SHARED_MEMORY_PARAMETERS):
                raise _bad(400, 'shared-memory tensors are not supported: send each tensor\'s values as JSON "data"')
            if params.get("classification"):
                raise _bad(400, "the classification extension is not supported: ask for the output without it")


def parse_infer_request(body: bytes) -> InferRequest:
    """JSON body -> Open Inference Protocol infer request (400 when anything is wrong, as OIP specifies)."""
    obj = _json_object(body, '{"inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [...]}]}')
    _refuse_extensions(obj)
    try:
        return InferRequest.model_validate(obj)
    except ValidationError as e:
        raise _bad(400, one_line(e.errors())) from None


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
        raise _bad(400, f"{where}: datatype {tensor.datatype!r}, expected {OIP_DATATYPE}")
    if len(tensor.shape) != 2 or tensor.shape[1] != width:
        raise _bad(400, f"{where}: shape {tensor.shape}, expected [-1, {width}] (rows, {width} values each)")
    flat: list[Any] = []
    try:
        nested = _nested(tensor.data, 1, len(tensor.shape), flat)
    except ValueError as e:
        raise _bad(400, f"{where}: {e}") from None
    if len(nested) > 1 and nested != tensor.shape:
        raise _bad(400, f"{where}: nested data of shape {nested} for shape {tensor.shape}")
    count = tensor.shape[0] * tensor.shape[1]
    if len(flat) != count:
        raise _bad(400, f"{where}: {len(flat)} values for shape {tensor.shape} ({count} expected)")
    try:
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
            values = np.array(flat, dtype=np.float64).astype(np.float32)
    except OverflowError:  # an integer beyond float64
        values = np.full(1, np.inf, np.float32)
    if not np.isfinite(values).all():
        raise _bad(400, f"{where}: values must be finite float32 numbers (NaN, infinity or beyond 3.4e38 found)")
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
            raise _bad(400, f"unknown input {tensor.name!r} (this model's inputs: {', '.join(input_names)})")
        if tensor.name in sent:
            raise _bad(400, f"input {tensor.name!r} is sent twice")
        sent[tensor.name] = tensor_from_request(tensor, width[tensor.name])
    if z_name not in sent:
        raise _bad(400, f"input {z_name!r} is required: the noise, shape [-1, {width[z_name]}]")
    rows = len(sent[z_name])
    if any(len(a) != rows for a in sent.values()):
        counts = ", ".join(f"{name} {len(a)}" for name, a in sent.items())
        raise _bad(400, f"the inputs must have the same number of rows, got {counts}")
    if not 1 <= rows <= max_rows:
        raise _bad(400, f"{rows} rows: a request must have 1 to {max_rows} rows (this server's limit)")
    if mask_name in sent:
        mask = sent[mask_name]
        if not np.isin(mask, (0.0, 1.0)).all():
            raise _bad(400, f"input {mask_name!r}: values must be 0 (not given) or 1 (given)")
        missing = [name for m, name in enumerate(x_names) if name not in sent and mask[:, m].any()]
        if missing:
            raise _bad(400, f"input {mask_name!r} marks {missing[0]!r} as given, but no {missing[0]!r} input was sent")
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
            raise _bad(400, f"unknown output {out.name!r} (this model's outputs: {', '.join(output_names)})")
        if output_names.index(out.name) in chosen:
            raise _bad(400, f"output {out.name!r} is asked for twice")
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
            raise _bad(400, f"output {output_names[i]!r} is not finite for these inputs (values far outside the usual range?)")
        tensors.append({"name": output_names[i], "datatype": OIP_DATATYPE, "shape": list(out.shape),
                        "data": out.ravel().tolist()})
    answer: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION}
    if req.id is not None:
        answer["id"] = req.id
    answer["outputs"] = tensors
    return json.dumps(answer, allow_nan=False).encode()


def pick_output(specs: Sequence[ModalitySpec], fmt: str, modality: str | None) -> ModalitySpec | None:
    """The one modality a request asks for (None: all of them, as JSON); 422 when the choice is impossible."""
    if fmt not in FORMATS:
        raise _bad(422, f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    kind = FORMATS[fmt]
    if modality is not None:
        spec = next((s for s in specs if s.name == modality), None)
        if spec is None:
            raise _bad(422, f"unknown modality {modality!r} (this model has: {', '.join(s.name for s in specs)})")
        if kind is not None and spec.kind != kind:
            raise _bad(422, f"format {fmt} needs an {kind} modality; {modality!r} is {spec.kind}")
        return spec
    if kind is None:
        return None
    matches = [s for s in specs if s.kind == kind]
    if len(matches) != 1:
        names = ", ".join(s.name for s in matches) or "none"
        raise _bad(422, f"format {fmt}: say which {kind} modality with modality=... (this model's: {names})")
    return matches[0]


def _jsonable(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else list(value)


def _decode(spec: ModalitySpec, features: np.ndarray, raw: Mapping[str, Any]) -> Any:
    return raw[spec.name] if spec.name in raw else spec.decode(torch.from_numpy(features))


def _png(images: np.ndarray) -> bytes:
    buf = io.BytesIO()
    image_grid(np.asarray(images, dtype=np.float32)).save(buf, format="PNG")
    return buf.getvalue()


def _wav(clips: np.ndarray, sample_rate: int) -> bytes:
    gap = np.zeros(int(WAV_GAP_S * sample_rate), dtype=np.float32)
    parts = [p for clip in np.asarray(clips, dtype=np.float32) for p in (clip, gap)][:-1]
    return wav_bytes(np.concatenate(parts), sample_rate)


def _render(
    specs: Sequence[ModalitySpec],
    outputs: Sequence[np.ndarray],
    raw: Mapping[str, Any],
    fmt: str,
    chosen: ModalitySpec | None,
) -> tuple[bytes | dict[str, Any], str]:
    """Decode what the request asked for: a JSON-ready dict, or PNG/WAV bytes, and its media type."""
    if fmt == "png":
        return _png(_decode(chosen, outputs[specs.index(chosen)], raw)), "image/png"
    if fmt == "wav":
        return _wav(_decode(chosen, outputs[specs.index(chosen)], raw), chosen.sample_rate), "audio/wav"
    wanted = [chosen] if chosen is not None else list(specs)
    return {s.name: _jsonable(_decode(s, outputs[specs.index(s)], raw)) for s in wanted}, "application/json"


def _prepare(
    specs: Sequence[ModalitySpec], z_dim: int, req: GenerateRequest, seed: int
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Encode the conditions and draw the noise: the graph inputs ``[z, x_1..x_M, mask]`` and the raw conditions."""
    try:
        xs, mask, raw = encode_conditions(specs, req.n, req.given)
    except (ValueError, TypeError) as e:  # FastMMGANError is a ValueError
        raise _bad(422, str(e)) from None
    z = draw_noise(req.n, z_dim, seed)
    return [z.numpy(), *(x.numpy() for x in xs), mask.float().numpy()], raw


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


def _is_oip(request: Request) -> bool:
    """Whether the request is for an Open Inference Protocol route, whose errors read ``{"error": ...}``."""
    path = request.scope.get("path", "")
    return path == "/v2" or path.startswith("/v2/")


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Errors as one line: ``{"detail": ...}`` on the fastmmgan routes, ``{"error": ...}`` on ``/v2`` (OIP)."""
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    key = "error" if _is_oip(request) else "detail"
    return JSONResponse({key: str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's own validation errors as one line too (422 ``detail``; 400 ``error`` on ``/v2`` as OIP says)."""
    message = one_line(exc.errors(), drop=("body",))
    if _is_oip(request):
        return JSONResponse({"error": message}, status_code=400)
    return JSONResponse({"detail": message}, status_code=422)


def _json_body(model: type[BaseModel], example: Mapping[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` from its raw body, with a request that works."""
    media = {"schema": {"$ref": REF + model.__name__}, "example": example}
    return {"requestBody": {"required": True, "content": {"application/json": media}}}


def _document(app: FastAPI, bodies: Sequence[type[BaseModel]], model_name: str) -> None:
    """The OpenAPI document, completed: the request models of the routes that read their raw body (to bound its
    size) join the components their ``requestBody`` refers to; the ``/v2`` routes' path parameters list the one
    model and version served, and those routes lose FastAPI's generic 422 answer (their path parameters are plain
    strings; a bad request there is a 400)."""
    known = {"name": [model_name], "version": [MODEL_VERSION]}
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in bodies:
                found = model.model_json_schema(ref_template=REF + "{model}")
                components.update(found.pop("$defs", {}))
                components[model.__name__] = found
            for path, item in schema["paths"].items():
                if path.startswith("/v2"):
                    for operation in item.values():
                        operation["responses"].pop("422", None)
                        for param in operation.get("parameters", []):
                            if param["in"] == "path" and param["name"] in known:
                                param["schema"]["enum"] = known[param["name"]]
            if REF + "HTTPValidationError" not in json.dumps(schema["paths"]):
                components.pop("HTTPValidationError", None)
                components.pop("ValidationError", None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _errors(model: type[BaseModel], descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: each status answered with ``model`` for the reason given."""
    return {status: {"model": model, "description": text} for status, text in descriptions.items()}


def create_app(generator: OnnxGenerator, limits: ServeLimits | None = None, model_name: str | None = None) -> FastAPI:
    """The FastAPI app serving ``generator``; start it with its lifespan (uvicorn, or ``with TestClient(app)``).
    ``model_name``: its name on the ``/v2`` routes (None: :func:`default_model_name`)."""
    limits = limits or ServeLimits()
    served = check_model_name(model_name) if model_name is not None else default_model_name(generator)
    specs = list(generator.modalities)
    input_names, output_names = list(generator.input_names), list(generator.output_names)
    in_widths = [generator.z_dim, *(s.dim for s in specs), len(specs)]
    metadata_v2 = model_metadata(generator, served)
    batcher = MicroBatcher(generator.run, limits.max_batch, limits.max_wait_ms, limits.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="fastmmgan generator", version=__version__, lifespan=lifespan)
    app.state.batcher = batcher
    app.state.limits = limits
    app.state.model_name = served
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    _document(app, [GenerateRequest, InferRequest], served)

    @app.get("/health", response_model=HealthResponse)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "provider": generator.provider, **batcher.stats()}

    @app.get("/metadata", response_model=MetadataResponse)
    async def metadata() -> dict[str, Any]:
        return {**generator.metadata.describe(), "provider": generator.provider, "limits": asdict(limits)}

    binary = {"schema": {"type": "string", "format": "binary"}}
    seed_header = {"X-Seed": {"description": "the seed of a PNG or WAV answer", "schema": {"type": "string"}}}

    @app.post(
        "/generate",
        response_model=GenerateResponse,
        openapi_extra=_json_body(GenerateRequest, {"n": 2, "seed": 1}),
        responses={
            200: {"content": {"image/png": binary, "audio/wav": binary}, "headers": seed_header,
                  "description": "the samples: JSON, or a PNG grid (format=png), or a WAV file (format=wav)"},
            **_errors(ErrorDetail, {400: "malformed JSON, or not a JSON object", 413: "request body too large",
                                    422: "invalid fields, modality, format, sizes or words", 503: "request queue full"}),
        },
    )
    async def generate(
        request: Request,
        fmt: Annotated[str, Query(alias="format", description="json, png (one image modality) or wav (one audio "
                                  "modality)", json_schema_extra={"enum": list(FORMATS)})] = "json",
        # A default, not an annotation: the module's annotations are strings, resolved without this closure's specs.
        modality: str | None = Query(None, description="answer with this modality only",  # noqa: B008
                                     json_schema_extra={"enum": [s.name for s in specs]}),
    ) -> Response:
        """Samples for the request's conditions and seed; the body is read raw, so its size is bounded."""
        req = parse_request(await read_body(request, limits.max_body_bytes))
        chosen = pick_output(specs, fmt, modality)
        if req.n > limits.max_n:
            raise _bad(422, f"n={req.n} exceeds this server's limit of {limits.max_n} samples per request")
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        inputs, raw = await run_in_threadpool(_prepare, specs, generator.z_dim, req, seed)
        try:
            outputs = await batcher.submit(inputs)
        except ServerBusy as e:
            raise _bad(503, str(e)) from None
        body, media_type = await run_in_threadpool(_render, specs, outputs, raw, fmt, chosen)
        if isinstance(body, dict):
            return JSONResponse({"n": req.n, "seed": seed, "outputs": body})
        return Response(body, media_type=media_type, headers={"X-Seed": str(seed)})

    # Open Inference Protocol (KServe v2).

    def check_model(name: str, version: str | None) -> None:
        if name != served:
            raise _bad(404, f"unknown model {name!r} (this server serves {served!r})")
        if version is not None and version != MODEL_VERSION:
            raise _bad(404, f"model {served!r} has no version {version!r} (it has {MODEL_VERSION!r})")

    not_found = _errors(OIPError, {404: "unknown model or version"})

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
            raise _bad(400, BINARY_REFUSED)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise _bad(400, f"compressed request bodies ({encoding}) are not supported")
        body = await read_body(request, limits.max_body_bytes)

        def parse() -> tuple[InferRequest, list[np.ndarray], list[int]]:  # CPU work: off the event loop
            req = parse_infer_request(body)
            return req, inputs_from_request(req, input_names, in_widths, limits.max_n), outputs_from_request(req, output_names)

        req, inputs, chosen = await run_in_threadpool(parse)
        try:
            outputs = await batcher.submit(inputs)
        except ServerBusy as e:
            raise _bad(503, str(e)) from None
        answer = await run_in_threadpool(infer_answer, served, req, output_names, outputs, chosen)
        return Response(answer, media_type="application/json")

    infer_errors = _errors(OIPError, {400: "malformed request, or invalid tensors (name, datatype, shape, count, values)",
                                      404: "unknown model or version", 413: "request body too large",
                                      503: "request queue full"})
    infer_body = _json_body(InferRequest, {"id": "example", "inputs": [
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

    return app


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


def build_parser() -> argparse.ArgumentParser:
    d = ServeLimits()
    p = argparse.ArgumentParser(
        prog="python -m fastmmgan.serve",
        description="Serve an exported generator over HTTP: /health, /metadata, POST /generate, and the Open "
        "Inference Protocol (KServe v2) under /v2 for Triton clients.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="the .onnx file written by python -m fastmmgan.export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port, printed at start)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (None: physical cores)")
    p.add_argument("--spin", action="store_true", help="let ONNX Runtime's threads busy-wait (only on dedicated cores)")
    p.add_argument("--max-n", type=int, default=d.max_n, help="most samples one request may ask for")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="most rows merged into one ONNX Runtime run")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="longest wait for requests to batch with")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="most queued requests (then 503)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="largest request body (then 413)")
    p.add_argument("--model-name", default=None,
                   help="the model's name on the /v2 routes (None: the ONNX file's stem, as --triton-repo names it)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_verbosity_flags(p)
    return p


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound before the server starts so a taken port is a clear start-up error."""
    if not 0 <= port <= 65535:
        raise FastMMGANError(f"--port must be in 0-65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise FastMMGANError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def main(argv: list[str] | None = None) -> int:
    """Start the server. PyTorch (audio decoding in request threads) gets one thread per request, so
    concurrent decodes do not multiply into oversubscription next to ONNX Runtime's pool."""
    args = build_parser().parse_args(argv)
    configure_logging(args)
    limits = ServeLimits(args.max_n, args.max_batch, args.max_wait_ms, args.max_queue, args.max_body_bytes)
    if args.model_name is not None:
        check_model_name(args.model_name)  # before the model loads: a typo costs no wait
    generator = OnnxGenerator(args.model, device=args.device, intra_op_threads=args.threads, allow_spinning=args.spin)
    app = create_app(generator, limits, args.model_name)
    sock = bind_socket(args.host, args.port)
    torch.set_num_threads(1)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(f"serving {args.model} on http://{url_host}:{port} ({generator.provider}), "
          f"Open Inference Protocol model {app.state.model_name!r}", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    run_cli(main)
