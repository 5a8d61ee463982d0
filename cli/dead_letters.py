"""``featureloc jobs dead-letters``: messages no job could be made of, with why."""

from __future__ import annotations

from cli.common import (
    JsonOption,
    SinceOption,
    console,
    database,
    parse_since,
    print_json_lines,
    table,
)


def dead_letters_command(
    since: SinceOption = None,
    limit: int = 50,
    as_json: JsonOption = False,
) -> None:
    """Messages no job could be made of (bad arguments, a job id re-sent for another photo,
    an unknown task), newest first, with their raw arguments and the reason."""
    from db import queries

    with database().session() as s:
        letters = queries.list_dead_letters(s, since=parse_since(since), limit=limit)
    if as_json:
        fields = ("id", "task", "message_id", "job_id", "reason", "arguments", "worker")
        print_json_lines(
            {f: getattr(d, f) for f in fields} | {"created_at": d.created_at} for d in letters
        )
        return
    rows = table("when", "task", "job", "reason", "arguments")
    for d in letters:
        rows.add_row(
            f"{d.created_at:%Y-%m-%d %H:%M:%S}",
            d.task,
            d.job_id or "-",
            d.reason,
            d.arguments[:120],
        )
    console.print(rows)
