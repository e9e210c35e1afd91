"""One error shape for every non-2xx answer: ``{"error": {"code", "message", "field"}}``.

Validation errors, unknown routes (404), wrong methods (405), oversized bodies (413), malformed JSON and
the service's own refusals all use it, so a client parses one shape. ``field`` is a dotted path into the
request (``query.k``, ``body.users[3]``, ``path.user_id``) or null when no single field is at fault.
Anything unexpected becomes a 500 with code ``internal`` and the request id, never a stack trace (the
middleware does that, see ``middleware.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """What went wrong."""

    code: str = Field(examples=["invalid_parameter"], description="stable machine-readable code")
    message: str = Field(examples=["k: must be <= 200"], description="human-readable explanation")
    field: str | None = Field(default=None, examples=["query.k"], description="the request field at fault")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorBody


class ApiError(Exception):
    """An error answer raised by the service's own code (routes, dependencies)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSONResponse in the one error shape."""
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers)


def error_doc(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting the error shape for the given statuses."""
    descriptions = {
        400: "Malformed request (e.g. a body that is not JSON)",
        401: "Missing or wrong bearer token",
        403: "Endpoint disabled",
        404: "Unknown user (when configured to 404) or unknown bundle version",
        409: "Hot reload is not possible with several worker processes",
        413: "Request body too large",
        422: "A parameter or body field is out of range or malformed; `field` names it",
        503: "No bundle is loaded",
    }
    return {s: {"model": ErrorResponse, "description": descriptions.get(s, "Error")} for s in statuses}


def _loc_to_field(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = tuple(first.get("loc", ()))
    field = _loc_to_field(loc) or None
    if first.get("type") == "json_invalid":
        # A body that is not JSON at all is a malformed request, not an out-of-range field.
        ctx: Any = first.get("ctx") or {}
        detail = ctx.get("error", first.get("msg", "invalid JSON")) if isinstance(ctx, dict) else ctx
        return error_response(400, "malformed_json", f"request body is not valid JSON: {detail}", "body")
    msg = str(first.get("msg", "invalid value"))
    if field:
        msg = f"{field}: {msg}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more problem(s))"
    return error_response(422, "invalid_parameter", msg, field)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, code, message, None, dict(exc.headers or {}) or None)


async def _api_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception kind to the one error shape."""
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(ApiError, _api_handler)
