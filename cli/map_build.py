"""``featureloc map build --via-queue`` and ``featureloc map add``: builds in chunks on workers.

In-process (the default) the CLI extracts every photo itself. With ``--via-queue`` it queues one
task per chunk on the build queue, and a progress bar follows the build's row in the database.
Workers open the photos by the paths given here, so those must be on storage the workers share.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import console, database, fail, get_settings, model_device
from core.errors import InputError, MapError

if TYPE_CHECKING:
    from rich.progress import Progress

    from db.models import MapBuild
    from workers.settings import Settings

FINISHED = ("done", "failed")


def progress_bar() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def build_in_process(
    name: str,
    images: Path,
    positions: Path,
    extractor: str,
    retriever: str,
) -> None:
    from workers.maps import build_and_register

    model_device()  # this process extracts: its threads as the workers'
    with progress_bar() as progress:
        task = progress.add_task(f"map {name}", total=None)
        try:
            report = build_and_register(
                get_settings(),
                name,
                images,
                positions,
                extractor,
                retriever=retriever,
                on_start=lambda n: progress.update(task, total=n),
                on_done=lambda _id: progress.advance(task),
            )
        except InputError as exc:
            fail(str(exc))
    console.print(
        f"map [bold]{name}[/]: {len(report.added)} added, {len(report.skipped)} already there, "
        f"{len(report.failed)} failed"
    )
    _print_failures(report.failed)


def build_via_queue(
    name: str,
    images: Path,
    positions: Path,
    extractor: str | None,
    retriever: str | None,
    chunk_size: int,
    restart: bool = False,
    wait: bool = True,
    timeout: float = 24 * 3600,
) -> None:
    """Queue the chunks, then follow the build until it is done (or just print its id)."""
    from kombu.exceptions import OperationalError as BrokerError

    from workers.build import submit_build
    from workers.celery_app import make_celery

    settings = get_settings()
    try:
        plan = submit_build(
            settings,
            make_celery(settings),
            name,
            images,
            positions,
            extractor=extractor,
            retriever=retriever,
            chunk_size=chunk_size,
            restart=restart,
        )
    except (InputError, MapError) as exc:
        fail(str(exc))
    except (BrokerError, OSError) as exc:
        fail(f"could not queue the build (is the broker up?): {exc}; rerun with --restart")
    console.print(
        f"build {plan.build_id}: {plan.total} photos, {plan.skipped} already in map "
        f"{name!r}, {plan.chunks} chunk(s) queued on {settings.build_queue!r}"
    )
    if wait:
        follow_build(plan.build_id, timeout)


def _progress_of(settings: Settings, build_id: str) -> MapBuild:
    from workers.build import build_progress

    build = build_progress(settings, build_id)
    if build is None:
        fail(f"unknown build {build_id}")
    return build


def follow_build(build_id: str, timeout: float, poll: float = 0.5) -> None:
    settings = get_settings()
    deadline = time.monotonic() + timeout
    with progress_bar() as progress:
        build = _progress_of(settings, build_id)
        task = progress.add_task(f"map {build.map_name}", total=build.total)
        while True:
            build = _progress_of(settings, build_id)
            progress.update(
                task,
                completed=build.processed,
                description=f"map {build.map_name} ({build.status})",
            )
            if build.status in FINISHED:
                break
            if time.monotonic() > deadline:
                fail(f"build {build_id} still {build.status} after {timeout:.0f} s")
            time.sleep(poll)
    console.print(
        f"map [bold]{build.map_name}[/]: {build.added} added, {build.skipped} already there, "
        f"{len(build.failed)} failed; build {build.status}"
    )
    _print_failures(build.failed)
    if build.error:
        fail(build.error)


def _print_failures(failed: dict[str, str], shown: int = 20) -> None:
    for rid, reason in list(failed.items())[:shown]:
        console.print(f"  [red]failed[/] {rid}: {reason}")
    if len(failed) > shown:
        console.print(f"  ... and {len(failed) - shown} more")


def map_add_command(
    name: str,
    images: Annotated[Path, typer.Option(help="Folder of the new reference photos.")],
    positions: Annotated[Path, typer.Option(help="CSV with columns id,x,y (id = file stem).")],
    via_queue: Annotated[
        bool, typer.Option("--via-queue", help="Extract on workers, one task per chunk.")
    ] = False,
    chunk_size: Annotated[int, typer.Option(help="Photos per task with --via-queue.")] = 50,
) -> None:
    """Add photos to an existing map (no rebuild: only new photos are extracted)."""
    from core.mapstore import MapStore, read_manifest

    database()
    store = MapStore(get_settings().maps_dir)
    try:
        if not store.exists(name):
            raise MapError(f"unknown map {name!r}: create it with `featureloc map build`")
        manifest = read_manifest(store.path(name))
    except MapError as exc:
        fail(str(exc))
    if via_queue:
        build_via_queue(name, images, positions, None, None, chunk_size)
    else:
        _add_in_process(name, images, positions, manifest)


def _add_in_process(name: str, images: Path, positions: Path, manifest: dict) -> None:
    """Extract only the photos the map lacks, with the map's own extractor and settings."""
    from core.mapbuild import add_entries, read_positions_csv
    from core.mapstore import MapStore
    from core.registry import create_extractor
    from workers.maps import image_limits, register_map

    settings = get_settings()
    ext = manifest["extractor"]
    try:
        entries = read_positions_csv(positions, images)
        extractor = create_extractor(ext["name"], ext.get("conf"), model_device())
    except InputError as exc:
        fail(str(exc))
    with progress_bar() as progress:
        task = progress.add_task(f"map {name}", total=len(entries))
        report = add_entries(
            MapStore(settings.maps_dir).path(name),
            entries,
            extractor,
            image_limits(settings),
            on_done=lambda _id: progress.advance(task),
        )
        progress.update(task, completed=len(entries))
    register_map(settings, name)  # fits retrieval over old and new references
    console.print(
        f"map [bold]{name}[/]: {len(report.added)} added, {len(report.skipped)} already there, "
        f"{len(report.failed)} failed"
    )
    _print_failures(report.failed)
