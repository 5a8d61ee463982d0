"""Helpers shared by the CLI commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from db.session import Database

console = Console()
err_console = Console(stderr=True)

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


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def database() -> Database:
    """The configured database, migrated to the newest schema first (every command that reads or
    writes it calls this, so a fresh install needs no separate migration step)."""
    from core.settings import get_settings
    from db.session import Database, init_db

    url = get_settings().database_url.get_secret_value()
    init_db(url)
    return Database(url)


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

    from core.settings import get_settings

    url = make_url(get_settings().database_url.get_secret_value())
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return f"database unavailable at {url.render_as_string(hide_password=True)}: {cause}"
