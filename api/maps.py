"""``/v1/maps``: the maps a key may use, and one map's references, camera, builds and report."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.auth import CallerKey, require_map
from api.problems import Problem
from api.schemas import (
    BuildOut,
    FineSetOut,
    FitOut,
    GeometryOut,
    MapDetail,
    MapSummary,
    ReferenceOut,
)
from api.services import Services, Svc
from core.errors import InputError, MapError
from core.mapreport import MapReport, map_report
from core.mapstore import FINE_EXTRACTOR_KEY, IMAGES_DIR_KEY, MapStore, validate_map_name
from db import build_queries, queries
from db.models import Map

router = APIRouter(prefix="/v1", tags=["maps"])

BUILDS_SHOWN = 20


@router.get("/maps", response_model=list[MapSummary], summary="Maps this key may use")
async def list_maps(key: CallerKey, svc: Svc) -> list[MapSummary]:
    def load() -> list[Map]:
        with svc.client.db.session() as s:
            return [m for m in queries.list_maps(s) if key.allows(m.name)]

    return [_summary(m) for m in await run_in_threadpool(load)]


@router.get(
    "/maps/{map_name}",
    response_model=MapDetail,
    summary="A map: references, extractor, camera, builds",
    responses={400: {}, 403: {}, 404: {}},
)
async def get_map(map_name: str, key: CallerKey, svc: Svc) -> MapDetail:
    validate_map_name(map_name)
    require_map(key, map_name)
    return await run_in_threadpool(_detail, svc, map_name)


def _detail(svc: Services, map_name: str) -> MapDetail:
    with svc.client.db.session() as s:
        row = queries.get_map(s, map_name)
        if row is None:
            raise Problem(404, f"unknown map {map_name!r}")
        refs = [
            ReferenceOut(id=r.ref_id, x=r.x, y=r.y) for r in queries.get_references(s, map_name)
        ]
        builds = [
            BuildOut(
                id=b.id,
                status=b.status,
                total=b.total,
                processed=b.processed,
                added=b.added,
                skipped=b.skipped,
                failed=len(b.failed or {}),
                error=b.error,
                created_at=b.created_at,
                finished_at=b.finished_at,
            )
            for b in build_queries.list_builds(s, map_name, BUILDS_SHOWN)
        ]
    try:
        manifest = svc.maps.manifest(map_name)
    except MapError:  # registered, but its files are not on this host's maps_dir
        manifest = {}
    photos: str | None = manifest.get(IMAGES_DIR_KEY)
    fine = manifest.get(FINE_EXTRACTOR_KEY)
    return MapDetail(
        **_summary(row).model_dump(),
        camera=manifest.get("camera"),
        geometry=GeometryOut(**svc.maps.geometry_counts(map_name))
        if manifest.get("camera")
        else None,
        fine_set=None
        if fine is None
        else FineSetOut(extractor=fine, references=svc.maps.fine_count(map_name)),
        fit=_fit(svc.maps, map_name) if manifest else None,
        reference_photos=photos is not None and Path(photos).is_dir(),
        references=refs,
        builds=builds,
    )


@router.get(
    "/maps/{map_name}/report",
    response_model=MapReport,
    summary="Where the map localises and where it will fail: every position's held-out error, "
    "coverage holes, where to add photos",
    responses={400: {}, 403: {}, 404: {}, 409: {}},
)
async def get_report(
    map_name: str, key: CallerKey, svc: Svc, profile: Literal["fast", "accurate"] = "fast"
) -> MapReport:
    validate_map_name(map_name)
    require_map(key, map_name)
    return await run_in_threadpool(load_report, svc.maps, map_name, profile)


def load_report(maps: MapStore, map_name: str, profile: str) -> MapReport:
    """The map's report (core/mapreport.py); 404 for a map not on this host, 409 for one not
    measured (or whose fit lacks the profile)."""
    if not maps.exists(map_name):
        raise Problem(404, f"unknown map {map_name!r}")
    try:
        return map_report(maps, map_name, profile)
    except MapError as exc:
        raise Problem(404, str(exc)) from None
    except InputError as exc:
        raise Problem(409, str(exc)) from None


def _fit(maps: MapStore, map_name: str) -> FitOut | None:
    record = maps.training(map_name)
    if not record:
        return None
    held = record["heldout"]
    return FitOut(
        fitted_at=record["fitted_at"],
        heldout_queries=record["heldout_queries"],
        heldout_mae=held["mae"],
        heldout_coarse_mae=held["coarse_mae"],
        escalate_below=record.get("escalate_below") if held.get("fine_run") else None,
        fine_missing=record.get("fine_missing")
        or (None if held.get("fine_run") else "no held-out position ran the fine stage"),
    )


def _summary(m: Map) -> MapSummary:
    return MapSummary(
        name=m.name,
        num_references=m.num_references,
        extractor=m.extractor,
        retriever=m.retriever,
        created_at=m.created_at,
        updated_at=m.updated_at,
    )
