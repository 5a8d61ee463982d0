"""The Celery application: JSON only, late acks, one message at a time per process.

Configuration: a task is acknowledged after it finishes (a killed worker's job
is redelivered), a lost worker's task is rejected back to the queue, prefetch is 1 so a slow
query never holds others hostage, and time limits stay below the broker's visibility timeout.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from celery import Celery
from celery.utils.log import get_logger
from kombu import Queue

from workers.settings import Settings, get_settings

LOCALISE_TASK = "featureloc.localise"
BUILD_CHUNK_TASK = "featureloc.build_chunk"  # workers/build.py
FINALISE_BUILD_TASK = "featureloc.finalise_build"
FIT_MAP_TASK = "featureloc.fit_map"  # workers/fit.py
MAP_GEOMETRY_TASK = "featureloc.map_geometry"  # workers/geometry.py

# The workers package logs through Celery's handlers and level (``--loglevel``): Celery leaves
# the root logger alone (worker_hijack_root_logger is off), so without this parent the
# package's INFO lines would go nowhere in a worker's log.
get_logger("workers")


def broker_options(settings: Settings) -> tuple[str, dict]:
    url = settings.broker_url.get_secret_value()
    if url.startswith("filesystem://"):
        # The embedded broker: a directory shared by the client and worker processes, so the
        # demo runs with no server installed. Not for production (no remote control, polling).
        folder = Path(settings.data_dir, "broker").resolve()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return url, {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),  # kombu's default is ./control
        }
    # Redis redelivers unacknowledged messages after the visibility timeout: keep it above the
    # hard time limit so a long-running task is not delivered twice.
    return url, {"visibility_timeout": settings.task_time_limit * 2 + 60}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    url, transport_options = broker_options(settings)
    app = Celery(
        "featureloc",
        broker=url,
        include=[
            "workers.tasks",
            "workers.recovery",
            "workers.build",
            "workers.fit",
            "workers.geometry",
        ],  # fmt: skip
    )
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,  # results live in the database, not in Redis
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_default_queue=settings.localise_queue,
        task_queues=[Queue(settings.localise_queue), Queue(settings.build_queue)],
        task_routes={
            LOCALISE_TASK: {"queue": settings.localise_queue},
            BUILD_CHUNK_TASK: {"queue": settings.build_queue},
            FINALISE_BUILD_TASK: {"queue": settings.build_queue},
            FIT_MAP_TASK: {"queue": settings.build_queue},
            MAP_GEOMETRY_TASK: {"queue": settings.build_queue},
        },
        worker_hijack_root_logger=False,
        # Recycle a process now and then so a slow leak cannot grow without bound.
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
    )
    if url.startswith("filesystem://"):
        app.conf.worker_enable_remote_control = False
    return app


@cache
def _default_app() -> Celery:
    return make_celery()


def __getattr__(name: str) -> Any:
    # ``celery -A workers.celery_app`` (Flower, docker-compose) looks up ``app``: built on that
    # first look-up from the global settings, never on import. The tasks are shared tasks, so
    # every app made here (the worker's, each client's) carries them.
    if name == "app":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
