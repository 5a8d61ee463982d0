"""The one retry policy of the tasks: transient faults are retried by Celery with exponential
backoff (``autoretry_for`` / ``retry_backoff``: 2, 4, 8 ... seconds, at most 60), six times.

A task raises :class:`TransientFault` for a fault worth retrying — the database or the network
was away for a while — and anything else for a fault that is not; on its last try it records the
failure itself (:func:`last_try`) before the fault propagates.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

# SQLAlchemy wraps psycopg's connection loss and SQLite's "database is locked" as
# OperationalError; a connection that died mid-statement can also surface as InterfaceError or
# any DBAPIError flagged invalidated.
TRANSIENT = (OperationalError, InterfaceError, ConnectionError, TimeoutError)
MAX_RETRIES = 6


class TransientFault(Exception):
    """A fault worth retrying; its cause is the original exception."""


# Keyword arguments of ``@shared_task`` for every featureloc task.
RETRY_POLICY: dict[str, Any] = {
    "autoretry_for": (TransientFault,),
    "max_retries": MAX_RETRIES,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": False,  # one worker per job: no thundering herd to spread
}


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def last_try(task: Any) -> bool:
    """True when a failure now is final: the retries are spent."""
    return task.request.retries >= task.max_retries
