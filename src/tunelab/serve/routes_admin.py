"""Admin routes: serve another run without a restart, or stop serving one.

``POST /v1/admin/models {"path": RUN_DIR, "name"?}`` loads a finished run directory that is on the
server's own file system (a LoRA/IA³/adapter run on a base already loaded attaches to it);
``DELETE /v1/admin/models/{id}`` stops serving it (requests in flight for it end with an error).
``GET /health`` (no API key: container and Kubernetes probes call it) is 200 while the models are loaded
and the generation engine runs, else 503.
"""
from __future__ import annotations

from pathlib import Path

from .app import HEALTH_PATH  # outside /v1: not part of OpenAI's API, and exempt from the API key
from .errors import APIError
from .routes_openai import model_card
from .schemas import AddModelRequest, DeletedModel, Health, ModelCard


def router(state):
    from fastapi import APIRouter
    from starlette.concurrency import run_in_threadpool

    api = APIRouter(tags=["admin"])

    @api.get(HEALTH_PATH, response_model=Health, responses={503: {"model": Health}})
    def health():
        from fastapi.responses import JSONResponse

        running = state.engine is None or state.engine.running  # the engine is started before the port answers
        body = Health(status="ok" if running else "engine stopped", models=len(state.registry.models()))
        return body if running else JSONResponse(body.model_dump(), status_code=503)

    @api.post("/v1/admin/models", response_model=ModelCard, status_code=201)
    async def add_model(body: AddModelRequest) -> ModelCard:
        from ..runs.open import is_run_dir

        path = Path(body.path).expanduser()
        if not _is_run_dir(path, is_run_dir):
            raise APIError(400, f"path {body.path} is not a run directory on the server (no config.yaml)",
                           param="path", code="not_a_run_directory")
        served = await run_in_threadpool(state.registry.add, path, body.name)
        return model_card(served)

    @api.delete("/v1/admin/models/{model_id:path}", response_model=DeletedModel)
    def delete_model(model_id: str) -> DeletedModel:
        state.registry.remove(model_id)  # UnknownModel -> 404
        return DeletedModel(id=model_id)

    return api


def _is_run_dir(path: Path, is_run_dir) -> bool:
    try:
        return is_run_dir(path)
    except (OSError, ValueError):  # a name too long, a NUL byte: not a run directory either
        return False
