"""Helpers shared by the CLI commands."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from rich.table import Table

    from db.session import Database
    from workers.settings import Settings

# Off a terminal (piped, logged) rich would lay everything out in 80 columns and cut table cells
# with "…": a width no line reaches instead, unless COLUMNS says otherwise.
LOG_WIDTH = 4096


def _console(stderr: bool = False) -> Console:
    piped = Console(stderr=stderr)
    if piped.is_terminal or "COLUMNS" in os.environ:
        return piped
    return Console(stderr=stderr, width=LOG_WIDTH)


console = _console()
err_console = _console(stderr=True)

# ``--json`` of the listing commands: one JSON object per line (print_json_lines).
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]

# ``--since`` of the listing commands, read with parse_since.
SinceOption = Annotated[str | None, typer.Option(help="ISO time, or an age such as 30m, 2h, 7d.")]


def parse_options(option: list[str] | None, options_json: str | None) -> dict[str, Any]:
    """Job options from ``--option key=value`` (values parsed as JSON) and ``--options``."""
    opts: dict[str, Any] = {}
    if options_json:
        try:
            loaded = json.loads(options_json)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--options is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise typer.BadParameter("--options must be a JSON object")
        opts.update(loaded)
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--option takes key=value, got {item!r}")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return opts


def table(*headers: str, **kwargs: Any) -> Table:
    """A table whose cells are never cut short: in a narrow terminal a long id or number folds
    onto the next line instead of ending in "…" (a cut id cannot be looked up)."""
    from rich.table import Column, Table

    return Table(*(Column(h, overflow="fold") for h in headers), **kwargs)


def print_json_lines(rows: Iterable[dict[str, Any]]) -> None:
    """``--json``: each row on its own line (times as ISO 8601), on plain stdout."""
    for row in rows:
        print(json.dumps(row, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parse_status(status: str | None) -> str | None:
    """``--status`` of the job listings: one of the job statuses (db/models.py JobStatus)."""
    from db.models import JobStatus

    known = [s.value for s in JobStatus]
    if status is not None and status not in known:
        raise typer.BadParameter(f"--status: {status!r} is not one of {', '.join(known)}")
    return status


def fail(message: str, code: int = 1) -> NoReturn:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def get_settings() -> Settings:
    """workers.settings.get_settings, imported when first needed (pydantic-settings is slow to
    import: `featureloc --help` does without it)."""
    from workers.settings import get_settings as settings

    return settings()


def model_device() -> str:
    """The device a command that runs models in this process uses, with torch's and OpenCV's
    threads set as the workers set them (``FEATURELOC_TORCH_THREADS``, core/threads.py)."""
    from core.threads import limit_threads

    settings = get_settings()
    limit_threads(settings.torch_threads)
    return settings.resolved_device()


def database() -> Database:
    """The configured database, migrated to the newest schema first (every command that reads or
    writes it calls this, so a fresh install needs no separate migration step)."""
    from db.session import Database, init_db
    from workers.settings import get_settings

    url = get_settings().database_url.get_secret_value()
    init_db(url)
    return Database(url)


# How many matches of an ambiguous job id prefix are named.
SHOWN_MATCHES = 10


def resolve_job_id(db: Database, given: str) -> str:
    """The job a person names by its id or any unique start of it (``jobs show 64fb40c``)."""
    from db import queries

    with db.session() as s:
        if queries.get_job(s, given) is not None:
            return given
        matches = queries.job_ids_starting_with(s, given, limit=SHOWN_MATCHES + 1)
    if not matches:
        fail(f"unknown job {given!r}")
    if len(matches) > 1:
        more = " and more" if len(matches) > SHOWN_MATCHES else ""
        fail(
            f"job id {given!r} is ambiguous, give more of it; it begins "
            f"{', '.join(matches[:SHOWN_MATCHES])}{more}"
        )
    return matches[0]


def parse_since(since: str | None) -> datetime | None:
    """``--since``: an ISO time (UTC when it names no zone) or an age such as ``90m`` or ``2d``."""
    if not since:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if since[-1] in units and since[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(since[:-1]) * units[since[-1]])
    try:
        t = datetime.fromisoformat(since)
    except ValueError:
        raise typer.BadParameter(f"--since: not an ISO time or age: {since!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def database_unavailable(exc: Exception) -> str:
    """What to tell a person whose command could not reach the database (password hidden)."""
    from sqlalchemy.engine import make_url

    from workers.settings import get_settings

    url = make_url(get_settings().database_url.get_secret_value())
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return f"database unavailable at {url.render_as_string(hide_password=True)}: {cause}"
