"""``featureloc jobs export``: jobs as CSV (one row per job) or JSON (with their candidates)."""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import SinceOption, console, database, parse_since, parse_status

CSV_COLUMNS = (
    "id",
    "map_name",
    "status",
    "x",
    "y",
    "heading",  # radians in the map's frame, as the API gives it; empty where none
    "confidence",
    "localised",
    "best_reference",
    "best_inliers",
    "candidates",
    "matcher",
    "method",
    "worker",
    "error",
    "created_at",
    "started_at",
    "finished_at",
)


class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"


def csv_row(job: dict[str, Any]) -> dict[str, Any]:
    """A job (``JobResult.to_dict()``) flattened: its best candidate summarised."""
    cands = job["candidates"]
    best = max(cands, key=lambda c: c["inliers"]) if cands else None
    row = {k: job.get(k) for k in CSV_COLUMNS}
    row["best_reference"] = best["reference_id"] if best else None
    row["best_inliers"] = best["inliers"] if best else None
    row["candidates"] = len(cands)
    return {k: "" if v is None else v for k, v in row.items()}


def render(jobs: list[dict[str, Any]], fmt: ExportFormat) -> str:
    if fmt is ExportFormat.json:
        return json.dumps(jobs, indent=2) + "\n"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_row(j) for j in jobs)
    return out.getvalue()


def jobs_export_command(
    fmt: Annotated[ExportFormat, typer.Option("--format", help="csv or json.")] = ExportFormat.json,
    map_name: Annotated[str | None, typer.Option("--map")] = None,
    status: Annotated[str | None, typer.Option()] = None,
    since: SinceOption = None,
    limit: int = 10_000,
    output: Annotated[Path | None, typer.Option(help="File to write; default: stdout.")] = None,
) -> None:
    """Export jobs: CSV one row per job, JSON with every candidate's match statistics."""
    from workers.client import Client

    status = parse_status(status)
    database()
    client = Client()
    listed = client.list_jobs(map_name, status, parse_since(since), limit)
    # list_jobs leaves candidates out; fetch each job whole (newest first, like the listing).
    jobs = [client.result(j.id).to_dict() for j in listed]
    text = render(jobs, fmt)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        console.print(f"wrote {len(jobs)} job(s) to {output}", highlight=False)
