"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

Routes raise :class:`APIError`; ``install`` turns it, FastAPI's request-validation errors, malformed
JSON, and tunelab's own one-line errors into that shape, so no client ever sees a traceback.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class APIError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def not_found(what: str, name: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, f"The {what} '{name}' does not exist", param=param, code=code or f"{what.replace(' ', '_')}_not_found")


def unauthorized() -> APIError:
    return APIError(401, "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'",
                    type="invalid_request_error", code="invalid_api_key")


_TYPE_TAGS = re.compile(r"^(str|int|float|bool|none|constrained-\w+|[A-Z]\w*)$|[\[(]")


def _union_member(part) -> bool:
    """pydantic puts the union member tried into an error's loc (``stop.list[str]``, ``content.str``);
    OpenAI's field names never look like type names, so such parts are dropped."""
    return isinstance(part, str) and bool(_TYPE_TAGS.search(part))


def _param(loc) -> str | None:
    """``("body", "messages", 0, "content")`` -> ``messages[0].content`` (OpenAI names the field this way)."""
    parts = [p for p in loc if p not in ("body", "query", "path") and not _union_member(p)]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def install(app) -> None:
    """Register the handlers that give every error OpenAI's shape."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from ..core.errors import TunelabError

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "invalid"}
        if first.get("type") == "json_invalid":
            return JSONResponse(APIError(400, "The request body is not valid JSON", code="invalid_json").body(), 400)
        param = _param(first.get("loc", ()))
        kind = first.get("type", "")
        if kind == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}"
        elif kind == "missing":
            message = f"Missing required parameter: '{param}'"
        else:
            message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}" if param else first.get("msg", "invalid")
        return JSONResponse(APIError(400, message, param=param, code=kind or None).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, str(exc.detail), type=kind).body(), status_code=exc.status_code)

    @app.exception_handler(TunelabError)
    async def _tunelab(request, exc: TunelabError):
        return JSONResponse(APIError(400, str(exc)).body(), status_code=400)
