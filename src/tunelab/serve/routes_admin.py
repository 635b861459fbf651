"""Admin routes: serve another run without a restart, or stop serving one.

``POST /v1/admin/models {"path": RUN_DIR, "name"?}`` loads a finished run directory that is on the
server's own file system (a LoRA/IA³/adapter run on a base already loaded attaches to it);
``DELETE /v1/admin/models/{id}`` stops serving it (requests in flight for it end with an error).
"""
from __future__ import annotations

from pathlib import Path

from .errors import APIError
from .routes_openai import model_card
from .schemas import AddModelRequest, DeletedModel, ModelCard


def router(state):
    from fastapi import APIRouter
    from starlette.concurrency import run_in_threadpool

    api = APIRouter(tags=["admin"])

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
