"""``featureloc apikey create|list|revoke``: keys of the HTTP API (``featureloc serve``).

The token is printed once, by ``create``; the database keeps only its SHA-256.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.common import console, database, fail


def apikey_create(
    name: Annotated[str, typer.Argument(help="A label for the key, e.g. the service using it.")],
    map_names: Annotated[
        list[str] | None, typer.Option("--map", help="Limit the key to this map (repeatable).")
    ] = None,
    rate_limit: Annotated[
        int | None,
        typer.Option(help="Requests per minute; default: FEATURELOC_API_RATE_LIMIT."),
    ] = None,
) -> None:
    """Create a key and print its token (shown this once only)."""
    from db import api_keys

    try:
        with database().session() as s:
            key, token = api_keys.create_key(s, name, map_names, rate_limit)
    except ValueError as exc:
        fail(str(exc))
    scope = ", ".join(key.maps) if key.maps else "all maps"
    # The token alone on stdout, so scripts can capture it; the rest goes to stderr.
    typer.echo(token)
    typer.echo(f"API key {name!r} ({scope}); the token above is not shown again.", err=True)


def apikey_list() -> None:
    """Keys with their maps and state (never their tokens)."""
    from db import api_keys

    with database().session() as s:
        keys = api_keys.list_keys(s)
    table = Table("name", "maps", "rate limit", "created", "revoked")
    for k in keys:
        table.add_row(
            k.name,
            ", ".join(k.maps) if k.maps else "all",
            str(k.rate_limit) if k.rate_limit else "default",
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    console.print(table)


def apikey_revoke(name: str) -> None:
    """Revoke a key: its next request is refused."""
    from db import api_keys

    with database().session() as s:
        key = api_keys.revoke_key(s, name)
    if key is None:
        fail(f"no API key named {name!r}")
    console.print(f"API key {name!r} revoked")
