"""Keep credentials out of the access log.

Keys travel in headers (``api/auth.py``), never in URLs, but a client may still put one in the
query string (``?api_key=...``); uvicorn's access log writes the path with its query, so the value
is replaced before the line is written. A filter on the ``uvicorn.access`` logger, whose records
carry ``(client, method, path with query, HTTP version, status)`` as their arguments.
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "[redacted]"
# Query parameters that name a credential, whatever their case.
_SECRET_PARAM = re.compile(
    r"(?P<name>(?:^|[?&;])(?:api[_-]?key|key|token|access[_-]?token|password)=)[^&;#]*",
    re.IGNORECASE,
)


def redact_query(path: str) -> str:
    """``path`` with the values of credential parameters in its query string replaced."""
    head, sep, query = path.partition("?")
    if not sep:
        return path
    return head + sep + _SECRET_PARAM.sub(rf"\g<name>{REDACTED}", query)


class RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def install_access_log_filter() -> None:
    """Add the filter to uvicorn's access logger, once per process."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactCredentials) for f in logger.filters):
        logger.addFilter(RedactCredentials())
