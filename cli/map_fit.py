"""`featureloc map fine` and `featureloc map fit`: the fine feature set of a map, and what the
map fits on its own held-out positions (core/heldout.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, fail, get_settings, model_device
from core.errors import InputError


def _photos(name: str, images: Path | None):
    """The map, its store and reference id -> photo (from --images or the recorded folder)."""
    from core.mapbuild import map_photos
    from core.mapstore import MapStore

    store = MapStore(get_settings().maps_dir)
    folder = images or store.images_dir(name)
    if folder is None:
        fail(f"map {name!r} records no photo folder: pass --images (or `featureloc map images`)")
    ref_map = store.open(name)
    return store, ref_map, map_photos(ref_map.ids, folder)


def map_fine(
    name: str,
    images: Annotated[
        Path | None, typer.Option(help="Folder of the reference photos; default: the recorded")
    ] = None,
) -> None:
    """Extract the fine feature set (ALIKED) of every reference that lacks it; the accurate
    profile re-verifies doubtful answers with it (core/finestage.py)."""
    from cli.map_build import progress_bar
    from core import defaults
    from core.mapbuild import RefEntry, add_fine_features
    from core.mapstore import Reference

    try:
        store, ref_map, photo = _photos(name, images)
        entries = [
            RefEntry(Reference(rid, float(x), float(y)), photo(rid))
            for rid, (x, y) in zip(ref_map.ids, ref_map.positions, strict=True)
        ]
        with progress_bar() as bar:
            task = bar.add_task("fine features", total=len(entries))
            report = add_fine_features(
                store, name, entries, defaults.FINE_EXTRACTOR, defaults.FINE_EXTRACTOR_CONF,
                device=model_device(),
                on_done=lambda _rid: bar.advance(task),
            )  # fmt: skip
    except InputError as exc:
        fail(str(exc))
    console.print(
        f"map {name!r}: fine features added for {len(report.added)}, "
        f"{len(report.skipped)} had them, {len(report.failed)} failed",
        highlight=False,
    )
    for rid, reason in list(report.failed.items())[:20]:
        console.print(f"  {rid}: {reason}", highlight=False)
    _publish(name)
    if report.added:
        console.print(
            f"the accurate profile uses its default threshold and leaves fine confidences "
            f"uncalibrated until the map is fitted again: `featureloc map fit {name}`",
            highlight=False,
        )


def _publish(name: str) -> None:
    """With ``map_backend=s3``, publish the map so running workers switch to it (between jobs);
    with a directory backend they see the change on disk."""
    from botocore.exceptions import BotoCoreError, ClientError

    from core.mapstore import MapStore
    from workers.maps import publish_if_configured

    settings = get_settings()
    try:
        version = publish_if_configured(settings, MapStore(settings.maps_dir), name)
    except (BotoCoreError, ClientError, ValueError) as exc:
        fail(f"could not publish map {name!r}: {exc}; publish it with `featureloc map publish`")
    if version is not None:
        console.print(f"map {name!r} published as version {version}", highlight=False)


def map_fit(
    name: str,
    images: Annotated[
        Path | None, typer.Option(help="Folder of the reference photos; default: the recorded")
    ] = None,
    queries: Annotated[
        int | None,
        typer.Option(help="Held-out positions to localise; default: core/defaults.py's."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Which positions (reproducible).")] = 0,
    every_position: Annotated[
        bool,
        typer.Option(
            "--every-position", help="Measure every reference position: what `map report` shows."
        ),
    ] = False,
    views: Annotated[int, typer.Option(help="Views measured per position.")] = 1,
    via_queue: Annotated[
        bool, typer.Option("--via-queue", help="Queue it on the build queue's workers.")
    ] = False,
    sets: Annotated[
        int,
        typer.Option(
            help="Also measure photo sets at this many held-out positions (every subset of "
            "2-5 of their views) and fit the sets' confidence curve (core/setfit.py)."
        ),
    ] = 0,
) -> None:
    """Localise views of held-out positions against the rest of the map and fit the escalation
    rule, the confidence calibration and the "not localised" threshold on them (on every
    position measured so far). Resumable: re-run to continue an interrupted fit."""
    from core import defaults
    from core.heldout import fit_map

    if every_position and queries is not None:
        fail("--every-position and --queries: give one")
    count = None if every_position else (queries or defaults.HELDOUT_QUERIES)
    if (count is not None and count < 1) or views < 1:
        fail("--queries and --views must be at least 1")
    if sets < 0:
        fail("--sets must be 0 (none) or more")
    if via_queue and sets:
        fail("--sets runs here, not on the queue: run it without --via-queue")
    if via_queue:
        _queue_fit(name, count, views)
        return
    try:
        store, _, photo = _photos(name, images)
        record = fit_map(
            store, name, photo, queries=count, seed=seed, views=views,
            device=model_device(),
            on_done=lambda r: console.print(
                f"  {r.reference_id}: {r.seconds:.1f} s", highlight=False
            ),
        )  # fmt: skip
    except InputError as exc:
        fail(str(exc))
    assert record is not None  # no batch limit: the fit ran to the end
    for line in fit_report(name, record):
        console.print(line, highlight=False)
    if sets:
        _fit_sets(store, name, photo, sets, seed)
    _publish(name)


def _fit_sets(store, name: str, photo, positions: int, seed: int) -> None:
    from core.localiser import Localiser
    from core.setfit import fit_sets

    # A localiser of the map as just fitted: the sets' photos go through its new fit.
    loc = Localiser(store.open(name), model_device(), fine_source=photo)
    try:
        figures = fit_sets(
            store, name, photo, positions, loc, seed=seed,
            on_done=lambda r: console.print(
                f"  set at ({r.position[0]:.1f}, {r.position[1]:.1f}): "
                f"{len(r.reference_ids)} views, {len(r.subsets)} subsets", highlight=False
            ),
        )  # fmt: skip
    except (InputError, ValueError) as exc:
        fail(str(exc))
    sizes = ", ".join(
        f"{k} views MAE {v['mae']:.2f} ({v['within_5']:.0%} within 5)"
        for k, v in figures["by_size"].items()
    )
    console.print(
        f"map {name!r}: set confidence fitted on {figures['subsets']} sets at "
        f"{figures['positions']} positions: {sizes}",
        highlight=False,
    )


def _queue_fit(name: str, queries: int | None, views: int) -> None:
    from core.mapstore import MapStore
    from workers.celery_app import make_celery
    from workers.fit import send_fit

    settings = get_settings()
    store = MapStore(settings.maps_dir)
    if not store.exists(name):
        fail(f"unknown map {name!r}")
    if store.images_dir(name) is None:
        fail(f"map {name!r} records no photo folder: the workers need one (featureloc map images)")
    send_fit(make_celery(settings), settings, name, queries, views)
    what = "every position" if queries is None else f"{queries} positions"
    console.print(f"map {name!r}: fit on {what} queued on {settings.build_queue!r}")


def fit_report(name: str, record: dict) -> list[str]:
    """What a fit did and, where its fine part is missing, what the user should do."""
    held, run = record["heldout"], record.get("last_run", {})
    lines = [
        f"map {name!r}: {record['heldout_queries']} held-out positions ({run.get('measured', 0)} "
        f"measured now, {run.get('fine_remeasured', 0)} measured again for the fine stage)",
        f"  MAE {held['mae']:.2f}, median {held['median']:.2f}, within 5 {held['within_5']:.0%}",
    ]
    if run.get("remeasured_near_new"):
        lines.append(f"  {run['remeasured_near_new']} measured again: new references near them")
    missing = record.get("fine_missing")
    if missing is None:
        lines.append(
            f"  fine stage fitted on {held['fine_run']} positions: escalate below "
            f"{record['escalate_below']:.3f} ({held['escalated']:.0%}); MAE coarse "
            f"{held['coarse_mae']:.2f} -> {held['mae']:.2f}"
        )
    elif record.get("fine_extractor") is None:
        lines.append(
            f"  fine stage not fitted: {missing}; the accurate profile answers as fast. Add "
            f"one with `featureloc map fine {name}`, then run `featureloc map fit {name}` "
            "again: it measures the fine stage on the positions done"
        )
    else:
        lines.append(
            f"  fine stage not fitted: {missing}; the accurate profile uses its default "
            "threshold and leaves fine confidences uncalibrated"
        )
    return lines
