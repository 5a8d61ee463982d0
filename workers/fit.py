"""The map's self-measurement on the build queue (core/heldout.py), in short resumable steps.

``featureloc.fit_map(map_name, queries, views)`` localises up to ``fit_step_positions`` held-out
positions (``queries`` null: every position of the map, ``views`` of each, as the map report
needs, core/mapreport.py), appends them to the map's ``heldout.jsonl`` and sends itself again
until every one is done;
the last step fits and writes ``training.json`` and, with ``map_backend=s3``, publishes the map
(workers see the new fit between jobs, workers/runtime.py). A worker killed mid-step loses at
most the position it was on: the next delivery (acks_late) or ``featureloc map fit`` goes on
from the file.
Workers find the photos in the folder the map records (``featureloc map images``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from core import defaults
from core.errors import InputError
from core.heldout import fit_map
from core.mapbuild import map_photos
from core.mapstore import MapStore
from workers import runtime
from workers.celery_app import FIT_MAP_TASK
from workers.maps import publish_if_configured
from workers.retry import RETRY_POLICY
from workers.settings import Settings

log = logging.getLogger(__name__)


def send_fit(
    celery: Any, settings: Settings, map_name: str, queries: int | None, views: int = 1
) -> None:
    celery.send_task(FIT_MAP_TASK, args=[map_name, queries, views], queue=settings.build_queue)


def send_refit(celery: Any, settings: Settings, store: MapStore, map_name: str) -> None:
    """Fit a grown map on as many positions and views as its last fit (every position for a
    map measured for its report), else on the default sample."""
    record = store.training(map_name)
    queries = record.get("queries", defaults.HELDOUT_QUERIES)
    send_fit(celery, settings, map_name, queries, record.get("views", 1))


@shared_task(name=FIT_MAP_TASK, bind=True, **RETRY_POLICY)
def fit_map_task(
    self, map_name: str, queries: int | None = defaults.HELDOUT_QUERIES, views: int = 1
) -> dict[str, Any]:
    settings = runtime.settings()
    store = MapStore(settings.maps_dir)
    try:
        folder = store.images_dir(map_name)
        if folder is None:
            raise InputError(f"map {map_name!r} records no photo folder (featureloc map images)")
        # Loaded once per process and map version, not once per step.
        loc = runtime.fit_localiser(map_name)
        photo = map_photos(loc.map.ids, folder)
        record = fit_map(
            store,
            map_name,
            photo,
            queries=queries,
            batch=settings.fit_step_positions,
            views=views,
            localiser=loc,
        )
    except InputError as exc:
        log.error("fitting map %s failed: %s", map_name, exc)
        return {"map": map_name, "status": "failed", "error": str(exc)}
    if record is None:
        send_fit(self.app, settings, map_name, queries, views)
        return {"map": map_name, "status": "continuing"}
    version = publish_if_configured(settings, store, map_name)
    return {
        "map": map_name,
        "status": "done",
        "escalate_below": record.get("escalate_below"),
        "fine_missing": record.get("fine_missing"),
        "version": version,
    }
