"""`featureloc map report`: where a map localises and where it will fail (core/mapreport.py),
as ``report.html`` (self-contained, opens offline), ``report.json`` and one PNG per figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, fail, get_settings
from core.errors import InputError


def map_report_command(
    name: str,
    out: Annotated[Path, typer.Option(help="Folder to write the report to (made if missing).")],
    profile: Annotated[
        str, typer.Option(help="fast, or accurate where the map's fit has a fine part.")
    ] = "fast",
    hole_distance: Annotated[
        float | None,
        typer.Option(help="A hole is farther than this from every position; default: 3 spacings."),
    ] = None,
) -> None:
    """Report every reference position's held-out error on a plan of the site, the coverage
    holes, the worst places and what they matched instead, the reliability of the confidence,
    and where to add reference photos. Measure the map first: `featureloc map fit NAME
    --every-position`."""
    from api.pages import report_figures_of, report_html
    from core.mapreport import map_report
    from core.mapstore import MapStore

    store = MapStore(get_settings().maps_dir)
    try:
        report = map_report(store, name, profile, hole_distance)
    except InputError as exc:
        fail(str(exc))
    figures = report_figures_of(store, name, report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    for figure, png in figures.items():
        (out / f"{figure}.png").write_bytes(png)
    (out / "report.html").write_text(report_html(report, figures))
    console.print(
        f"map {name!r}: {report.positions_measured} of {report.positions_total} positions "
        f"measured, held-out MAE {report.mae:.2f}, {len(report.holes)} holes, "
        f"{len(report.suggestions)} suggestions; written to {out}/report.html",
        highlight=False,
    )
    if report.positions_measured < report.positions_total:
        console.print(
            f"  not every position is measured yet: `featureloc map fit {name} --every-position`",
            highlight=False,
        )
