"""JSON error responses: engine errors map to 404/409/422, bad requests to 400/422, never a 500."""

from __future__ import annotations

import inspect
import sqlite3
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from tortoise.exceptions import BaseORMException

from engine import logs
from engine.errors import Conflict, Forbidden, InvalidInput, NotFound, OperationError
from engine.outputs import clean_text
from models.errors import DatabaseUnavailable

log = logs.logger(__name__)

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_PROBE: dict[str, Any] = {"type": "http", "headers": [], "query_string": b""}


def error_response(
    status: int,
    code: str,
    message: str,
    problems: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    # The message may quote the request (a name with a lone surrogate): it must still encode.
    clean = {clean_text(k): clean_text(v) for k, v in (problems or {}).items()}
    body = {"error": code, "message": clean_text(message), "problems": clean}
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def on_operation_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, Conflict):
        return error_response(409, "conflict", str(exc))
    if isinstance(exc, Forbidden):
        return error_response(403, "forbidden", str(exc))
    if isinstance(exc, InvalidInput):
        return error_response(422, "invalid", str(exc), exc.problems)
    return error_response(400, "bad_request", str(exc))


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "bad_request", "the request body is not valid JSON")
    problems = {_field(e.get("loc", ())): str(e.get("msg", "invalid")) for e in errors}
    message = "; ".join(f"{k}: {v}" for k, v in problems.items())
    return error_response(422, "invalid", f"invalid request: {message}", problems)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # The exception's headers belong to the answer: a 405 must say which methods are allowed (`Allow`).
    if not request.url.path.startswith("/api"):
        # Pages keep NiceGUI's own handling; only the API answers in JSON.
        body = {"error": "http", "message": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only those of the first route it tried)."""
    allowed = []
    for method in HTTP_METHODS:
        probe = {
            **_PROBE,
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "method": method,
        }
        if any(route.matches(probe)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _page_error(handler: Any, request: Request, exc: Exception) -> Response:
    answer = handler(request, exc)
    return await answer if inspect.isawaitable(answer) else answer  # type: ignore[no-any-return]


STORAGE_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    BaseORMException,
    DatabaseUnavailable,
)


def _storage_reason(exc: Exception) -> str:
    return clean_text(str(exc) or type(exc).__name__)


def install(app: FastAPI) -> None:
    app.add_exception_handler(OperationError, on_operation_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    # Pages keep the handler NiceGUI installed for them; the API answers in JSON, whatever failed.
    pages_handler = app.exception_handlers.get(Exception)

    async def on_storage_error(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith("/api") and pages_handler is not None:
            return await _page_error(pages_handler, request, exc)
        log.error("the database refused %s %s: %s", request.method, request.url.path, exc)
        message = f"the database refused the operation: {_storage_reason(exc)}"
        return error_response(503, "storage", message, headers={"Retry-After": "5"})

    async def on_unexpected_error(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith("/api") and pages_handler is not None:
            return await _page_error(pages_handler, request, exc)
        # Logged with its traceback by the server (Starlette raises it again after this answer).
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); the server log has the details")

    for error_type in STORAGE_ERRORS:
        app.add_exception_handler(error_type, on_storage_error)
    app.add_exception_handler(Exception, on_unexpected_error)
