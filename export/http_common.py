"""What both route sets of the HTTP server share: the server's limits, reading a bounded request body, JSON
bodies and validation errors as one-line 4xx answers, and the OpenAPI pieces of routes that read their raw body.

:mod:`fastmmgan.export.server` (the fastmmgan routes) and :mod:`fastmmgan.export.oip` (the Open Inference
Protocol routes) both build on it; it imports neither.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel

from fastmmgan.errors import FastMMGANError

REF = "#/components/schemas/"


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


def bad(status: int, message: str) -> HTTPException:
    """An error answer of ``status`` with a one-line ``message`` (the app's handlers give it each route set's form)."""
    return HTTPException(status_code=status, detail=message)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise bad(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise bad(413, f"request body exceeds the limit of {limit} bytes")
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


def json_object(body: bytes, example: str) -> dict[str, Any]:
    """The body as a JSON object; 400 when it is malformed JSON or another JSON value (``example`` shows one)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise bad(400, f"malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise bad(400, f"the body must be a JSON object such as {example}")
    return obj


def json_body(model: type[BaseModel], example: Mapping[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` from its raw body, with a request that works."""
    media = {"schema": {"$ref": REF + model.__name__}, "example": example}
    return {"requestBody": {"required": True, "content": {"application/json": media}}}


def error_answers(model: type[BaseModel], descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: each status answered with ``model`` for the reason given."""
    return {status: {"model": model, "description": text} for status, text in descriptions.items()}
