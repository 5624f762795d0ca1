"""``python -m fastmmgan.serve gen.onnx``: an HTTP server for an exported generator (FastAPI + uvicorn).

Endpoints:
- ``GET /health``: ``{"status": "ok", "provider": ..., "queued", "requests", "runs", "rows", "largest_batch"}``.
- ``GET /metadata``: the modalities (vocabulary, image shape and channels, audio settings, feature sizes), noise size,
  versions, the execution provider and the server's limits.
- ``POST /generate`` with a JSON body ``{"n": 4, "given": {"text": ["seven", ...]}, "seed": 1}`` (all optional but
  ``n``; a missing seed is drawn and returned) answers ``{"n", "seed", "outputs": {<modality>: ...}}``: images
  ``[n, H, W]`` (grey) or ``[n, H, W, 3]`` (RGB) and audio ``[n, T]`` as nested arrays, text as a list of strings
  (given images come in the same forms, or one for every sample). Query options:
  ``?modality=NAME`` returns that modality only; ``?format=png`` one image modality as a PNG grid ("L" or "RGB");
  ``?format=wav`` one audio modality as a WAV file of the n clips in order, 0.1 s of silence between them.
- ``GET /openapi.json`` (and ``/docs``): every route's body, query parameters, answers and error answers.
- ``/v2/...``: the Open Inference Protocol (KServe v2, HTTP/REST) for clients written against NVIDIA Triton
  Inference Server (e.g. ``tritonclient.http``); its routes, tensors and errors are listed in
  :mod:`fastmmgan.export.oip`.

Concurrent requests are micro-batched (:mod:`fastmmgan.export.batching`): a request's conditions are encoded
in the handler, then it joins a bounded queue (full: 503). One worker merges queued requests (``/generate`` and
``/v2`` alike) into one ONNX Runtime run of at most ``max_batch`` rows, waiting at most ``max_wait_ms`` for
company, and hands each request its rows back. Each ``/generate`` request keeps its own noise (drawn from its
seed), so its samples equal ``OnnxGenerator.sample`` for that seed, and ``/v2`` answers equal
``OnnxGenerator.run`` on the same tensors.
Bad ``/generate`` requests get a 4xx and a one-line ``detail``: 400 malformed JSON, 413 body too large, 422
invalid fields, unknown modality or format, wrong sizes or lengths, words outside the vocabulary.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import secrets
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict
from typing import Annotated, Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Query, Request
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

from . import oip
from .batching import MicroBatcher, ServerBusy  # these two and ServeLimits: callers import them from here too
from .http_common import REF, ServeLimits, bad, error_answers, json_body, json_object, one_line, read_body
from .runtime import OnnxGenerator

FORMATS = {"json": None, "png": "image", "wav": "audio"}
WAV_GAP_S = 0.1


class GenerateRequest(BaseModel):
    """The JSON body of ``POST /generate``."""

    model_config = ConfigDict(extra="forbid")
    n: StrictInt = Field(ge=1, description="samples to generate (at most the server's max_n)")
    given: dict[str, Any] | None = Field(
        default=None, description="conditions per modality: captions for text, arrays for images ([n, H, W] grey, "
        "[n, H, W, 3] RGB) and audio"
    )
    seed: Annotated[StrictInt, Field(ge=0, lt=2**64)] | None = Field(
        default=None, description="noise seed; drawn and returned when missing"
    )


class GenerateResponse(BaseModel):
    """The JSON answer of ``POST /generate``."""

    n: int
    seed: int
    outputs: dict[str, Any] = Field(description="per modality: images [n, H, W] (grey) or [n, H, W, 3] (RGB), "
                                    "audio [n, T], text strings")


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


def parse_request(body: bytes) -> GenerateRequest:
    """JSON body -> request (400 when it is not a JSON object, 422 when a field is wrong)."""
    obj = json_object(body, '{"n": 4, "given": {...}, "seed": 1}')
    try:
        return GenerateRequest.model_validate(obj)
    except ValidationError as e:
        raise bad(422, one_line(e.errors())) from None


def pick_output(specs: Sequence[ModalitySpec], fmt: str, modality: str | None) -> ModalitySpec | None:
    """The one modality a request asks for (None: all of them, as JSON); 422 when the choice is impossible."""
    if fmt not in FORMATS:
        raise bad(422, f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    kind = FORMATS[fmt]
    if modality is not None:
        spec = next((s for s in specs if s.name == modality), None)
        if spec is None:
            raise bad(422, f"unknown modality {modality!r} (this model has: {', '.join(s.name for s in specs)})")
        if kind is not None and spec.kind != kind:
            raise bad(422, f"format {fmt} needs an {kind} modality; {modality!r} is {spec.kind}")
        return spec
    if kind is None:
        return None
    matches = [s for s in specs if s.kind == kind]
    if len(matches) != 1:
        names = ", ".join(s.name for s in matches) or "none"
        raise bad(422, f"format {fmt}: say which {kind} modality with modality=... (this model's: {names})")
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
        raise bad(422, str(e)) from None
    z = draw_noise(req.n, z_dim, seed)
    return [z.numpy(), *(x.numpy() for x in xs), mask.float().numpy()], raw


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Errors as one line: ``{"detail": ...}`` on the fastmmgan routes, ``{"error": ...}`` on ``/v2`` (OIP)."""
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    key = "error" if oip.is_oip_request(request) else "detail"
    return JSONResponse({key: str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's own validation errors as one line too (422 ``detail``; 400 ``error`` on ``/v2`` as OIP says)."""
    message = one_line(exc.errors(), drop=("body",))
    if oip.is_oip_request(request):
        return JSONResponse({"error": message}, status_code=400)
    return JSONResponse({"detail": message}, status_code=422)


def _document(app: FastAPI, bodies: Sequence[type[BaseModel]], model_name: str) -> None:
    """The OpenAPI document, completed: the request models of the routes that read their raw body (to bound its
    size) join the components their ``requestBody`` refers to, and the ``/v2`` routes' entries are completed by
    :func:`.oip.document_paths`."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in bodies:
                found = model.model_json_schema(ref_template=REF + "{model}")
                components.update(found.pop("$defs", {}))
                components[model.__name__] = found
            oip.document_paths(schema["paths"], model_name)
            if REF + "HTTPValidationError" not in json.dumps(schema["paths"]):
                components.pop("HTTPValidationError", None)
                components.pop("ValidationError", None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(generator: OnnxGenerator, limits: ServeLimits | None = None, model_name: str | None = None) -> FastAPI:
    """The FastAPI app serving ``generator``; start it with its lifespan (uvicorn, or ``with TestClient(app)``).
    ``model_name``: its name on the ``/v2`` routes (None: :func:`.oip.default_model_name`)."""
    limits = limits or ServeLimits()
    served = oip.check_model_name(model_name) if model_name is not None else oip.default_model_name(generator)
    specs = list(generator.modalities)
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
    _document(app, [GenerateRequest, oip.InferRequest], served)

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
        openapi_extra=json_body(GenerateRequest, {"n": 2, "seed": 1}),
        responses={
            200: {"content": {"image/png": binary, "audio/wav": binary}, "headers": seed_header,
                  "description": "the samples: JSON, or a PNG grid (format=png), or a WAV file (format=wav)"},
            **error_answers(ErrorDetail, {400: "malformed JSON, or not a JSON object", 413: "request body too large",
                                          422: "invalid fields, modality, format, sizes or words",
                                          503: "request queue full"}),
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
            raise bad(422, f"n={req.n} exceeds this server's limit of {limits.max_n} samples per request")
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        inputs, raw = await run_in_threadpool(_prepare, specs, generator.z_dim, req, seed)
        try:
            outputs = await batcher.submit(inputs)
        except ServerBusy as e:
            raise bad(503, str(e)) from None
        body, media_type = await run_in_threadpool(_render, specs, outputs, raw, fmt, chosen)
        if isinstance(body, dict):
            return JSONResponse({"n": req.n, "seed": seed, "outputs": body})
        return Response(body, media_type=media_type, headers={"X-Seed": str(seed)})

    oip.add_routes(app, generator, batcher, limits, served)  # the /v2 routes, after ours

    return app


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
        oip.check_model_name(args.model_name)  # before the model loads: a typo costs no wait
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
