"""``featureloc jobs dead-letters``: messages no job could be made of, with why."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from cli.common import SinceOption, console, database, parse_since


def dead_letters_command(
    since: SinceOption = None,
    limit: int = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Messages no job could be made of (bad arguments, a job id re-sent for another photo,
    an unknown task), newest first, with their raw arguments and the reason."""
    from db import queries

    with database().session() as s:
        letters = queries.list_dead_letters(s, since=parse_since(since), limit=limit)
    if as_json:
        for d in letters:
            row = {c: getattr(d, c) for c in ("id", "task", "message_id", "job_id", "reason")}
            row |= {"arguments": d.arguments, "worker": d.worker}
            print(json.dumps({**row, "created_at": d.created_at.isoformat()}))
        return
    table = Table("when", "task", "job", "reason", "arguments")
    for d in letters:
        table.add_row(
            f"{d.created_at:%Y-%m-%d %H:%M:%S}",
            d.task,
            d.job_id or "-",
            d.reason,
            d.arguments[:120],
        )
    console.print(table)
