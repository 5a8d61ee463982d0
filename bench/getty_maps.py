"""Build (or reuse) the Getty benchmark maps, recording how long the build took.

Used by bench/accuracy.py; maps live under ``<out>/maps`` (git-ignored), with the build timings
in ``<out>/maps/<name>.build.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from core.camera import Camera
from core.mapbuild import build_map, read_positions_csv
from core.mapstore import MapStore
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
    }
    stats_path.write_text(json.dumps(stats, indent=2))
    return store, stats
