"""Errors as RFC 9457 problem documents (``application/problem+json``).

Every error the API answers is one of these: ``type`` (``about:blank``: the status says it all),
``title`` (the status phrase), ``status``, ``detail`` (what went wrong, for people) and
``instance`` (the request path, without its query string). Details are written by us, never
copied from an exception that could carry a URL or a credential; an unexpected error is answered
with a bare 500 and logged by its class only.

An outage of a service the API needs (the database, the broker, the rate limit's Redis) is a
``503`` with ``Retry-After`` (:func:`unavailable`), never a 500: the request was fine, retrying it
later is the right move, and nothing was recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import InputError
from workers.retry import is_transient

PROBLEM_JSON = "application/problem+json"
# Seconds a client is told to wait after an outage: a restart of Redis or PostgreSQL, or a dropped
# connection, is over in seconds, and the API reconnects by itself.
RETRY_AFTER_SECONDS = 5
log = logging.getLogger(__name__)


class Problem(StarletteHTTPException):
    """An error answered as a problem document. A Starlette HTTPException, so FastAPI passes it
    through unchanged even when raised while it parses a request body."""

    def __init__(
        self,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.extensions = extensions


def unavailable(what: str) -> Problem:
    """503 for an outage of ``what``: nothing was recorded, retry after a few seconds."""
    return Problem(
        503,
        f"{what} is unavailable; nothing was recorded, retry later",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def problem_response(
    status: int,
    detail: str,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        extensions = getattr(exc, "extensions", {})
        return problem_response(
            exc.status_code, str(exc.detail), request.url.path, exc.headers, **extensions
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg")}
            for e in exc.errors()
        ]
        return problem_response(
            422, "the request's parameters are not valid", request.url.path, errors=errors
        )

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError) -> JSONResponse:
        # Our own messages: they name the bad input (an option, a map name), never a secret.
        return problem_response(400, str(exc), request.url.path)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        # Handled here, not by the catch-all below: Starlette re-raises what reaches that one,
        # and the server then logs a traceback for every request of an outage.
        if not is_transient(exc):
            return _internal_error(request, exc)
        log.warning("database unavailable (%s) on %s", type(exc).__name__, request.url.path)
        problem = unavailable("the database")
        return problem_response(503, problem.detail, request.url.path, problem.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal_error(request, exc)


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return problem_response(500, "internal error", request.url.path)
