"""``featureloc demo``: the whole path on one machine with nothing installed by hand.

It renders a small synthetic scene (cli.synthetic), builds a map from its reference views,
starts a real Celery worker process on an embedded file-system broker (or the broker given),
submits the query views through the client, waits for the results in the SQLite database, and
prints each estimate with its error.
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cli.common import console, fmt, table


def demo_workdir(given: Path | None) -> Path:
    """``--workdir``, by default ``demo`` under the configured data dir (FEATURELOC_DATA_DIR)."""
    from workers.settings import get_settings

    return given if given is not None else get_settings().data_dir / "demo"


def run_demo(workdir: Path, broker: str | None) -> int:
    workdir = workdir.resolve()
    os.environ["FEATURELOC_DATA_DIR"] = str(workdir)
    os.environ["FEATURELOC_BROKER_URL"] = broker or "filesystem://"
    os.environ.setdefault("FEATURELOC_DATABASE_URL", f"sqlite:///{workdir / 'featureloc.db'}")
    from workers.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()

    from cli.synthetic import FOV_DEG, generate_dataset
    from core import defaults
    from core.camera import Camera
    from core.mapstore import MapStore
    from db.session import init_db
    from workers.client import Client
    from workers.maps import build_and_register

    scene = workdir / "scene"
    t0 = time.perf_counter()
    if not (scene / "queries.csv").is_file():
        console.print(f"rendering a synthetic scene into {scene} ...")
        generate_dataset(scene, seed=0)
    init_db(settings.database_url.get_secret_value())
    console.print(f"building map 'demo' ({defaults.EXTRACTOR}, {defaults.RETRIEVER}) ...")
    report = build_and_register(
        settings,
        "demo",
        scene / "images",
        scene / "references.csv",
        defaults.EXTRACTOR,
        retriever=defaults.RETRIEVER,
    )
    # The renderer's pinhole camera: lets the worker place queries between references.
    MapStore(settings.maps_dir).set_camera("demo", Camera(fov_x_deg=FOV_DEG))
    console.print(
        f"  {len(report.added)} references added, {len(report.skipped)} already there "
        f"({time.perf_counter() - t0:.1f} s)"
    )

    console.print(f"starting a worker on {_redacted(settings.broker_url.get_secret_value())} ...")
    log_path = workdir / "worker.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "worker",
                "--concurrency",
                "1",
                "--loglevel",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
    try:
        return _localise_queries(Client(settings), scene)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        console.print(f"worker stopped (log: {log_path})")


def _localise_queries(client, scene: Path) -> int:
    with (scene / "queries.csv").open() as f:
        rows = list(csv.DictReader(f))
    t0 = time.perf_counter()
    ids = [client.submit(scene / "images" / f"{r['id']}.jpg", "demo") for r in rows]
    console.print(f"submitted {len(ids)} query photos; waiting for the worker ...")
    results = client.wait_many(ids, timeout=600)
    elapsed = time.perf_counter() - t0

    rows_out = table(
        "query", "truth", "estimate", "error", "confidence", "inliers", "method", "status"
    )
    errors = []
    for row, res in zip(rows, results, strict=True):
        tx, ty = float(row["x"]), float(row["y"])
        err = None
        if res.x is not None:
            err = abs(res.x - tx) + abs(res.y - ty)
            errors.append(err)
        best = max((c.inliers for c in res.candidates), default=0)
        rows_out.add_row(
            row["id"],
            f"({tx:.1f}, {ty:.1f})",
            f"({fmt(res.x, 1)}, {fmt(res.y, 1)})",
            fmt(err),
            fmt(res.confidence),
            str(best),
            res.method or "",
            res.error or res.status,
        )
    console.print(rows_out)
    done = sum(r.status == "done" for r in results)
    if errors:
        console.print(
            f"{done}/{len(rows)} done, {len(errors)} localised; mean error |dx|+|dy| "
            f"{statistics.mean(errors):.2f}, median {statistics.median(errors):.2f}; "
            f"{elapsed / len(rows):.2f} s per query through the queue"
        )
    return 0 if done == len(rows) else 1


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    if url.startswith("filesystem://"):
        return "the embedded file-system broker"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
