"""The request body size limit, enforced while the body streams in.

A pure ASGI middleware: a declared ``Content-Length`` over the limit is refused before a byte of
the body is read, and a body without one (chunked) is counted as it arrives and refused the moment
it passes the limit. Either way the photo is never held whole when it is too large. The rest of
an oversized body is read and dropped (up to ``DISCARD_LIMIT``) so that an honest client, still
sending, reads the 413 instead of a reset connection.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import Problem, problem_response

# Multipart framing and the options field on top of the photo itself.
FORM_OVERHEAD = 64 * 1024
# Beyond this much unread excess the connection is simply closed.
DISCARD_LIMIT = 64 * 1024 * 1024


class BodyTooLarge(Problem):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await _discard(receive, DISCARD_LIMIT)
            error = BodyTooLarge(self.max_body)
            response = problem_response(413, error.detail, scope.get("path"))
            await response(scope, receive, send)
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    if message.get("more_body", False):
                        await _discard(receive, DISCARD_LIMIT)
                    raise BodyTooLarge(self.max_body)
            return message

        await self.app(scope, capped_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _discard(receive: Receive, limit: int) -> None:
    dropped = 0
    while dropped <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
