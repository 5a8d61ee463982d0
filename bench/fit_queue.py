"""The map's fit through the build queue on the Getty map (issue 26): what a held-out position
costs end to end when a real worker runs ``featureloc.fit_map`` in its steps of
``fit_step_positions`` (8) positions, against what localising it costs.

Reproduce (from the repository root, venv active, Redis on 127.0.0.1:6379; the first run builds
the coarse map, as bench/accuracy.py does):

    python -m bench.fit_queue --out bench/out --positions 160

Copies the map (its parts, retrieval state and camera; no held-out rows, no fit) into a data
folder of its own, starts one ``featureloc worker`` on queues of its own (SQLite), sends the fit
of ``--positions`` held-out positions (one view each) and waits for its ``training.json``. Prints
the wall seconds per position, the rows' own seconds (localising one view with its position
hidden, photo decoding included: core/heldout.py), the difference (the steps' overhead: task
hand-offs and, before the fit kept its localiser between steps, loading the models and the map),
and how many times the worker loaded the map (its log). ``--checkout DIR`` runs the worker from
another checkout (e.g. ``git archive REV | tar -x -C DIR``) for a side-by-side figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from bench.accuracy import MAP_NAME
from bench.getty_maps import GETTY, ensure_map
from core import defaults
from core.heldout import GENERATIONS_FILE, HELDOUT_FILE, read_rows
from core.mapstore import TRAINING_FILE, MapStore
from core.setfit import SETS_FILE
from tests.support.process import WorkerProcess
from workers.celery_app import make_celery
from workers.fit import send_fit
from workers.settings import Settings

# What a map's fit writes (and a copy must start without): rows, the fit, the generations.
FIT_STATE = (HELDOUT_FILE, TRAINING_FILE, GENERATIONS_FILE, SETS_FILE)


def copy_map(store: MapStore, name: str, maps_dir: Path, images: Path) -> MapStore:
    """The map without its fit state, in ``maps_dir``, with its photo folder recorded."""
    target = maps_dir / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(store.path(name), target, ignore=shutil.ignore_patterns(*FIT_STATE))
    copy = MapStore(maps_dir)
    copy.set_images_dir(name, images)
    return copy


def run(args: argparse.Namespace, store: MapStore, checkout: Path) -> dict:
    data = args.out / f"fit-queue-{checkout.name or 'here'}"
    shutil.rmtree(data, ignore_errors=True)
    copy = copy_map(store, MAP_NAME, data / "maps", args.getty / "images")
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "FEATURELOC_DATA_DIR": str(data),
        "FEATURELOC_BROKER_URL": args.redis,
        "FEATURELOC_LOCALISE_QUEUE": f"bench-{tag}-localise",
        "FEATURELOC_BUILD_QUEUE": f"bench-{tag}-build",
        "FEATURELOC_TORCH_THREADS": str(args.threads),
    }
    settings = Settings(
        data_dir=data,
        broker_url=args.redis,
        localise_queue=env["FEATURELOC_LOCALISE_QUEUE"],
        build_queue=env["FEATURELOC_BUILD_QUEUE"],
    )
    worker = WorkerProcess(env, data / "worker.log", cwd=checkout.resolve()).start(timeout=180)
    training = copy.path(MAP_NAME) / TRAINING_FILE
    try:
        t0 = time.perf_counter()
        send_fit(make_celery(settings), settings, MAP_NAME, args.positions)
        while not training.is_file():
            if worker.proc.poll() is not None:
                sys.exit(f"the worker exited:\n{worker.log()[-3000:]}")
            time.sleep(0.5)
        wall = time.perf_counter() - t0
    finally:
        worker.stop()
    rows = read_rows(copy.path(MAP_NAME) / HELDOUT_FILE)
    localising = sum(r.seconds for r in rows)
    return {
        "checkout": str(checkout),
        "positions": len(rows),
        "wall_s": round(wall, 1),
        "per_position_s": round(wall / len(rows), 3),
        "localising_per_position_s": round(localising / len(rows), 3),
        "overhead_per_position_s": round((wall - localising) / len(rows), 3),
        "map_loads": worker.log().count(f"loaded map '{MAP_NAME}'"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--getty", type=Path, default=GETTY)
    parser.add_argument("--positions", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--checkout", type=Path, action="append", default=[],
                        help="run the worker from this checkout too (repeatable)")  # fmt: skip
    args = parser.parse_args()
    store, _ = ensure_map(args.out, MAP_NAME, defaults.EXTRACTOR, defaults.RETRIEVER,
                          getty=args.getty)  # fmt: skip
    results = [run(args, store, c) for c in [Path("."), *args.checkout]]
    for r in results:
        print(json.dumps(r))
    (args.out / "fit_queue.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
