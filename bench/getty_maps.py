"""Build (or reuse) the Getty benchmark maps, recording how long the build took.

Used by bench/accuracy.py; maps live under ``<out>/maps`` (git-ignored), with the build timings
in ``<out>/maps/<name>.build.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from core import defaults
from core.camera import Camera
from core.heldout import fit_map
from core.mapbuild import RefEntry, add_fine_features, build_map, read_positions_csv
from core.mapstore import FINE_SET, MapStore, Reference, write_training
from core.registry import create_extractor
from tests.support.paths import GETTY

# From the set's README: 680x490 pinhole, 73.7 x 53.1 degrees, principal point at the centre.
GETTY_CAMERA = Camera(fov_x_deg=73.7, fov_y_deg=53.1)


def ensure_map(
    out: Path,
    name: str,
    extractor: str,
    retriever: str,
    retriever_conf: dict | None = None,
    extractor_conf: dict | None = None,
    getty: Path = GETTY,
    log=print,
    device: str = "cpu",
) -> tuple[MapStore, dict]:
    """The map ``name`` built from Getty's references.csv; built once, then reused."""
    store = MapStore(out / "maps")
    stats_path = out / "maps" / f"{name}.build.json"
    if store.exists(name) and stats_path.is_file():
        store.set_camera(name, GETTY_CAMERA)  # maps cached before cameras were recorded
        return store, json.loads(stats_path.read_text())
    entries = read_positions_csv(getty / "references.csv", getty / "images")
    log(f"building map {name!r}: {len(entries)} references with {extractor} + {retriever} ...")
    done = [0]

    def progress(_rid: str) -> None:
        done[0] += 1
        if done[0] % 250 == 0:
            log(f"  {done[0]}/{len(entries)}")

    t0 = time.perf_counter()
    report = build_map(
        store,
        name,
        entries,
        extractor_name=extractor,
        extractor_conf=extractor_conf,
        retriever_name=retriever,
        retriever_conf=retriever_conf,
        on_done=progress,
        device=device,
    )
    seconds = time.perf_counter() - t0
    store.set_camera(name, GETTY_CAMERA)
    stats = {
        "references": len(entries),
        "added": len(report.added),
        "failed": len(report.failed),
        "seconds": seconds,
        "ms_per_reference": 1000 * seconds / max(len(report.added), 1),
        "extractor": extractor,
        "retriever": retriever,
        "device": device,
    }
    stats_path.write_text(json.dumps(stats, indent=2))
    return store, stats


def getty_image(getty: Path = GETTY) -> Callable[[str], Path]:
    """Reference or query id -> its photo."""
    return lambda rid: getty / "images" / f"{rid}.jpg"


def ensure_fine_and_training(
    store: MapStore, name: str, image_of: Callable[[str], Path], log=print, device: str = "cpu"
) -> dict:
    """The map's fine feature set and its held-out training record (core/heldout.py), made
    once; returns what they cost and what the fit found.

    The fine set is filled as the held-out fit and the queries need it (``fine_source``), not
    for all references up front: the features are the same either way (one image each), so
    the figures are those of a full build. Its build cost per reference is measured on
    ``SAMPLE`` references that do not have it yet.
    """
    ident = create_extractor(defaults.FINE_EXTRACTOR, defaults.FINE_EXTRACTOR_CONF).identity()
    store.set_fine_extractor(name, ident)
    ref_map = store.open(name)
    fine_set = ref_map.feature_set(FINE_SET)
    todo = [i for i in range(len(ref_map)) if not fine_set.has(i)][:SAMPLE]
    out: dict = {"extractor": ident}
    if todo:
        entries = [
            RefEntry(Reference(ref_map.ids[i], *map(float, ref_map.positions[i])),
                     image_of(ref_map.ids[i]))
            for i in todo
        ]  # fmt: skip
        t0 = time.perf_counter()
        add_fine_features(store, name, entries, defaults.FINE_EXTRACTOR,
                          defaults.FINE_EXTRACTOR_CONF, device=device)  # fmt: skip
        out["ms_per_reference"] = 1000 * (time.perf_counter() - t0) / len(entries)
        out["measured_on"] = len(entries)
        log(f"fine set ({ident['name']}): {out['ms_per_reference']:.0f} ms/reference "
            f"(measured on {len(entries)})")  # fmt: skip
    training = ref_map.training
    if not training:
        log(f"fitting on {defaults.HELDOUT_QUERIES} held-out positions of {name!r} ...")
        t0 = time.perf_counter()
        training = fit_map(store, name, image_of, device=device) or {}
        training["fit_seconds"] = time.perf_counter() - t0
        write_training(store.path(name), training)
    held = training["heldout"]
    below = training.get("escalate_below")  # None: no fine part (fine_missing says why)
    log(
        f"training: {training['heldout_queries']} held-out positions; escalate below "
        f"{'-' if below is None else f'{below:.3f}'} ({held['escalated']:.0%} of them); "
        f"held-out MAE "
        f"{held['coarse_mae']:.2f} coarse -> {held['mae']:.2f} cascade, median "
        f"{held['median']:.2f}, within 5 {held['within_5']:.0%}"
    )
    out["training"] = training
    return out


SAMPLE = 30
