"""``featureloc apikey create|list|revoke``: keys of the HTTP API (``featureloc serve``).

The token is printed once, by ``create``; the database keeps only its SHA-256.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import JsonOption, console, database, fail, print_json_lines, table


def apikey_create(
    name: Annotated[str, typer.Argument(help="A label for the key, e.g. the service using it.")],
    map_names: Annotated[
        list[str] | None, typer.Option("--map", help="Limit the key to this map (repeatable).")
    ] = None,
    rate_limit: Annotated[
        int | None,
        typer.Option(help="Requests per minute (0: no limit); default: FEATURELOC_API_RATE_LIMIT."),
    ] = None,
) -> None:
    """Create a key and print its token (shown this once only)."""
    from cli.map_sync import register_found_maps
    from db import api_keys, queries

    db = database()
    if map_names:
        register_found_maps()
    try:
        with db.session() as s:
            known = {m.name for m in queries.list_maps(s)}
            unknown = sorted(set(map_names or ()) - known)
            if unknown:
                fail(
                    f"unknown map(s) {', '.join(map(repr, unknown))}; the maps are: "
                    f"{', '.join(sorted(known)) or 'none yet (featureloc map build)'}"
                )
            key, token = api_keys.create_key(s, name, map_names, rate_limit)
    except ValueError as exc:
        fail(str(exc))
    scope = ", ".join(key.maps) if key.maps else "all maps"
    # The token alone on stdout, so scripts can capture it; the rest goes to stderr.
    typer.echo(token)
    typer.echo(f"API key {name!r} ({scope}); the token above is not shown again.", err=True)


def _rate_limit(limit: int | None) -> str:
    return "default" if limit is None else "none" if limit == 0 else str(limit)


def apikey_list(as_json: JsonOption = False) -> None:
    """Keys with their maps and state (never their tokens)."""
    from db import api_keys

    with database().session() as s:
        keys = api_keys.list_keys(s)
    if as_json:
        print_json_lines(
            {
                "name": k.name,
                "maps": k.maps,
                "rate_limit": k.rate_limit,
                "created_at": k.created_at,
                "revoked_at": k.revoked_at,
            }
            for k in keys
        )
        return
    rows = table("name", "maps", "rate limit", "created", "revoked")
    for k in keys:
        rows.add_row(
            k.name,
            ", ".join(k.maps) if k.maps else "all",
            _rate_limit(k.rate_limit),
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    console.print(rows)


def apikey_revoke(name: str) -> None:
    """Revoke a key: its next request is refused."""
    from db import api_keys

    with database().session() as s:
        key = api_keys.revoke_key(s, name)
    if key is None:
        fail(f"no API key named {name!r}")
    console.print(f"API key {name!r} revoked")
