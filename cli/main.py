"""``featureloc``: build maps, submit photos, inspect jobs, run workers, try the demo."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.apikey import apikey_create, apikey_list, apikey_revoke
from cli.common import (
    JsonOption,
    SinceOption,
    console,
    database,
    database_unavailable,
    err_console,
    fail,
    fmt,
    get_settings,
    parse_options,
    parse_since,
    parse_status,
    print_json_lines,
    resolve_job_id,
    table,
)
from cli.dead_letters import dead_letters_command
from cli.draw import draw_command
from cli.evaluate import evaluate_command
from cli.flower import flower_command
from cli.jobs_export import jobs_export_command
from cli.jobs_register import jobs_register_command
from cli.map_build import build_in_process, build_via_queue, map_add_command
from cli.map_fit import map_fine, map_fit
from cli.map_geometry import map_geometry
from cli.map_report import map_report_command
from cli.map_sync import register_found_maps
from cli.map_versions import map_publish, map_upgrade
from cli.serve import serve_command

# Imports of heavy modules (torch, cv2, SQLAlchemy, Celery...) stay inside the commands, so that
# `featureloc --help` and a light command start fast; tests/cli/test_startup.py keeps it so.


class _App(typer.Typer):
    """The CLI; an unreachable database is one line on stderr, not a driver traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            # Loaded by then if the database was used: importing it here would slow every start.
            sql_errors = sys.modules.get("sqlalchemy.exc")
            if sql_errors is None or not isinstance(
                exc, (sql_errors.OperationalError, sql_errors.InterfaceError)
            ):
                raise
            err_console.print(f"[bold red]error:[/] {database_unavailable(exc)}", soft_wrap=True)
            sys.exit(1)


app = _App(help=__doc__, no_args_is_help=True, pretty_exceptions_show_locals=False)
map_app = typer.Typer(help="Build and list maps.", no_args_is_help=True)
jobs_app = typer.Typer(help="List and inspect localisation jobs.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
apikey_app = typer.Typer(help="Keys of the HTTP API (featureloc serve).", no_args_is_help=True)
app.add_typer(map_app, name="map")
app.add_typer(jobs_app, name="jobs")
app.add_typer(db_app, name="db")
app.add_typer(apikey_app, name="apikey")


def db_upgrade() -> None:
    """Apply database migrations up to the newest (also done by every command that needs it)."""
    database()
    console.print("database is at the newest schema")


def map_build(
    name: str,
    images: Annotated[Path, typer.Option(help="Folder of reference photos.")],
    positions: Annotated[Path, typer.Option(help="CSV with columns id,x,y (id = file stem).")],
    extractor: Annotated[
        str | None,
        typer.Option(help="Local feature extractor; default: the default preset's."),
    ] = None,
    retriever: Annotated[
        str | None, typer.Option(help="Shortlisting method; default: the default preset's.")
    ] = None,
    via_queue: Annotated[
        bool,
        typer.Option(
            "--via-queue", help="Extract on workers, one task per chunk (paths must be shared)."
        ),
    ] = False,
    chunk_size: Annotated[int, typer.Option(help="Photos per task with --via-queue.")] = 50,
    restart: Annotated[
        bool, typer.Option(help="With --via-queue: abandon a build of this map still running.")
    ] = False,
    fine: Annotated[
        bool,
        typer.Option(
            "--fine", help="Also extract the fine feature set (the accurate profile's); in process."
        ),
    ] = False,
) -> None:
    """Build a map (or add the photos a map does not have yet); re-running resumes."""
    from core import defaults

    extractor = extractor or defaults.EXTRACTOR
    retriever = retriever or defaults.RETRIEVER
    database()
    if fine and via_queue:
        fail("--fine runs in process: build with --via-queue, then run `featureloc map fine`")
    if via_queue:
        build_via_queue(name, images, positions, extractor, retriever, chunk_size, restart)
    else:
        build_in_process(name, images, positions, extractor, retriever)
    _record_images_dir(name, images)
    if fine:
        map_fine(name, images)


def _record_images_dir(name: str, images: Path) -> None:
    """Remember where the map's photos are, for figures (``draw``, the HTTP API's job page)."""
    from core.errors import MapError
    from core.mapstore import MapStore

    try:
        MapStore(get_settings().maps_dir).set_images_dir(name, images)
    except MapError:  # a queued build that has not finished: the map has no manifest yet
        console.print(f"reference photos not recorded: run featureloc map images {name} {images}")


def map_builds(
    map_name: Annotated[str | None, typer.Option("--map", help="Only this map's builds.")] = None,
    limit: Annotated[int, typer.Option(help="Newest first, at most this many.")] = 20,
    failures: Annotated[bool, typer.Option(help="List each failed photo with its reason.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Builds run on the workers (--via-queue): status, progress, failed photos."""
    from db import build_queries

    with database().session() as s:
        builds = build_queries.list_builds(s, map_name, limit)
        if as_json:
            print_json_lines(_build_row(b) for b in builds)
            return
        rows = table("build", "map", "status", "done", "added", "failed", "started", "finished")
        for b in builds:
            rows.add_row(
                b.id,
                b.map_name,
                b.status,
                f"{b.processed}/{b.total}",
                str(b.added),
                str(len(b.failed or {})),
                f"{b.created_at:%Y-%m-%d %H:%M:%S}",
                f"{b.finished_at:%Y-%m-%d %H:%M:%S}" if b.finished_at else "",
            )
        console.print(rows)
        for b in builds if failures else []:
            for ref_id, reason in (b.failed or {}).items():
                console.print(f"{b.id} {ref_id}: {reason}")
            if b.error:
                console.print(f"{b.id} error: {b.error}")


def _build_row(b) -> dict[str, Any]:
    fields = ("id", "map_name", "status", "total", "processed", "added", "skipped", "failed")
    return {f: getattr(b, f) for f in fields} | {
        "error": b.error,
        "created_at": b.created_at,
        "finished_at": b.finished_at,
    }


def map_camera(
    name: str,
    fov_x: Annotated[float | None, typer.Option(help="Horizontal field of view, degrees.")] = None,
    fov_y: Annotated[
        float | None, typer.Option(help="Vertical field of view; default: square pixels.")
    ] = None,
    fx: Annotated[float | None, typer.Option(help="Focal length in pixels (x).")] = None,
    fy: Annotated[float | None, typer.Option(help="Focal length in pixels (y).")] = None,
    cx: Annotated[float | None, typer.Option(help="Principal point x; default: centre.")] = None,
    cy: Annotated[float | None, typer.Option(help="Principal point y; default: centre.")] = None,
    width: Annotated[
        int | None, typer.Option(help="Image width the focal lengths are for.")
    ] = None,
    height: Annotated[
        int | None, typer.Option(help="Image height the focal lengths are for.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Forget the map's camera.")] = False,
) -> None:
    """Record the camera of a map's photos, so that queries are placed between references by
    geometry (no rebuild; workers pick it up). Without options, show it."""
    from pydantic import ValidationError

    from core.camera import Camera
    from core.errors import MapError
    from core.mapstore import MapStore

    store = MapStore(get_settings().maps_dir)
    fields = {
        "fov_x_deg": fov_x,
        "fov_y_deg": fov_y,
        "fx": fx,
        "fy": fy,
        "cx": cx,
        "cy": cy,
        "width": width,
        "height": height,
    }
    given = {k: v for k, v in fields.items() if v is not None}
    try:
        if clear or given:
            camera = None if clear else Camera(**given)
            store.set_camera(name, camera)
        camera = store.open(name).camera
    except ValidationError as exc:
        fail(f"bad camera: {'; '.join(e['msg'] for e in exc.errors())}")
    except MapError as exc:
        fail(str(exc))
    if camera is None:
        console.print(f"map {name!r} has no camera: queries are not placed by geometry")
    else:
        console.print(f"map {name!r} camera: {camera.model_dump_json(exclude_none=True)}")
        if given and not store.open(name).pair_frames.count():
            console.print(
                f"store its pair frames so that placement reads them: featureloc map geometry "
                f"{name}",
                highlight=False,
            )


def map_images(
    name: str,
    folder: Annotated[
        Path | None, typer.Argument(help="Folder of the map's reference photos (stem = id).")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Forget the folder.")] = False,
) -> None:
    """Record the folder of a map's reference photos (maps keep features, not photos), for
    `draw` and the HTTP API's figures. Without a folder, show it."""
    from core.errors import MapError
    from core.mapstore import MapStore

    store = MapStore(get_settings().maps_dir)
    try:
        if clear or folder is not None:
            if folder is not None and not folder.is_dir():
                fail(f"not a folder: {folder}")
            store.set_images_dir(name, None if clear else folder)
        current = store.images_dir(name)
    except MapError as exc:
        fail(str(exc))
    console.print(f"map {name!r} reference photos: {current or 'not recorded'}", highlight=False)


def map_list(as_json: JsonOption = False) -> None:
    """Maps with their extractor and size; maps found in the map store that the database does
    not know yet (a new database, a map copied in) are recorded first."""
    from db import queries

    db = database()
    register_found_maps()
    with db.session() as s:
        maps = queries.list_maps(s)
    if as_json:
        print_json_lines(
            {
                "name": m.name,
                "references": m.num_references,
                "extractor": m.extractor,
                "retriever": m.retriever,
                "updated_at": m.updated_at,
            }
            for m in maps
        )
        return
    rows = table("name", "references", "extractor", "retriever", "updated")
    for m in maps:
        rows.add_row(
            m.name,
            str(m.num_references),
            m.extractor.get("name", "?"),
            m.retriever.get("name", "?"),
            f"{m.updated_at:%Y-%m-%d %H:%M}",
        )
    console.print(rows)


def localise(
    images: Annotated[list[Path], typer.Argument(help="Photos to localise.")],
    map_name: Annotated[str, typer.Option("--map", help="Map to localise against.")],
    wait: Annotated[bool, typer.Option(help="Wait for the results and print them.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 300.0,
    option: Annotated[
        list[str] | None, typer.Option(help="Job option key=value (repeatable), e.g. top_k=20.")
    ] = None,
    options: Annotated[str | None, typer.Option(help="Job options as a JSON object.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per photo (the job with --wait).")
    ] = False,
    as_set: Annotated[
        bool,
        typer.Option(
            "--set", help="The photos (2 to 8) were taken at one spot: one job, one answer."
        ),
    ] = False,
    yaw: Annotated[
        list[float] | None,
        typer.Option(help="With --set: each photo's yaw in degrees from the first, in order."),
    ] = None,
) -> None:
    """Submit photos to the queue; with --wait, print where each was taken."""
    from core.angles import heading_text
    from core.errors import InputError
    from workers.client import Client, JobTimeout

    database()
    opts = parse_options(option, options)
    if yaw and not as_set:
        fail("--yaw needs --set")
    client = Client()
    try:
        if as_set:
            ids = [client.submit_set(list(images), map_name, opts, yaws=yaw or None)]
        else:
            ids = [client.submit(p, map_name, opts) for p in images]
    except (InputError, OSError) as exc:
        fail(str(exc))
    labels = [" + ".join(p.name for p in images)] if as_set else [p.name for p in images]
    if not wait:
        if as_json:
            print_json_lines(
                {"id": j, "image": label} for label, j in zip(labels, ids, strict=True)
            )
            return
        for label, j in zip(labels, ids, strict=True):
            console.print(f"{j}  {label}", highlight=False)
        return
    results = []
    for j in ids:
        try:
            results.append(client.wait(j, timeout))
        except JobTimeout as exc:
            fail(str(exc))
    if as_json:
        print_json_lines(
            {**r.to_dict(), "image": label} for label, r in zip(labels, results, strict=True)
        )
        return
    rows = table("job", "image", "status", "x", "y", "heading", "confidence", "inliers", "error")
    for label, r in zip(labels, results, strict=True):
        best = max((c.inliers for c in r.candidates), default=0)
        rows.add_row(
            r.id,
            label,
            r.status,
            fmt(r.x),
            fmt(r.y),
            heading_text(r.heading),
            fmt(r.confidence),
            str(best),
            r.error or "",
        )
    console.print(rows)


def jobs_list(
    map_name: Annotated[str | None, typer.Option("--map")] = None,
    status: Annotated[str | None, typer.Option(help="pending, running, done or failed.")] = None,
    since: SinceOption = None,
    limit: int = 50,
    as_json: JsonOption = False,
) -> None:
    """Recent jobs, newest first."""
    from workers.client import Client

    status = parse_status(status)
    database()
    jobs = Client().list_jobs(map_name, status, parse_since(since), limit)
    if as_json:
        print_json_lines(r.to_dict() for r in jobs)
        return
    rows = table("job", "map", "status", "x", "y", "confidence", "created", "error")
    for r in jobs:
        rows.add_row(
            r.id,
            r.map_name,
            r.status,
            fmt(r.x),
            fmt(r.y),
            fmt(r.confidence),
            f"{r.created_at:%Y-%m-%d %H:%M:%S}" if r.created_at else "-",
            (r.error or "")[:60],
        )
    console.print(rows)


def _provenance(r) -> str:
    """Which profile ran and whether the confidence is calibrated (workers.client.JobResult)."""
    note = f" ({r.profile_note})" if r.profile_note else ""
    cal = f"calibrated by fit {r.fit_id}" if r.calibrated else "UNCALIBRATED (raw score)"
    return f"profile {r.profile_used or '-'}{note}  confidence {cal}"


def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job's id, or any unique start of it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """One job with its estimate, timings and candidate table."""
    from core.angles import heading_text
    from workers.client import Client

    client = Client()
    r = client.result(resolve_job_id(database(), job_id))
    if as_json:
        print(json.dumps(r.to_dict(), indent=2))
        return
    console.print(f"[bold]job[/] {r.id}  map {r.map_name}  status [bold]{r.status}[/]")
    if r.error:
        console.print(f"[red]error:[/] {r.error}")
    if r.status == "done":
        verdict = "localised" if r.localised else "NOT localised"
        console.print(
            f"estimate ({fmt(r.x)}, {fmt(r.y)})  confidence {fmt(r.confidence)}  {verdict}"
            + (f"  heading {heading_text(r.heading)}" if r.heading is not None else "")
            + (f"  by {r.method}" if r.method else "")
            + (f"  map version {r.map_version}" if r.map_version else "")
        )
        console.print(_provenance(r), highlight=False)
    if r.timings:
        console.print("timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in r.timings.items()))
    if r.candidates:
        rows = table(
            "stage", "rank", "reference", "x", "y", "kp q/r", "matches", "inliers", "ratio", "score"
        )
        for c in r.candidates[:20]:
            rows.add_row(
                c.stage,
                str(c.retrieval_rank),
                c.reference_id,
                fmt(c.position[0]),
                fmt(c.position[1]),
                f"{c.query_keypoints}/{c.reference_keypoints}",
                str(c.tentative_matches),
                str(c.inliers),
                fmt(c.inlier_ratio),
                fmt(c.mean_match_score),
            )
        console.print(rows)


def jobs_recover(
    older_than: Annotated[
        float | None,
        typer.Option(
            help="Seconds without a heartbeat that make a running job stale; default: "
            "FEATURELOC_STALE_AFTER. A job whose worker still beats is left alone, even with 0."
        ),
    ] = None,
) -> None:
    """Re-queue jobs stuck running (worker lost) or pending without a message (broker lost).

    Safe at any time: a job that is done, or running on a live worker, is not run twice."""
    from kombu.exceptions import OperationalError as BrokerError

    from workers.celery_app import make_celery
    from workers.recovery import recover_jobs

    database()
    age = timedelta(seconds=older_than) if older_than is not None else None
    try:
        report = recover_jobs(get_settings(), age, make_celery(get_settings()), on_demand=True)
    except (BrokerError, OSError) as exc:
        fail(f"recovery failed, the broker or database is unavailable: {exc}")
    console.print(
        f"re-queued {len(report.requeued_running)} stale running job(s), re-sent "
        f"{len(report.resent_pending)} pending job(s) without a message; "
        f"{report.still_queued} pending job(s) still queued"
        + (
            f"; {report.still_running} running job(s) left alone: their worker still beats"
            if report.still_running
            else ""
        ),
        highlight=False,
    )


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(help="Processes; default: 1 per core, on a GPU too (workers/layout.py)."),
    ] = None,
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues.")] = None,
    loglevel: str = "info",
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
) -> None:
    """Run a Celery worker that holds the matcher and maps and serves jobs."""
    settings = get_settings()
    database()  # migrate once here, not in every worker process
    register_found_maps()
    from workers.layout import worker_layout
    from workers.settings import Settings
    from workers.settings import get_settings as cached_settings

    layout = worker_layout(
        settings.resolved_device(), concurrency, settings.torch_threads, settings.verify_threads
    )
    concurrency = layout.processes
    # The pool's processes read these (workers/runtime.settings).
    os.environ[Settings.env_name("torch_threads")] = str(layout.torch_threads)
    os.environ[Settings.env_name("verify_threads")] = str(layout.verify_threads)
    cached_settings.cache_clear()
    from workers.celery_app import make_celery

    celery = make_celery(get_settings())
    argv = [
        "worker",
        f"--concurrency={concurrency}",
        "--pool=prefork",
        f"--loglevel={loglevel}",
        f"--queues={queues or f'{settings.localise_queue},{settings.build_queue}'}",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    if not settings.broker_url.get_secret_value().startswith("filesystem://"):
        argv.append("--task-events")
    celery.worker_main(argv)


def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(help="Where the demo keeps its data; default: FEATURELOC_DATA_DIR/demo."),
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="Broker URL; default: an embedded file-system broker.")
    ] = None,
) -> None:
    """Generate a small scene, build a map, localise photos through a worker, print the error."""
    from cli.demo import demo_workdir, run_demo

    sys.exit(run_demo(demo_workdir(workdir), broker))


# Every command, in one place: (group, name, function).
COMMANDS: list[tuple[typer.Typer, str, Callable[..., Any]]] = [
    (db_app, "upgrade", db_upgrade),
    (map_app, "build", map_build),
    (map_app, "add", map_add_command),
    (map_app, "builds", map_builds),
    (map_app, "camera", map_camera),
    (map_app, "images", map_images),
    (map_app, "fine", map_fine),
    (map_app, "fit", map_fit),
    (map_app, "report", map_report_command),
    (map_app, "geometry", map_geometry),
    (map_app, "list", map_list),
    (map_app, "upgrade", map_upgrade),
    (map_app, "publish", map_publish),
    (app, "localise", localise),
    (jobs_app, "list", jobs_list),
    (jobs_app, "show", jobs_show),
    (jobs_app, "recover", jobs_recover),
    (jobs_app, "register", jobs_register_command),
    (jobs_app, "dead-letters", dead_letters_command),
    (app, "worker", worker),
    (app, "evaluate", evaluate_command),
    (app, "draw", draw_command),
    (app, "flower", flower_command),
    (app, "serve", serve_command),
    (apikey_app, "create", apikey_create),
    (apikey_app, "list", apikey_list),
    (apikey_app, "revoke", apikey_revoke),
    (jobs_app, "export", jobs_export_command),
    (app, "demo", demo),
]
for group, name, command in COMMANDS:
    group.command(name)(command)


if __name__ == "__main__":
    app()
