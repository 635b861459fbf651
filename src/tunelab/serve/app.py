"""The FastAPI application: authentication, a request-size cap and OpenAI-shaped errors around the routers.

Routes live beside this file, one module per API area; each exposes ``router(state) -> APIRouter`` and is
included here when the state it needs is present.
"""
from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import APIError, install, unauthorized

HEALTH_PATH = "/health"  # GET: liveness/readiness for probes, answered without the API key (routes_admin)

MAX_BODY_BYTES = 8 * 1024 * 1024  # JSON requests; file uploads have their own, larger cap
API_KEY_ENV = "TUNELAB_API_KEY"


@dataclass
class ServerState:
    """What the routes share: the served models, the batching engine, the jobs service and settings."""

    registry: Any = None  # serve.registry.Registry
    engine: Any = None  # serve.engine.Engine
    jobs: Any = None  # serve.jobs.JobService
    api_key: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_upload_bytes: int = 512 * 1024 * 1024
    max_context: int | None = None  # cap every model's context (prompt + max_tokens) below its own; None: the model's
    max_n: int = 16  # largest `n` (choices per request) accepted
    extra: dict = field(default_factory=dict)

    def context_length(self, served) -> int:
        return min(served.context_length, self.max_context) if self.max_context else served.context_length


def body_too_large(cap: int) -> APIError:
    return APIError(413, f"Request body is larger than the limit of {cap} bytes", code="request_too_large")


class _Guard:
    """Pure ASGI middleware (streaming and disconnects pass through untouched): the Bearer key on every
    route, then the body cap -- by Content-Length up front, and by counting as it is read for bodies sent
    without one (chunked), so no body past the cap is ever held in memory."""

    def __init__(self, app, state: ServerState, api_key: str | None):
        self.app, self.state, self.api_key = app, state, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key is not None and scope.get("path") != HEALTH_PATH:  # probes carry no key
            header = headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                return await _respond(send, unauthorized())
        upload = headers.get("content-type", "").startswith("multipart/")
        cap = self.state.max_upload_bytes if upload else self.state.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await _respond(send, APIError(400, "Content-Length is not a number"))
            if int(length) > cap:
                return await _respond(send, body_too_large(cap))
        seen = 0

        async def capped_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge(cap)
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except BodyTooLarge as exc:  # read outside FastAPI's body parsing (a route reading the stream itself)
            if not started:
                await _respond(send, body_too_large(exc.cap))


def _body_limit_exception():
    from starlette.exceptions import HTTPException

    class _BodyTooLarge(HTTPException):
        """Raised from ``receive``; FastAPI re-raises HTTPExceptions from body parsing, so it reaches
        the OpenAI-shaped handler as a 413."""

        def __init__(self, cap: int):
            super().__init__(status_code=413, detail=body_too_large(cap).message)
            self.cap = cap

    return _BodyTooLarge


try:  # starlette is installed with the serve extra; importing this module without it must not fail
    BodyTooLarge = _body_limit_exception()
except ImportError:  # pragma: no cover
    BodyTooLarge = None


async def _respond(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _install_handlers(app) -> None:
    """Serve's own errors: an unknown model is OpenAI's 404 model_not_found; an over-long body 413."""
    from fastapi.responses import JSONResponse

    from .registry import UnknownModel

    @app.exception_handler(UnknownModel)
    async def _unknown_model(request, exc: UnknownModel):
        error = APIError(404, str(exc), param="model", code="model_not_found")
        return JSONResponse(error.body(), status_code=404)

    if BodyTooLarge is not None:
        @app.exception_handler(BodyTooLarge)
        async def _too_large(request, exc):
            return JSONResponse(body_too_large(exc.cap).body(), status_code=413)


def create_app(state: ServerState):
    from fastapi import FastAPI

    app = FastAPI(title="tunelab", version="1", description="OpenAI-compatible API over tunelab runs.")
    app.state.tunelab = state
    install(app)
    _install_handlers(app)
    api_key = state.api_key if state.api_key is not None else os.environ.get(API_KEY_ENV) or None
    app.add_middleware(_Guard, state=state, api_key=api_key)

    # Routers: each area adds one line here.
    if state.registry is not None:
        from . import routes_admin, routes_openai, routes_tasks

        app.include_router(routes_openai.router(state))
        app.include_router(routes_tasks.router(state))
        app.include_router(routes_admin.router(state))
    if state.jobs is not None:
        from . import routes_files, routes_jobs

        app.include_router(routes_files.router(state))
        app.include_router(routes_jobs.router(state))
    return app
