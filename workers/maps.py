"""Build a map on disk and register it in the database: shared by the CLI and the build task."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.images import ImageLimits
from core.mapbuild import BuildReport, build_map, read_positions_csv
from core.mapstore import MapStore
from core.settings import Settings
from db import queries
from db.session import Database


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
    retriever: str = "exhaustive",
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
    from workers.build import publish_if_configured

    publish_if_configured(settings, store, name)
    ref_map = store.open(name)
    pos = ref_map.positions
    refs = [(rid, float(x), float(y)) for rid, (x, y) in zip(ref_map.ids, pos, strict=True)]
    db = Database(settings.database_url.get_secret_value())
    with db.session() as s:
        queries.upsert_map(
            s,
            name,
            ref_map.extractor,
            ref_map.retriever,
            refs,
        )
    return report
