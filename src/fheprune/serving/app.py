"""The HTTP API (FastAPI on uvicorn) over :class:`InferenceService`.

=======  ========================  ==========================================================
method   path                      what
=======  ========================  ==========================================================
GET      /v1/health                liveness: ``{"status": "ok"}``
GET      /v1/metrics               requests by route and status, latency percentiles, queue,
                                   sessions, resident memory (JSON)
GET      /v1/program               the program's fingerprint, parameters and the limits
POST     /v1/sessions              body: an evaluation-key bundle; returns ``{"session"}``
DELETE   /v1/sessions/current      drops the caller's session (its keys) at once
POST     /v1/infer                 body: a ciphertext batch (protocol.py); returns the outputs
=======  ========================  ==========================================================

The session token travels in ``Authorization: Bearer <token>`` (never in a URL, so it stays out
of access logs and proxies' caches). Bodies are read as streams with a size limit; batches are
parsed frame by frame as they arrive. Every refusal is a 4xx with a JSON body
``{"error": <type>, "detail": <what was wrong>}``.

Admission: 2 x workers requests at a time read their bodies and run; the next ones wait with
their bodies unread (TCP flow control holds their senders back, so memory stays bounded), up
to ``max_queue`` of them; beyond that a request gets 503 with ``Retry-After``.

Decrypted results never come back through this API: the server only ever sees ciphertexts
(docs/serving.md explains why that matters for CKKS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fheprune import _core
from fheprune.errors import FhepruneError, InputError

from .protocol import BatchFormatError, iter_batch
from .service import InferenceService, OverloadedError, RequestTooLargeError
from .sessions import Session, SessionLimitError, UnknownSessionError

__all__ = ["create_app"]

log = logging.getLogger(__name__)

OCTETS = "application/octet-stream"


class AuthError(InputError):
    """No usable session token in the request (HTTP 401)."""


class RequestTimeoutError(InputError):
    """A body that did not arrive within the server's time limit (HTTP 408)."""


def _status(error: Exception) -> int:
    """The HTTP status of a refusal."""
    table: list[tuple[type[Exception], int]] = [
        (AuthError, 401),
        (RequestTimeoutError, 408),
        (UnknownSessionError, 404),
        (RequestTooLargeError, 413),
        (SessionLimitError, 429),
        (OverloadedError, 503),
        (BatchFormatError, 400),
        (_core.SerializationError, 400),
        (_core.FheError, 422),  # well-formed but wrong: other parameters, key, level, scale
        (FhepruneError, 400),
    ]
    for kind, status in table:
        if isinstance(error, kind):
            return status
    return 500


def _error_response(error: Exception) -> JSONResponse:
    status = _status(error)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(
        {"error": type(error).__name__, "detail": str(error)}, status_code=status, headers=headers
    )


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise InputError(f"Content-Length must be a whole number, got {declared!r}")
    return int(declared)


async def _read_body(
    request: Request, limit: int, feed: Callable[[bytes], None], timeout_s: float
) -> int:
    """Streams the body into ``feed``, refusing it as soon as it passes ``limit`` bytes, and
    giving up (408) if it takes longer than ``timeout_s``: a sender dripping bytes must not
    hold an admission slot for ever."""
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise RequestTooLargeError(
            f"the body is {declared} bytes; this server takes at most {limit}"
        )
    total = 0

    async def read() -> None:
        nonlocal total
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise RequestTooLargeError(f"the body passes {limit} bytes, this server's limit")
            if chunk:
                feed(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        raise RequestTimeoutError(
            f"the body did not arrive within {timeout_s:g} s ({total} bytes came)"
        ) from None
    return total


class _CountRequests:
    """ASGI middleware: counts each request by route and status, with its time to the last
    byte of the answer (a plain ASGI wrapper: it leaves request and response streams alone)."""

    def __init__(self, app: ASGIApp, metrics: Any) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            # The router records the matched route in the scope it was given.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.count(route, status, time.perf_counter() - start)


def create_app(service: InferenceService) -> FastAPI:
    """The web app over ``service``; its lifespan expires idle sessions and, on shutdown,
    lets admitted requests finish before the sessions are dropped."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def sweep() -> None:
            period = min(30.0, max(0.05, service.config.idle_timeout_s / 4))
            while True:
                await asyncio.sleep(period)
                await asyncio.to_thread(service.expire)

        sweeper = asyncio.create_task(sweep())
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.to_thread(service.close)

    app = FastAPI(
        title="fheprune inference server",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    app.add_middleware(_CountRequests, metrics=service.metrics)

    @app.exception_handler(FhepruneError)
    async def refused(_request: Request, error: FhepruneError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(ClientDisconnect)
    async def gone(_request: Request, _error: ClientDisconnect) -> Response:
        # The client went away mid-upload: nothing was stored, and nobody is left to answer.
        return Response(status_code=499)

    slots = asyncio.Semaphore(service.config.admitted_limit)

    @contextlib.asynccontextmanager
    async def admitted() -> AsyncIterator[None]:
        """Holds one of the admission slots; waits for one if the line is not too long."""
        metrics = service.metrics
        if slots.locked() and metrics.waiting >= service.config.max_queue:
            raise OverloadedError(
                f"the server is busy ({metrics.admitted} requests admitted, {metrics.waiting} "
                "waiting); retry shortly"
            )
        metrics.adjust(waiting=+1)
        try:
            await slots.acquire()
        finally:
            metrics.adjust(waiting=-1)
        metrics.adjust(admitted=+1)
        try:
            yield
        finally:
            metrics.adjust(admitted=-1)
            slots.release()

    def session_of(request: Request) -> Session:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(
                "send the session token as 'Authorization: Bearer <token>' (POST /v1/sessions "
                "returns one)"
            )
        return service.sessions.get(token.strip())

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "program_fingerprint": service.bundle.program_fingerprint}

    @app.get("/v1/metrics")
    async def metrics() -> dict[str, Any]:
        return service.metrics_snapshot()

    @app.get("/v1/program")
    async def program() -> dict[str, Any]:
        return service.program_info()

    @app.post("/v1/sessions", status_code=201)
    async def register(request: Request) -> dict[str, Any]:
        # A full server answers at once, before reading megabytes of keys; the body may be no
        # larger than the key memory left.
        service.sessions.reserve(_declared_length(request) or 0)
        async with admitted():
            limit = min(service.sessions.room(), service.config.max_request_bytes)
            body = bytearray()
            await _read_body(request, limit, body.extend, service.config.body_timeout_s)
            if not body:
                raise InputError(
                    "the body must be an evaluation-key bundle (Client.evaluation_keys_bytes)"
                )
            future = service.submit(lambda: service.register(bytes(body)))
            session = await asyncio.wrap_future(future)
        return {
            "session": session.token,
            "key_bytes": session.key_bytes,
            "idle_timeout_s": service.config.idle_timeout_s,
        }

    @app.delete("/v1/sessions/current", status_code=204)
    async def delete(request: Request) -> Response:
        session = session_of(request)
        await asyncio.to_thread(service.delete, session.token)
        return Response(status_code=204)

    @app.post("/v1/infer")
    async def infer(request: Request) -> StreamingResponse:
        session = session_of(request)
        # One request per session at a time: a client sending many at once waits here, not on
        # a worker (it would hold the workers other sessions need).
        async with session.turn, admitted():
            reader = service.frame_reader()
            start = time.perf_counter()
            await _read_body(
                request,
                service.config.max_request_bytes,
                reader.feed,
                service.config.body_timeout_s,
            )
            frames = reader.finish()
            service.metrics.add_stage("read", time.perf_counter() - start)
            service.sessions.touch(session)  # a long upload is use too
            future = service.submit(lambda: service.infer(session, frames))
            outputs = await asyncio.wrap_future(future)
        return StreamingResponse(iter_batch(outputs, len(outputs)), media_type=OCTETS)

    return app
