"""``featureloc evaluate``: accuracy of a map on queries with known positions.

The command line is a stable contract (issue 4):

    featureloc evaluate --map NAME --queries CSV --images DIR [--matcher M] [--top-k K]
                        [--via-queue] --report OUT.json

The queries CSV is ``id,x,y`` with an optional ``set`` column (issue 25): rows with the same
non-empty ``set`` value are one photo set (core/photoset.py), localised as one job and scored
once, as the row ``id`` = the set's value, at their shared truth.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import console, fail, get_settings, model_device, parse_options, table

if TYPE_CHECKING:
    from rich.progress import Progress

    from core.evaluation import EvaluationReport, Query
    from core.types import LocalisationResult


def evaluate_command(
    map_name: Annotated[str, typer.Option("--map", help="Map to localise against.")],
    queries: Annotated[Path, typer.Option(help="CSV id,x,y of the query photos (the truth).")],
    images: Annotated[Path, typer.Option(help="Folder holding the query photos.")],
    report: Annotated[Path, typer.Option(help="Where to write the JSON report.")],
    matcher: Annotated[str | None, typer.Option(help="Matcher (default: the job default).")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Shortlist size (default: job default).")
    ] = None,
    via_queue: Annotated[
        bool, typer.Option(help="Send the queries through Redis to the running workers.")
    ] = False,
    option: Annotated[list[str] | None, typer.Option(help="Other job option key=value.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N queries.")] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait per query with --via-queue.")
    ] = 600,
) -> None:
    """Localise every query, print MAE / median / p90 / within-N, write per-query rows."""
    from core.errors import InputError
    from core.mapbuild import read_positions_csv

    opts = parse_options(option, None)
    if matcher:
        opts["matcher"] = matcher
    if top_k:
        opts["top_k"] = top_k
    try:
        entries = read_positions_csv(queries, images)
    except InputError as exc:
        fail(str(exc))
    qs: list[Query] = [(e.reference.id, e.image, e.reference.x, e.reference.y) for e in entries]
    try:
        qs, sets = photo_sets(queries, qs)
    except InputError as exc:
        fail(str(exc))
    qs = qs[:limit] if limit else qs
    try:
        result = (
            _via_queue(map_name, qs, opts, timeout, sets)
            if via_queue
            else _in_process(map_name, qs, opts, sets)
        )
    except InputError as exc:
        fail(str(exc))
    result.config.update(map=map_name, options=opts, via_queue=via_queue, queries=str(queries))
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(result.to_json())
    _print_summary(result.summary)
    console.print(f"report written to {report}")


def photo_sets(queries_csv: Path, qs: list[Query]) -> tuple[list[Query], dict[str, list[Path]]]:
    """The queries with each ``set`` of rows made one: ``(queries, photos)``. A set's query is
    (set value, its first photo, shared truth); ``photos`` maps that first photo to all of the
    set's in file order. InputError when a set's rows disagree on the truth or its size is
    not a set's (core.photoset.check_set); a set of one row is an ordinary query."""
    from core.errors import InputError
    from core.photoset import check_set

    with queries_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        if "set" not in (reader.fieldnames or []):
            return qs, {}
        set_of = {r["id"]: (r.get("set") or "").strip() for r in reader}
    groups: dict[str, list[Query]] = {}
    order: list[str | Query] = []
    for q in qs:
        name = set_of.get(q[0], "")
        if not name:
            order.append(q)
            continue
        if name not in groups:
            groups[name] = []
            order.append(name)
        groups[name].append(q)
    out: list[Query] = []
    photos: dict[str, list[Path]] = {}
    for item in order:
        if not isinstance(item, str):
            out.append(item)
            continue
        rows = groups[item]
        if len(rows) == 1:
            out.append(rows[0])
            continue
        check_set(len(rows), None, None)
        truth = {(round(q[2], 6), round(q[3], 6)) for q in rows}
        if len(truth) > 1:
            raise InputError(f"set {item!r}: its rows give {len(truth)} different positions")
        out.append((item, rows[0][1], rows[0][2], rows[0][3]))
        photos[str(rows[0][1])] = [Path(q[1]) for q in rows]
    return out, photos


def _progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        "{task.fields[mae]}",
        console=console,
    )


def _in_process(
    map_name: str, qs: list[Query], opts: dict[str, Any], sets: dict[str, list[Path]]
) -> EvaluationReport:
    from core.evaluation import evaluate, map_centroid
    from core.images import read_image
    from core.localiser import LocaliseOptions, Localiser
    from core.mapstore import MapStore
    from core.photoset import localise_set

    settings = get_settings()
    options = LocaliseOptions.parse(opts)
    ref_map = MapStore(settings.maps_dir).open(map_name)
    loc = Localiser(ref_map, device=model_device())
    errors: list[float] = []
    with _progress() as progress:
        task = progress.add_task("evaluating", total=len(qs), mae="")

        def on_row(row) -> None:
            errors.append(row.error)
            progress.update(task, advance=1, mae=f"MAE {sum(errors) / len(errors):.2f}")

        def localise(path: Path) -> LocalisationResult:
            if str(path) in sets:
                images_ = [read_image(p) for p in sets[str(path)]]
                return localise_set(loc, images_, options).as_result()
            return loc.localise(read_image(path), options)

        return evaluate(
            localise,
            qs,
            fallback_position=map_centroid(ref_map.positions),
            on_row=on_row,
        )


def _via_queue(
    map_name: str,
    qs: list[Query],
    opts: dict[str, Any],
    timeout: float,
    sets: dict[str, list[Path]],
):
    from core.errors import InputError
    from core.evaluation import EvaluationReport, map_centroid, score_result, summarise
    from db import queries
    from workers.client import Client

    client = Client()
    with client.db.session() as s:
        # The same fallback as in process: the map's centroid (core.evaluation.map_centroid).
        refs = queries.get_references(s, map_name)
    if not refs:
        raise InputError(f"unknown map {map_name!r} (or it has no references)")
    centroid = map_centroid([(r.x, r.y) for r in refs])
    t0 = time.perf_counter()
    ids = [
        client.submit_set(list(sets[str(path)]), map_name, opts)
        if str(path) in sets
        else client.submit(Path(path), map_name, opts)
        for _, path, _, _ in qs
    ]
    rows = []
    with _progress() as progress:
        task = progress.add_task("waiting for workers", total=len(qs), mae="")
        for (qid, _, tx, ty), job_id in zip(qs, ids, strict=True):
            res = client.wait(job_id, timeout)
            if res.status == "failed":
                raise InputError(f"query {qid} failed: {res.error}")
            seconds = sum(v for k, v in (res.timings or {}).items() if k == "total")
            rows.append(score_result(qid, (tx, ty), _as_result(res), seconds, centroid))
            progress.advance(task)
    summary = summarise(rows)
    # Through the queue, wall time per query (with all workers) is what a client sees.
    summary["wall_seconds_per_query"] = (time.perf_counter() - t0) / max(len(qs), 1)
    return EvaluationReport(rows, summary, {})


def _as_result(res) -> LocalisationResult:
    """A stored job as the LocalisationResult the scorer reads."""
    from core.types import Estimate, LocalisationResult

    est = Estimate(res.x, res.y, res.confidence or 0.0, bool(res.localised), "stored")
    return LocalisationResult(est, res.candidates, res.timings or {}, res.options)


def _print_summary(s: dict) -> None:
    rows = table(
        "queries",
        "MAE",
        "MAE 95% interval",
        "median",
        "p90",
        "<1",
        "<2",
        "<5",
        "<10",
        "not localised",
        "s/query",
        title="evaluation",
    )
    pct = "{:.0%}".format
    rows.add_row(
        str(s["queries"]),
        f"{s['mae']:.2f}",
        "{:.2f}-{:.2f}".format(*s["mae_ci95"]),
        f"{s['median']:.2f}",
        f"{s['p90']:.2f}",
        pct(s["within_1"]),
        pct(s["within_2"]),
        pct(s["within_5"]),
        pct(s["within_10"]),
        str(s["not_localised"]),
        f"{s['seconds_per_query']:.2f}",
    )
    console.print(rows)
