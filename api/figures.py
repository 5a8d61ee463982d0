"""``/v1/jobs/{id}/matches.png`` and ``/v1/jobs/{id}/plot.svg``: a finished job, drawn.

``matches.png`` is drawn from what the job kept when it ended (``workers/figures.py``, as
``featureloc draw`` does): no model and no map is loaded in this process, and every figure has
the same capped size whatever the upload's (core/draw.py), so one costs a fraction of a second.
The reference photos come from the folder the map records (``featureloc map images``); without
it the figure shows the query alone, captioned so.
"""

from __future__ import annotations

from typing import Annotated, Any

import cv2
from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from api.auth import CallerKey
from api.jobs import visible_job
from api.plot import job_plot_svg
from api.problems import Problem
from api.services import Services, Svc
from core.errors import InputError
from core.photoset import MAX_PHOTOS
from db import queries
from workers.blobstore import BlobNotFound
from workers.client import JobResult
from workers.figures import FIGURE_REFERENCES, NoSuchPhoto, job_figure

router = APIRouter(prefix="/v1", tags=["figures"])

# A finished job's figures do not change: let the browser keep them for a while.
CACHE = {"Cache-Control": "private, max-age=600"}
PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "The figure."}
}
SVG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/svg+xml": {}}, "description": "The plot."}
}


@router.get(
    "/jobs/{job_id}/matches.png",
    response_class=Response,
    responses={**PNG, 404: {}, 409: {}, 410: {}},
    summary="A query photo beside the references the job counted, their verified inliers drawn",
)
async def matches_png(
    job_id: str,
    key: CallerKey,
    svc: Svc,
    top: Annotated[
        int,
        Query(
            ge=1,
            le=FIGURE_REFERENCES,
            description="References shown, those that decided the answer first.",
        ),
    ] = 3,
    photo: Annotated[
        int,
        Query(ge=0, lt=MAX_PHOTOS, description="Which photo of a photo set (0-based)."),
    ] = 0,
) -> Response:
    result = _finished(await visible_job(svc, key, job_id))
    png = await run_in_threadpool(_draw_png, svc, result, top, photo)
    return Response(png, media_type="image/png", headers=CACHE)


def _draw_png(svc: Services, result: JobResult, top: int, photo: int) -> bytes:
    with svc.figure_lock:
        try:
            images_dir = svc.maps.images_dir(result.map_name)
            figure = job_figure(svc.client, result.id, images_dir, top, photo)
        except BlobNotFound:
            raise Problem(410, "the query photo of this job is no longer stored") from None
        except NoSuchPhoto as exc:
            raise Problem(404, str(exc)) from None
        except InputError as exc:
            raise Problem(409, f"cannot draw this job: {exc}") from None
    ok, encoded = cv2.imencode(".png", figure.image)
    if not ok:
        raise Problem(500, "could not encode the figure")
    return encoded.tobytes()


@router.get(
    "/jobs/{job_id}/plot.svg",
    response_class=Response,
    responses={**SVG, 404: {}, 409: {}},
    summary="The map's reference positions, the candidate places by evidence, the estimate",
)
async def plot_svg(job_id: str, key: CallerKey, svc: Svc) -> Response:
    result = _finished(await visible_job(svc, key, job_id))

    def references() -> list[tuple[float, float]]:
        with svc.client.db.session() as s:
            return [(r.x, r.y) for r in queries.get_references(s, result.map_name)]

    estimate = (result.x, result.y) if result.x is not None and result.y is not None else None
    svg = job_plot_svg(
        await run_in_threadpool(references),
        result.candidates,
        estimate,
        result.confidence,
        result.localised,
        result.heading,
        [(p.x, p.y, p.heading) for p in result.set_photos if p.x is not None and p.y is not None],
    )
    return Response(svg, media_type="image/svg+xml", headers=CACHE)


def _finished(result: JobResult) -> JobResult:
    if result.status != "done":
        raise Problem(409, f"the job is {result.status}: there is nothing to draw")
    return result
