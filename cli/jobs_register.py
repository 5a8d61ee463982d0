"""``featureloc jobs register``: record a job before sending its message (README: the durable
path for services that send ``featureloc.localise`` by name)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, database, fail, parse_options
from core.errors import InputError


def jobs_register_command(
    job_id: str,
    map_name: Annotated[str, typer.Option("--map", help="Map to localise against.")],
    image_key: Annotated[
        str, typer.Option(help="SHA-256 hex digest of the photo, already in the blob store.")
    ],
    option: Annotated[list[str] | None, typer.Option(help="Job option key=value.")] = None,
    options: Annotated[str | None, typer.Option(help="Job options as a JSON object.")] = None,
) -> None:
    """Record a job, then send its featureloc.localise message yourself: once recorded it is
    never lost. Recording the same request again is a no-op; another request's id is refused."""
    from workers.client import Client

    database()
    try:
        created = Client().register(job_id, map_name, image_key, parse_options(option, options))
    except InputError as exc:
        fail(str(exc))
    console.print(f"{job_id} {'registered' if created else 'was already registered'}")
