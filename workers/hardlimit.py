"""Tasks killed at the hard time limit.

Celery's soft limit raises in the task only when Python runs again, so a task inside a long
native call (OpenCV's SIFT of a large photo) can reach the hard limit, whose kill skips the
task's own handlers. Celery reports the kill in the worker's main process (``task_failure``
with ``TimeLimitExceeded``): the handlers registered here record the outcome there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure

Handler = Callable[[Celery, tuple[Any, ...], dict[str, Any]], None]


def on_hard_time_limit(task_name: str) -> Callable[[Handler], Handler]:
    """Register ``handler(app, args, kwargs)`` for the ``task_name`` tasks the hard time limit
    kills; it runs in the worker's main process with the task's arguments."""

    def register(handler: Handler) -> Handler:
        def on_failure(
            sender: Any = None,
            exception: BaseException | None = None,
            args: Any = None,
            kwargs: Any = None,
            **_: Any,
        ) -> None:
            if getattr(sender, "name", None) != task_name:
                return
            if isinstance(exception, TimeLimitExceeded):
                handler(sender.app, tuple(args or ()), dict(kwargs or {}))

        task_failure.connect(on_failure, weak=False)
        return handler

    return register
