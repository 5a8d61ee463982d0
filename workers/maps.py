"""Maps on disk registered in the database: the one path by which a map and its references are
recorded, shared by the CLI, the demo and the build tasks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.defaults import DEFAULT
from core.images import ImageLimits
from core.mapbuild import BuildReport, build_map, finalise_map, read_positions_csv
from core.mapstore import MapStore
from db import queries
from db.session import Database
from workers.settings import Settings


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        min_side=settings.min_image_side,
    )


def build_and_register(
    settings: Settings,
    name: str,
    images_dir: Path,
    positions_csv: Path,
    extractor: str,
    extractor_conf: dict | None = None,
    retriever: str = DEFAULT.retriever,
    retriever_conf: dict | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[str], None] | None = None,
) -> BuildReport:
    """Extract what is missing, fit retrieval, then record the map and its references."""
    entries = read_positions_csv(positions_csv, images_dir)
    if on_start:
        on_start(len(entries))
    store = MapStore(settings.maps_dir)
    report = build_map(
        store,
        name,
        entries,
        extractor_name=extractor,
        extractor_conf=extractor_conf,
        retriever_name=retriever,
        retriever_conf=retriever_conf,
        device=settings.resolved_device(),
        limits=image_limits(settings),
        on_done=on_done,
    )
    publish_if_configured(settings, store, name)
    record_map(settings, name)
    return report


def register_map(settings: Settings, name: str) -> int:
    """Fit the map's retriever over every reference it holds and record the map and its
    references (after parts were added); returns their number."""
    store = MapStore(settings.maps_dir)
    finalise_map(store, name)
    publish_if_configured(settings, store, name)
    return record_map(settings, name)


def publish_if_configured(settings: Settings, store: MapStore, name: str) -> str | None:
    """With ``map_backend=s3``, publish the finalised map as a new version (its id)."""
    if settings.map_backend != "s3":
        return None
    from workers.mapversions import make_map_versions

    return make_map_versions(settings).publish(store.path(name), name)


def record_map(settings: Settings, name: str) -> int:
    """Record map ``name`` as it is on disk and the references it does not have yet (e.g. a map
    built elsewhere and copied in); returns their number."""
    ref_map = MapStore(settings.maps_dir).open(name)
    pos = ref_map.positions
    refs = [(rid, float(x), float(y)) for rid, (x, y) in zip(ref_map.ids, pos, strict=True)]
    with Database(settings.database_url.get_secret_value()).session() as s:
        queries.upsert_map(s, name, ref_map.extractor, ref_map.retriever, refs)
    return len(refs)
