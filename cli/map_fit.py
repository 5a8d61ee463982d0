"""`featureloc map fine` and `featureloc map fit`: the fine feature set of a map, and what the
map fits on its own held-out positions (core/heldout.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, fail, get_settings
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
                device=get_settings().resolved_device(),
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
) -> None:
    """Localise views of held-out positions against the rest of the map and fit the escalation
    rule, the confidence calibration and the "not localised" threshold on them. Resumable:
    re-run to continue an interrupted fit."""
    from core import defaults
    from core.heldout import fit_map

    queries = defaults.HELDOUT_QUERIES if queries is None else queries
    if queries < 1:
        fail("--queries must be at least 1")
    try:
        store, _, photo = _photos(name, images)
        record = fit_map(
            store, name, photo, queries=queries, seed=seed,
            device=get_settings().resolved_device(),
            on_done=lambda r: console.print(
                f"  {r.reference_id}: {r.seconds:.1f} s", highlight=False
            ),
        )  # fmt: skip
    except InputError as exc:
        fail(str(exc))
    assert record is not None  # no batch limit: the fit ran to the end
    held = record["heldout"]
    console.print(
        f"map {name!r}: {record['heldout_queries']} held-out positions; escalate below "
        f"{record['escalate_below']:.3f} ({held['escalated']:.0%}); MAE coarse "
        f"{held['coarse_mae']:.2f} -> {held['mae']:.2f}, median {held['median']:.2f}, within 5 "
        f"{held['within_5']:.0%}",
        highlight=False,
    )
