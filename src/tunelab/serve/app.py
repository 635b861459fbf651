"""The FastAPI application: authentication, a request-size cap and OpenAI-shaped errors around the routers.

Routes live beside this file, one module per API area; each exposes ``router(state) -> APIRouter`` and is
included here when the state it needs is present.
"""
from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import APIError, install, unauthorized

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
    extra: dict = field(default_factory=dict)


def create_app(state: ServerState):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="tunelab", version="1", description="OpenAI-compatible API over tunelab runs.")
    app.state.tunelab = state
    install(app)
    api_key = state.api_key if state.api_key is not None else os.environ.get(API_KEY_ENV) or None

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if api_key is not None:
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return JSONResponse(unauthorized().body(), status_code=401)
        length = request.headers.get("content-length")
        upload = request.headers.get("content-type", "").startswith("multipart/")
        cap = state.max_upload_bytes if upload else state.max_body_bytes
        if length is not None:
            if not length.isdigit():
                return JSONResponse(APIError(400, "Content-Length is not a number").body(), status_code=400)
            if int(length) > cap:
                return JSONResponse(APIError(413, f"Request body is larger than the limit of {cap} bytes",
                                             code="request_too_large").body(), status_code=413)
        return await call_next(request)

    # Routers: each area adds one line here.
    if state.jobs is not None:
        from . import routes_files, routes_jobs

        app.include_router(routes_files.router(state))
        app.include_router(routes_jobs.router(state))
    return app
