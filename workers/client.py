"""The Python client other services use: submit photos, wait for results.

client = Client()
job_id = client.submit(Path("photo.jpg").read_bytes(), "campus")
result = client.wait(job_id, timeout=60)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy.exc import DBAPIError

from core.errors import InputError
from core.types import CandidateResult
from db import queries
from db.models import Job
from db.session import Database
from workers.blobstore import blob_key, make_blob_store
from workers.celery_app import LOCALISE_TASK, make_celery
from workers.job_fields import record_job, validate_job_fields, with_default_profile
from workers.settings import Settings, get_settings

if TYPE_CHECKING:
    from core.camera import Camera
    from core.localiser import LocaliseOptions

FINISHED = ("done", "failed")
log = logging.getLogger(__name__)


class JobTimeout(TimeoutError):
    pass


class BrokerUnavailable(ConnectionError):
    """The job could not be queued; nothing was recorded, submitting again is safe."""


@dataclass(frozen=True)
class SetPhotoAnswer:
    """One photo of a photo set: its yaw as given, and where it alone localised."""

    photo: int  # 0-based, in the set's order
    yaw: float | None  # degrees from the first photo, when the caller gave them
    x: float | None  # None until the job is done
    y: float | None
    localised: bool | None
    heading: float | None  # radians, where placement gave one for this photo


@dataclass
class JobResult:
    id: str
    map_name: str
    status: str
    x: float | None
    y: float | None
    confidence: float | None
    localised: bool | None
    error: str | None
    timings: dict[str, float] | None
    worker: str | None
    matcher: str | None
    method: str | None  # how the estimate was made, e.g. "cluster+placement"
    map_version: str | None  # the exact map version used (workers/mapversions.py)
    options: dict[str, Any]
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    candidates: list[CandidateResult] = field(default_factory=list)
    # The profile that ran ("fast" when "accurate" was asked of a map with no fine set) and
    # why it differs from, or falls short of, the one asked; whether the confidence is
    # calibrated by the map's fit (P(error < 5)) and which fit (None: the map is unfitted).
    profile_used: str | None = None
    profile_note: str | None = None
    calibrated: bool | None = None
    fit_id: str | None = None
    heading: float | None = None  # radians in the map's frame, where placement gave one
    photos: int = 1  # 2 to 8 for a photo set (core/photoset.py)
    # A set's photos, each with its yaw and its own answer (empty for a single photo; filled by
    # Client.result, not by listings).
    set_photos: list[SetPhotoAnswer] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("candidates", "set_photos")}
        for k in ("created_at", "started_at", "finished_at"):
            d[k] = d[k].isoformat() if d[k] else None
        d["candidates"] = [c.to_row() for c in self.candidates]
        d["set_photos"] = [asdict(p) for p in self.set_photos]
        return d


def send_job(celery: Celery, settings: Settings, job: Job) -> None:
    """Queue ``job``; the task id is the job id so the message can be found in the broker (stale
    job recovery re-sends through here too)."""
    celery.send_task(
        LOCALISE_TASK,
        args=[job.id, job.map_name, job.image_key, job.options or {}],
        queue=settings.localise_queue,
        task_id=job.id,
    )


def job_id_for(map_name: str, image_key: str, options: dict[str, Any]) -> str:
    """The same photo, map and options always give the same job: resubmitting is idempotent."""
    canonical = json.dumps(
        {"map": map_name, "image": image_key, "options": options}, sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def set_job_id_for(
    map_name: str,
    image_keys: list[str],
    options: dict[str, Any],
    yaws: list[float] | None,
    cameras: list[dict[str, Any] | None] | None,
) -> str:
    """A photo set's job id: the map, the photos' hashes in order, the options, yaws and
    cameras; the same set always gives the same job."""
    canonical = json.dumps(
        {"map": map_name, "images": image_keys, "options": options, "yaws": yaws,
         "cameras": cameras},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class Client:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = Database(self.settings.database_url.get_secret_value())
        self.blobs = make_blob_store(self.settings)
        self.app = make_celery(self.settings)

    def submit(
        self, image: bytes | Path, map_name: str, options: dict[str, Any] | None = None
    ) -> str:
        """Store the photo, record a pending job and enqueue it; returns the job id.

        Cheap checks only (map name, options, a matcher the map cannot use, size): decoding and
        every other check happen in the worker, and a bad photo becomes a failed job with its
        reason, not an exception. A submission refused by an outage (BrokerUnavailable, a
        database error) records nothing and leaves no photo behind that no job refers to.
        """
        # Here, not at the top: the computer vision modules would slow every CLI command down.
        from core.localiser import LocaliseOptions
        from core.mapstore import validate_map_name

        validate_map_name(map_name)
        options = dict(options or {})
        parsed = LocaliseOptions.parse(options)  # a typo in an option fails here, before queueing
        # The id covers every option that decides the answer, the default profile included.
        options = with_default_profile(options, self.settings)
        data = Path(image).read_bytes() if isinstance(image, Path) else bytes(image)
        key = blob_key(data)
        fields = validate_job_fields(job_id_for(map_name, key, options), map_name, key, options)
        self._check_map(map_name, parsed)
        too_big = len(data) > self.settings.max_image_bytes
        stored_now = not too_big and not self.blobs.exists(key)
        if stored_now:
            self.blobs.put(data)
        sent = False
        try:
            with self.db.session() as s:
                job, created = record_job(s, fields)
                if created and too_big:
                    queries.mark_failed(
                        s,
                        job.id,
                        f"image too large: {len(data)} bytes > limit "
                        f"{self.settings.max_image_bytes}",
                        None,
                    )
                elif created:
                    # Sent before the row commits: if the broker is down the row is rolled back,
                    # so no pending job is left without a message.
                    self._send(job)
                    sent = True
        except DBAPIError:
            if not sent:
                self._forget_photo(key, stored_now)
                raise
            # The commit failed after the send: the message is queued and the worker records
            # the job from it (workers/tasks.py), so the job is accepted all the same.
            log.warning(
                "job %s queued; its row is left to the worker (commit failed)", fields.job_id
            )
        except BaseException:
            if not sent:  # once sent, the message refers to the photo
                self._forget_photo(key, stored_now)
            raise
        return fields.job_id

    def _check_map(self, map_name: str, options: LocaliseOptions) -> None:
        """Refuse what the worker would refuse on this map: a matcher that cannot match its
        features (core.localiser.require_compatible, the worker's own rule). An unknown map is
        left to the worker (it may be registered before the job runs)."""
        from core.localiser import require_compatible

        with self.db.session() as s:
            row = queries.get_map(s, map_name)
            extractor = row.extractor["name"] if row is not None else None
        if extractor is not None:
            require_compatible(options.matcher, extractor, map_name)

    def _forget_photo(self, key: str, stored_now: bool) -> None:
        """Delete the photo a refused submission stored, unless a job refers to it (the same
        bytes sent with other options, by this or another client). A photo stored before this
        submission is left alone."""
        if not stored_now:
            return
        try:
            with self.db.session() as s:
                if queries.image_in_use(s, key):
                    return
        except DBAPIError:
            # No job can refer to a photo stored a moment ago unless another client recorded
            # one since, through the same outage: deleting is the lesser risk than an orphan.
            pass
        self.blobs.delete(key)

    def submit_set(
        self,
        images: list[bytes | Path],
        map_name: str,
        options: dict[str, Any] | None = None,
        yaws: list[float] | None = None,
        cameras: list[Camera | dict[str, Any] | None] | None = None,
    ) -> str:
        """Submit a photo set (core/photoset.py): 2 to 8 photos from one spot, localised as one
        job; ``yaws`` (degrees relative to the first photo) and ``cameras`` give one value per
        photo. Returns the job id.

        Everything is checked before anything is stored (InputError otherwise): the set's size,
        the yaw and camera lists, the options, the map's matcher and each photo's size, so a bad
        set leaves no partial job. The worker decodes every photo before localising any. A
        submission refused by an outage leaves none of the photos it stored behind.
        """
        from core.camera import Camera
        from core.localiser import LocaliseOptions
        from core.mapstore import validate_map_name
        from core.photoset import check_set

        validate_map_name(map_name)
        options = dict(options or {})
        parsed = LocaliseOptions.parse(options)
        options = with_default_profile(options, self.settings)
        check_set(len(images), yaws, cameras)
        cams = None
        if cameras is not None:
            try:
                cams = [
                    None if c is None else Camera.model_validate(c).model_dump(exclude_none=True)
                    for c in cameras
                ]
            except ValueError as exc:
                raise InputError(f"bad camera in the set: {exc}") from None
        datas = [Path(i).read_bytes() if isinstance(i, Path) else bytes(i) for i in images]
        limit = self.settings.max_image_bytes
        for n, data in enumerate(datas, 1):
            if len(data) > limit:
                raise InputError(f"photo {n} of the set is too large: {len(data)} bytes > {limit}")
        keys = [blob_key(d) for d in datas]
        yaw_list = None if yaws is None else [float(y) for y in yaws]
        job_id = set_job_id_for(map_name, keys, options, yaw_list, cams)
        fields = validate_job_fields(job_id, map_name, keys[0], options)
        self._check_map(map_name, parsed)
        stored_now = []
        for key, data in zip(keys, datas, strict=True):
            if key not in stored_now and not self.blobs.exists(key):
                self.blobs.put(data)
                stored_now.append(key)
        try:
            with self.db.session() as s:
                job, created = record_job(s, fields)
                if created:
                    queries.add_job_photos(s, job.id, keys, yaw_list, cams)
        except BaseException:
            for key in stored_now:
                self._forget_photo(key, True)
            raise
        if created:
            # Sent once the set is committed, unlike a single photo's message: a worker that
            # recorded the job from its message alone would localise the first photo only.
            try:
                self._send(job)
            except BrokerUnavailable:
                self._withdraw(job.id, stored_now)
                raise
        return fields.job_id

    def _withdraw(self, job_id: str, stored_now: list[str]) -> None:
        """Undo a committed set whose message could not be sent. Where the database fails too,
        the job stays pending with no message, and recovery sends it (workers/recovery.py)."""
        try:
            with self.db.session() as s:
                queries.withdraw_pending_job(s, job_id)
        except DBAPIError:
            log.warning("job %s stays pending for recovery: its withdrawal failed", job_id)
            return
        for key in stored_now:
            self._forget_photo(key, True)

    def register(
        self, job_id: str, map_name: str, image_key: str, options: dict[str, Any] | None = None
    ) -> bool:
        """Record a job whose photo is stored and whose message the caller sends itself.

        The durable path for services that send ``featureloc.localise`` by name (README): once
        recorded, the job survives the loss of its message, because recovery re-sends it.
        True when recorded now, False when the same request was recorded before. Raises
        InputError for a field no job may have, an unknown option, a matcher the map cannot use,
        a photo missing from the blob store, or (JobConflict) an id already naming another
        request.
        """
        from core.localiser import LocaliseOptions

        fields = validate_job_fields(job_id, map_name, image_key, options)
        self._check_map(fields.map_name, LocaliseOptions.parse(fields.options))
        if not self.blobs.exists(fields.image_key):
            raise InputError(f"query image {fields.image_key} is not in the blob store")
        with self.db.session() as s:
            return record_job(s, fields)[1]

    def _send(self, job: Job) -> None:
        from redis.exceptions import RedisError

        try:
            send_job(self.app, self.settings, job)
        except (KombuOperationalError, RedisError, OSError) as exc:
            url = maybe_sanitize_url(self.settings.broker_url.get_secret_value())
            raise BrokerUnavailable(
                f"cannot queue the job: broker {url} is unavailable ({exc}); nothing was "
                "recorded, submit again when it is back"
            ) from None

    def submit_many(
        self, images: list[bytes | Path], map_name: str, options: dict[str, Any] | None = None
    ) -> list[str]:
        return [self.submit(img, map_name, options) for img in images]

    def result(self, job_id: str) -> JobResult:
        with self.db.session() as s:
            job = queries.get_job(s, job_id)
            if job is None:
                raise InputError(f"unknown job {job_id!r}")
            photos = queries.get_job_photos(s, job_id)
            result = _to_result(job, queries.get_candidates(s, job_id), max(len(photos), 1))
            result.set_photos = [
                SetPhotoAnswer(p.index, p.yaw_deg, p.x, p.y, p.localised, p.heading) for p in photos
            ]
            return result

    def wait(self, job_id: str, timeout: float = 60.0, poll: float = 0.2) -> JobResult:
        deadline = time.monotonic() + timeout
        while True:
            res = self.result(job_id)
            if res.finished:
                return res
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {job_id} still {res.status} after {timeout:.0f} s")
            time.sleep(poll)

    def wait_many(self, job_ids: list[str], timeout: float = 300.0) -> list[JobResult]:
        deadline = time.monotonic() + timeout
        return [self.wait(j, max(deadline - time.monotonic(), 0.0)) for j in job_ids]

    def list_jobs(
        self,
        map_name: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        map_names: Collection[str] | None = None,
        before: tuple[datetime, str] | None = None,
    ) -> list[JobResult]:
        """Jobs newest first; see ``db.queries.list_jobs`` for the filters and paging."""
        with self.db.session() as s:
            jobs = queries.list_jobs(
                s,
                map_name=map_name,
                status=status,
                since=since,
                limit=limit,
                map_names=map_names,
                before=before,
            )
            counts = queries.photo_counts(s, [j.id for j in jobs])
            return [_to_result(j, [], counts.get(j.id, 1)) for j in jobs]


def pending_result(job_id: str, map_name: str, options: dict[str, Any]) -> JobResult:
    """A job just queued, as it is before anyone ran it (when its row cannot be read back)."""
    return JobResult(
        id=job_id,
        map_name=map_name,
        status="pending",
        x=None,
        y=None,
        confidence=None,
        localised=None,
        error=None,
        timings=None,
        worker=None,
        matcher=None,
        method=None,
        map_version=None,
        options=options,
        created_at=None,
        started_at=None,
        finished_at=None,
    )


def _to_result(job, candidates, photos: int = 1) -> JobResult:
    return JobResult(
        id=job.id,
        map_name=job.map_name,
        status=job.status,
        x=job.estimate_x,
        y=job.estimate_y,
        confidence=job.confidence,
        localised=job.localised,
        error=job.error,
        timings=job.timings,
        worker=job.worker,
        matcher=job.matcher,
        method=job.method,
        map_version=job.map_version,
        options=job.options or {},
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        candidates=list(candidates),
        profile_used=job.profile_used,
        profile_note=job.profile_note,
        calibrated=job.calibrated,
        fit_id=job.fit_id,
        heading=job.heading,
        photos=photos,
    )
