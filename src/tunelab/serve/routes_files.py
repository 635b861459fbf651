"""``/v1/files``: upload (multipart, purpose "fine-tune"), list, retrieve, delete, content."""
# No `from __future__ import annotations`: FastAPI reads these signatures, whose types are imported in router().

from ..core.errors import TunelabError
from .errors import APIError, not_found


def router(state):
    from fastapi import APIRouter, File, Form, UploadFile
    from fastapi.responses import Response

    files = state.jobs.files
    api = APIRouter()

    @api.post("/v1/files")
    async def create_file(file: UploadFile = File(...), purpose: str = Form(...)):
        data = await file.read(state.max_upload_bytes + 1)
        if len(data) > state.max_upload_bytes:
            raise APIError(413, f"file is larger than the limit of {state.max_upload_bytes} bytes",
                           param="file", code="file_too_large")
        try:
            return files.create(data, file.filename or "upload.jsonl", purpose)
        except TunelabError as exc:
            param = "purpose" if str(exc).startswith("purpose") else "file"
            raise APIError(400, f"{file.filename}: {exc}" if param == "file" else str(exc), param=param,
                           code="invalid_file") from None

    @api.get("/v1/files")
    def list_files(purpose: str | None = None):
        return {"object": "list", "data": files.list(purpose), "has_more": False}

    def _get(file_id: str) -> dict:
        record = files.get(file_id)
        if record is None:
            raise not_found("file", file_id, param="file_id")
        return record

    @api.get("/v1/files/{file_id}")
    def retrieve_file(file_id: str):
        return _get(file_id)

    @api.get("/v1/files/{file_id}/content")
    def file_content(file_id: str):
        _get(file_id)
        return Response(files.content(file_id), media_type="application/jsonl")

    @api.delete("/v1/files/{file_id}")
    def delete_file(file_id: str):
        _get(file_id)
        files.delete(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    return api
