"""`featureloc map geometry`: the map's geometry (core/pairframes.py, core/geometry.py), built
here or queued.

A queued build or extension queues it by itself (``FEATURELOC_GEOMETRY_AFTER_BUILD``), but only
a map with a camera gets it: run this after `featureloc map camera` on a map built without one.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, fail, get_settings, model_device
from core.errors import InputError, MapError

BATCH = 100  # references per stored step, as on the workers (workers/geometry.py)


def map_geometry(
    name: str,
    via_queue: Annotated[
        bool, typer.Option("--via-queue", help="Queue it on the build queue's workers.")
    ] = False,
    pose: Annotated[
        bool,
        typer.Option("--pose", help="Also headings and 3D points, for placement_conf.method pose."),
    ] = False,
) -> None:
    """Build each reference's pair frames (what placement reads instead of solving pairs per
    query) and, with --pose, its heading and 3D points (placement by pose). Resumable: what
    is stored is kept; after an extension, only the new references and their partners are
    built."""
    from cli.map_build import progress_bar
    from core.mapbuild import add_geometry
    from core.mapstore import MapStore

    settings = get_settings()
    store = MapStore(settings.maps_dir)
    try:
        if store.open(name).camera is None:
            fail(f"map {name!r} has no camera: set it first (featureloc map camera)")
        if via_queue:
            from workers.celery_app import make_celery
            from workers.geometry import send_geometry

            send_geometry(make_celery(settings), settings, name, pose)
            console.print(f"map {name!r}: geometry queued on {settings.build_queue!r}")
            return
        model_device()  # this process matches and solves: its threads as the workers'
        with progress_bar() as bar:
            task = bar.add_task("geometry", total=None)
            built = 0
            while (step := add_geometry(store, name, BATCH, pose=pose)) is not None:
                built += step.built
                bar.update(task, completed=built, total=built + step.remaining)
                if not step.remaining:
                    break
    except (InputError, MapError) as exc:
        fail(str(exc))
    console.print(f"map {name!r}: geometry built for {built} references", highlight=False)
