"""The ``featureloc.localise`` message: parsed and checked before the database is touched, and a
message that cannot be a job is kept as a readable failure instead of vanishing.

Accepted: positional ``[job_id, map_name, image_key]`` or ``[job_id, map_name, image_key,
options]``, and optionally the keyword ``sent_at`` (ISO 8601 with a time zone: when the job was
sent, stored as its ``created_at`` if the worker creates the row). Anything else is refused:
with a usable job id the refusal is a failed job row, otherwise a dead letter (README).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.errors import InputError
from db import queries
from db.session import Database
from db.types import utcnow
from workers.job_fields import (
    InvalidJob,
    JobFields,
    shown,
    validate_image_key,
    validate_job_fields,
    validate_job_id,
    validate_job_map_name,
    validate_options,
)

_KEYWORDS = {"sent_at"}


class BadMessage(InputError):
    """A message no job can be made of, as sent."""


@dataclass(frozen=True)
class LocaliseMessage:
    fields: JobFields
    sent_at: datetime | None


def parse_localise(args: tuple[Any, ...], kwargs: dict[str, Any]) -> LocaliseMessage:
    if not 3 <= len(args) <= 4:
        raise BadMessage(
            f"bad message: {len(args)} positional argument(s), expected "
            "[job_id, map_name, image_key, options]"
        )
    unknown = sorted(set(kwargs) - _KEYWORDS)
    if unknown:
        raise BadMessage(f"bad message: unknown keyword argument(s) {', '.join(unknown)}")
    try:
        fields = validate_job_fields(*args, *([None] if len(args) == 3 else []))
    except InvalidJob as exc:
        raise BadMessage(f"bad message: {exc}") from None
    return LocaliseMessage(fields, _sent_at(kwargs.get("sent_at")))


def _sent_at(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        sent = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        sent = None
    if sent is None or sent.tzinfo is None:
        raise BadMessage(f"bad message: sent_at {shown(value)} is not an ISO 8601 time with a zone")
    return min(sent, utcnow())  # a sender's clock ahead of ours must not date a job in the future


def _storable(validate, value: Any, fallback: Any) -> Any:
    try:
        return validate(value)
    except InvalidJob:
        return fallback


def record_bad_message(
    db: Database,
    task: str,
    message_id: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    reason: str,
    worker: str,
) -> str:
    """Store why the message was refused; returns where: ``"job"`` or ``"dead letter"``.

    A failed job row when the message's job id is usable and not taken (a polling client then
    reads the reason), with the fields that are valid and blanks for the others; a dead letter
    with the raw arguments otherwise, naming the job id if it is a valid one.
    """
    job_id = _storable(validate_job_id, args[0] if args else None, None)
    with db.session() as s:
        if job_id is not None and queries.get_job(s, job_id) is None:
            fields = list(args[1:4]) + [None] * (3 - len(args[1:4]))
            queries.create_job(
                s,
                job_id,
                _storable(validate_job_map_name, fields[0], ""),
                _storable(validate_image_key, fields[1], ""),
                _storable(validate_options, fields[2], {}),
            )
            queries.mark_failed(s, job_id, reason, worker)
            return "job"
        queries.record_dead_letter(
            s,
            task=task,
            args=list(args),
            kwargs=kwargs,
            reason=reason,
            message_id=message_id,
            job_id=job_id,
            worker=worker,
        )
    return "dead letter"
