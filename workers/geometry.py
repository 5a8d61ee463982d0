"""The map's geometry on the build queue (core/mapbuild.add_geometry: pair frames and
headings with 3D points), in short resumable steps, queued after each build or extension of a
map that has a camera.

``featureloc.map_geometry(map_name, pose=False)`` builds the geometry (the pair frames; with
``pose`` also the headings and 3D points) of up to ``GEOMETRY_BATCH``
references that lack it (with the built neighbours whose partners they change), stores it as
one part and sends itself again until none lacks it. A worker killed mid-step loses that step
only: the next delivery (acks_late) starts it again from what is stored. A map without a camera
gets none (its queries are not placed by geometry either): one message, nothing built.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from core.errors import InputError, MapError
from core.mapbuild import add_geometry
from core.mapstore import MapStore
from workers import runtime
from workers.celery_app import MAP_GEOMETRY_TASK
from workers.retry import RETRY_POLICY
from workers.settings import Settings

log = logging.getLogger(__name__)

# References per step: about a minute on one busy CPU core (bench/geometry.py measures the
# cost per reference), well inside the soft time limit.
GEOMETRY_BATCH = 100


def send_geometry(celery: Any, settings: Settings, map_name: str, pose: bool = False) -> None:
    celery.send_task(MAP_GEOMETRY_TASK, args=[map_name, pose], queue=settings.build_queue)


@shared_task(name=MAP_GEOMETRY_TASK, bind=True, **RETRY_POLICY)
def map_geometry_task(self, map_name: str, pose: bool = False) -> dict[str, Any]:
    settings = runtime.settings()
    try:
        step = add_geometry(MapStore(settings.maps_dir), map_name, GEOMETRY_BATCH, pose=pose)
    except (InputError, MapError) as exc:
        log.error("geometry of map %s failed: %s", map_name, exc)
        return {"map": map_name, "status": "failed", "error": str(exc)}
    if step is None:
        return {"map": map_name, "status": "no camera"}
    log.info(
        "geometry of map %s: %d references in %.0f s, %d to go",
        map_name, step.built, step.seconds, step.remaining,
    )  # fmt: skip
    if step.remaining:
        send_geometry(self.app, settings, map_name, pose)
        return {"map": map_name, "status": "continuing", "built": step.built}
    return {"map": map_name, "status": "done", "built": step.built}
