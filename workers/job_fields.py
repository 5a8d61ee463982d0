"""What a job's fields may be, checked before anything touches the database; recording a job.

The same rules on every backend: SQLite would store a 300-character id or an integer id that
PostgreSQL refuses, so the columns' limits are enforced here, not left to the driver. Used by the
client, ``register_job`` and the worker's message parsing (workers/messages.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from core.defaults import DEFAULT_PROFILE
from core.errors import InputError
from core.mapstore import validate_map_name
from db import queries
from db.models import JOB_ID_LENGTH, Job
from workers.settings import Settings

# Letters, digits and "_.:-" (hex digests, UUIDs, "service:1234"), starting with a letter or digit.
_JOB_ID_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{JOB_ID_LENGTH - 1}}}$")
# Image keys are SHA-256 hex digests of the photo's bytes (workers/blobstore.py).
_IMAGE_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
# Options are a few keys; a megabyte of them is a mistake or an attack, not a job.
MAX_OPTIONS_BYTES = 16_384
# How much of a bad value is quoted back in an error message.
_SHOWN = 80


class InvalidJob(InputError):
    """A job field that no backend may store."""


class JobConflict(InputError):
    """The job id is taken by another request (another photo, map or options)."""


def shown(value: Any) -> str:
    """``repr`` of a bad value, cut short for an error message."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def validate_job_id(value: Any) -> str:
    if not isinstance(value, str) or not _JOB_ID_RE.match(value):
        raise InvalidJob(
            f"invalid job id {shown(value)}: use a string of 1-{JOB_ID_LENGTH} letters, "
            "digits, '_', '.', ':' or '-', starting with a letter or digit"
        )
    return value


def validate_job_map_name(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidJob(f"invalid map name {shown(value)}: not a string")
    try:
        return validate_map_name(value)
    except InputError as exc:
        raise InvalidJob(str(exc).replace(repr(value), shown(value))) from None


def validate_image_key(value: Any) -> str:
    if not isinstance(value, str) or not _IMAGE_KEY_RE.match(value):
        raise InvalidJob(
            f"invalid image key {shown(value)}: the SHA-256 hex digest (64 lower-case hex "
            "digits) of the photo's bytes"
        )
    return value


def validate_options(value: Any) -> dict[str, Any]:
    """A JSON object of job options (its keys are checked by core.localiser.LocaliseOptions)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidJob(f"invalid options {shown(value)}: not a JSON object")
    try:
        size = len(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise InvalidJob(f"invalid options: not JSON ({exc})") from None
    if size > MAX_OPTIONS_BYTES:
        raise InvalidJob(f"invalid options: {size} bytes of JSON > limit {MAX_OPTIONS_BYTES}")
    return value


def with_default_profile(options: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``options`` with the profile made explicit: the one asked, else this host's default
    (``FEATURELOC_PROFILE``), else core.defaults.DEFAULT_PROFILE.

    The profile decides the answer, so the client resolves it before it makes the job id
    (workers/client.py): the id covers it and any worker, whatever its own default, computes
    what the id names. Client and workers may run on different hosts with different settings;
    the submitting side's is the one the user chose and can see. A worker resolves it only for
    a job registered or sent by name without one, and the job records the profile that ran.
    """
    if "profile" in options:
        return options
    return {**options, "profile": settings.profile or DEFAULT_PROFILE}


@dataclass(frozen=True)
class JobFields:
    """A job request whose every field may be stored."""

    job_id: str
    map_name: str
    image_key: str
    options: dict[str, Any]


def validate_job_fields(job_id: Any, map_name: Any, image_key: Any, options: Any) -> JobFields:
    """All four fields checked; the first bad one raises InvalidJob."""
    return JobFields(
        validate_job_id(job_id),
        validate_job_map_name(map_name),
        validate_image_key(image_key),
        validate_options(options),
    )


def record_job(
    s: Session, fields: JobFields, created_at: datetime | None = None
) -> tuple[Job, bool]:
    """Create the job, or find the same request recorded before: ``(job, created)``.

    Raises JobConflict when the id names another request: the stored job is what is computed
    and shown, so it must not be paired with another photo or options.
    """
    job, created = queries.create_job(
        s, fields.job_id, fields.map_name, fields.image_key, fields.options, created_at
    )
    if not created:
        conflict = queries.job_conflict(job, fields.map_name, fields.image_key, fields.options)
        if conflict is not None:
            raise JobConflict(conflict)
    return job, created
