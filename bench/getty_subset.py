"""A smaller Getty set: one region of the site, for a machine that cannot hold all 6000 photos.

Keeps the ``--positions`` reference positions nearest to a centre (default: the median of the
query positions), every view of each, and the queries whose true position lies inside that
region (at least ``--margin`` from its edge, so each still has neighbours in the map), with all
their views. Writes ``references.csv``, ``queries.csv``, ``queries_allviews.csv`` and copies of
the photos to ``--out`` in the layout ``bench/accuracy.py --getty`` reads. The photos have no
licence for redistribution: write the subset to a git-ignored folder and delete it after use.

    python -m bench.getty_subset --positions 120 --out .gpu/getty
    python -m bench.accuracy --getty .gpu/getty --out /tmp/gpu-bench --configs default,accurate
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np

from tests.support.paths import GETTY


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "x", "y"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("id", "x", "y")} for r in rows)


def region_subset(
    refs: list[dict[str, str]], queries: list[dict[str, str]], positions: int, margin: float
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The references at the ``positions`` positions nearest the queries' median, and the
    queries inside that disc by at least ``margin``."""
    q_xy = np.array([(float(q["x"]), float(q["y"])) for q in queries])
    centre = np.median(q_xy, axis=0)
    keys = sorted({(float(r["x"]), float(r["y"])) for r in refs})
    dist = np.hypot(*(np.array(keys) - centre).T)
    order = np.argsort(dist, kind="stable")[:positions]
    kept = {keys[i] for i in order}
    radius = float(dist[order[-1]])
    sub_refs = [r for r in refs if (float(r["x"]), float(r["y"])) in kept]
    inside = np.hypot(*(q_xy - centre).T) <= radius - margin
    return sub_refs, [q for q, keep in zip(queries, inside, strict=True) if keep]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--getty", type=Path, default=GETTY)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--positions", type=int, default=120, help="reference positions kept")
    ap.add_argument("--margin", type=float, default=5.0, help="queries this far inside")
    args = ap.parse_args(argv)
    refs, queries = region_subset(
        _rows(args.getty / "references.csv"),
        _rows(args.getty / "queries.csv"),
        args.positions,
        args.margin,
    )
    inside = {(q["x"], q["y"]) for q in queries}
    views = [q for q in _rows(args.getty / "queries_allviews.csv") if (q["x"], q["y"]) in inside]
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    _write(args.out / "references.csv", refs)
    _write(args.out / "queries.csv", queries)
    _write(args.out / "queries_allviews.csv", views)
    for r in refs + views:
        shutil.copyfile(
            args.getty / "images" / f"{r['id']}.jpg", args.out / "images" / f"{r['id']}.jpg"
        )
    size = sum(p.stat().st_size for p in (args.out / "images").iterdir()) / 2**20
    print(
        f"{len(refs)} references, {len(queries)} queries ({len(views)} views), "
        f"{size:.1f} MiB -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
