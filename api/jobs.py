"""``/v1/maps/{map}/jobs`` (submit) and ``/v1/jobs`` (read): the queue's HTTP front door.

Submission goes through ``workers.client.Client.submit``, the CLI's own path: the same job id for
the same photo, map and options, the same blob store and the same task. Before that, the API
refuses what can never succeed, so a bad upload creates no job: a map name that is not a name, a
map the key may not use or that does not exist, a body or photo over the size limit, a file that
does not decode as an image within the pixel limit (``core/images.py``), unknown options, a
matcher the map's features cannot be matched with. An outage of the queue or the database is a
``503`` with ``Retry-After`` (``api/problems.py``) that leaves nothing behind: no job, no photo.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.auth import CallerKey, require_map
from api.problems import Problem, unavailable
from api.schemas import JobOut, JobPage
from api.services import Services, Svc
from core.errors import InputError
from core.images import decode_image
from core.mapstore import validate_map_name
from core.photoset import MAX_PHOTOS
from db import queries
from db.models import ApiKey, JobStatus
from workers.client import BrokerUnavailable, JobResult, pending_result
from workers.maps import image_limits
from workers.retry import is_transient

router = APIRouter(prefix="/v1", tags=["jobs"])

POLL_SECONDS = 0.25
MAX_PAGE = 500

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["photo"],
                    "properties": {
                        "photo": {
                            "type": "string",
                            "format": "binary",
                            "description": "JPEG, PNG, WebP, BMP or TIFF",
                        },
                        "options": {
                            "type": "string",
                            "description": 'Job options as a JSON object, e.g. {"top_k": 20}',
                        },
                        "yaws": {
                            "type": "string",
                            "description": "A photo set's yaws in degrees from the first photo,"
                            " one per photo, as a JSON list, e.g. [0, 72, 144]",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/maps/{map_name}/jobs",
    status_code=202,
    response_model=JobOut,
    openapi_extra=UPLOAD_BODY,
    summary="Submit a photo to localise on a map",
    responses={400: {}, 401: {}, 403: {}, 404: {}, 413: {}, 429: {}, 503: {}},
)
async def submit_job(
    map_name: str,
    request: Request,
    response: Response,
    key: CallerKey,
    svc: Svc,
) -> JobOut:
    """Multipart ``photo`` (and optional ``options``, a JSON object). Answers 202 with the job and
    its ``Location``; the same photo and options on the same map give the same job again.
    Several ``photo`` parts (2 to 8, and optional ``yaws``) are one photo set, one job
    (core/photoset.py); every photo must decode, or no job is made."""
    validate_map_name(map_name)
    require_map(key, map_name)
    if not await run_in_threadpool(_map_exists, svc, map_name):
        raise Problem(404, f"unknown map {map_name!r}")
    photos, options, yaws = await _read_upload(request, svc.settings.max_image_bytes)
    for n, photo in enumerate(photos, 1):
        try:
            await run_in_threadpool(decode_image, photo, image_limits(svc.settings))
        except InputError as exc:
            raise (InputError(f"photo {n} of the set: {exc}") if len(photos) > 1 else exc) from None
    try:
        if len(photos) == 1 and yaws is None:
            job_id = await run_in_threadpool(svc.client.submit, photos[0], map_name, options)
        else:
            job_id = await run_in_threadpool(
                svc.client.submit_set, list(photos), map_name, options, yaws
            )
    except BrokerUnavailable:
        raise unavailable("the job queue") from None
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    try:
        result = await run_in_threadpool(svc.client.result, job_id)
    except DBAPIError as exc:
        if not is_transient(exc):
            raise
        # Queued, but its row cannot be read now (the database went away after the send, and
        # the worker records the job from its message): accepted all the same, as pending.
        return _job_out(pending_result(job_id, map_name, options))
    return _job_out(result)


async def _read_upload(
    request: Request, max_photo: int
) -> tuple[list[bytes], dict[str, Any], list[float] | None]:
    """The photos, options and yaws of a multipart body; the body limit middleware caps the
    stream."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Problem(415, "send multipart/form-data with a 'photo' file field")
    form = await request.form(max_files=MAX_PHOTOS, max_fields=2)
    try:
        parts = form.getlist("photo")
        if not parts or not all(isinstance(p, UploadFile) for p in parts):
            raise Problem(400, "the multipart field 'photo' (a file) is required")
        data = []
        for photo in parts:
            assert isinstance(photo, UploadFile)
            if photo.size is not None and photo.size > max_photo:
                raise Problem(413, f"photo larger than the limit of {max_photo} bytes")
            data.append(await photo.read())
        raw = form.get("options")
        raw_yaws = form.get("yaws")
    finally:
        await form.close()
    return data, _json_field(raw, "options", dict) or {}, _json_field(raw_yaws, "yaws", list)


def _json_field(raw: Any, name: str, kind: type) -> Any:
    """A form field holding JSON of ``kind`` (None when absent or empty)."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise Problem(400, f"the field '{name}' must be JSON text, not a file")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Problem(400, f"{name} are not JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(value, kind):
        raise Problem(400, f"{name} must be a JSON {'object' if kind is dict else 'list'}")
    return value


def _map_exists(svc: Services, map_name: str) -> bool:
    with svc.client.db.session() as s:
        return queries.get_map(s, map_name) is not None


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="A job: status, estimate, confidence, timings, candidates",
    responses={401: {}, 404: {}},
)
async def get_job(
    job_id: str,
    key: CallerKey,
    svc: Svc,
    wait: Annotated[float, Query(ge=0, description="Seconds to wait for the job to finish.")] = 0,
) -> JobOut:
    """With ``?wait=``, answers as soon as the job is done or failed, or when the wait is over
    (at most ``FEATURELOC_API_MAX_WAIT`` seconds) with the job as it is then."""
    result = await visible_job(svc, key, job_id)
    deadline = anyio.current_time() + min(wait, svc.settings.api_max_wait)
    while not result.finished and anyio.current_time() < deadline:
        await anyio.sleep(POLL_SECONDS)
        result = await run_in_threadpool(svc.client.result, job_id)
    return _job_out(result)


async def visible_job(svc: Services, key: ApiKey, job_id: str) -> JobResult:
    """The job, if it exists and its map is one the key may use; else 404 (a job id says which
    photo was sent, so a key outside the map does not learn that it exists)."""
    try:
        result = await run_in_threadpool(svc.client.result, job_id)
    except InputError:
        result = None
    if result is None or not key.allows(result.map_name):
        raise Problem(404, "unknown job")
    return result


@router.get("/jobs", response_model=JobPage, summary="Jobs, newest first, filtered and paged")
async def list_jobs(
    key: CallerKey,
    svc: Svc,
    map_name: Annotated[str | None, Query(alias="map")] = None,
    status: JobStatus | None = None,
    since: Annotated[datetime | None, Query(description="ISO 8601; without a zone: UTC.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> JobPage:
    if map_name is not None:
        require_map(key, map_name)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    jobs = await run_in_threadpool(
        svc.client.list_jobs,
        map_name,
        status.value if status else None,
        since,
        limit,
        key.maps,
        _decode_cursor(cursor) if cursor else None,
    )
    last = jobs[-1] if len(jobs) == limit else None
    return JobPage(
        jobs=[_job_out(j) for j in jobs],
        next_cursor=_encode_cursor(last.created_at, last.id) if last and last.created_at else None,
    )


def _encode_cursor(created_at: datetime, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{job_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(at), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem(400, "not a cursor given by this API") from None


def _job_out(result: JobResult) -> JobOut:
    return JobOut.model_validate(result.to_dict())
