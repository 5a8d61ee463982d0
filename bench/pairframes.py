"""Placement with the map's stored pair frames (core/pairframes.py) against placement that
solves every pair per query, on the Getty map, in one run.

    python -m bench.pairframes --limit 150             # queries.csv, 1 thread
    python -m bench.pairframes --heldout 60            # the map's own held-out positions

With one thread: no placement (which finds the places, hence the references whose frames the
placed runs need); the frames of those references built as the map's geometry step builds
them (core/mapbuild.add_pair_frames; seconds and bytes per reference; the map's stored frames
removed first); then, interleaved query by query in alternating order, placement reading them,
placement solving every pair (the same map seen without its frames), and each ``--variant``
(JSON placement options, e.g. more pairs tried, now that a pair costs one PnP). Prints MAE,
median, within 1/5, the share placed, placement milliseconds, seconds and CPU seconds per
query, and how many estimates the stored frames left unchanged.
"""

from __future__ import annotations

import json
import shutil
import sys
import time

from bench.accuracy import MAP_NAME
from bench.common import machine_info, print_table, write_json
from bench.geometry import load_items, localise_all, open_map, run_arguments
from core.localiser import Localiser
from core.mapbuild import add_pair_frames
from core.pairframes import PAIRFRAMES_DIR, PairFrameSet
from tests.support.frames import solve_every_frame_as

CHUNK = 100
COLUMNS = ["run", "n", "MAE", "median", "<1", "<5", "placed", "posed", "place ms", "s/query",
           "cpu s/q"]  # fmt: skip


def build_frames(loc: Localiser, wanted: list[int]) -> dict:
    """The frames of ``wanted`` with their partners, ``CHUNK`` references a part."""
    seconds = cpu = 0.0
    for start in range(0, len(wanted), CHUNK):
        t0, c0 = time.perf_counter(), time.process_time()
        add_pair_frames(loc, wanted[start : start + CHUNK])
        seconds += time.perf_counter() - t0
        cpu += time.process_time() - c0
        print(f"  frames: {start + CHUNK}/{len(wanted)} references, {seconds:.0f} s", flush=True)
    size = sum(p.stat().st_size for p in (loc.map.path / PAIRFRAMES_DIR).glob("*"))
    n = max(len(wanted), 1)
    return {"built": len(wanted), "s_per_reference": seconds / n,
            "cpu_s_per_reference": cpu / n, "bytes_per_reference": size / n}  # fmt: skip


def same(a: dict, b: dict) -> int:
    """How many items got the same answer (method, and x, y within 1e-6) in both runs."""
    return sum(
        a[k][2] == b[k][2]
        and (a[k][0] is None) == (b[k][0] is None)
        and (a[k][0] is None or abs(a[k][0] - b[k][0]) + abs(a[k][1] - b[k][1]) < 1e-6)
        for k in a
    )


def main(argv: list[str] | None = None) -> int:
    ap = run_arguments(__doc__.split("\n\n")[0])
    ap.add_argument("--heldout", type=int, default=0, help="the map's own held-out positions")
    ap.add_argument("--variant", action="append", default=[], help="placement_conf as JSON")
    args = ap.parse_args(argv)
    store = open_map(args)
    if store is None:
        return 0
    shutil.rmtree(store.path(MAP_NAME) / PAIRFRAMES_DIR, ignore_errors=True)
    loc = Localiser(store.open(MAP_NAME))
    # The same map with no stored frames: every pair solved per query, as before them. It is
    # told the stored partner lists, so that it tries the same pairs in the same order
    # (placement tries the linked partners with a stored frame first).
    solving = Localiser(store.open(MAP_NAME))
    solving.map.__dict__["pair_frames"] = PairFrameSet(args.out / "no-frames", solving.map.index)
    solve_every_frame_as(solving, loc)
    items, title = load_items(loc, args.getty, args.queries, args.limit, args.heldout)
    loc.localise(items[0][1])  # warm-up
    solving.localise(items[0][1])
    ((row, _, supports),) = localise_all([(loc, {"placement": False})], items)
    rows = [["no placement", *row]]
    cost = build_frames(loc, sorted(supports))
    print(
        f"frames: {cost['built']} references at {cost['s_per_reference']:.3f} s each "
        f"({cost['cpu_s_per_reference']:.3f} CPU s), "
        f"{cost['bytes_per_reference'] / 1024:.1f} KiB per reference",
        flush=True,
    )
    variants = [json.loads(v) for v in args.variant]
    runs = [(loc, {}), (solving, {})] + [(loc, {"placement_conf": v}) for v in variants]
    results = localise_all(runs, items)
    names = ["pairs from stored frames", "pairs solved per query"]
    names += [f"stored, {v}" for v in args.variant]
    rows += [[name, *row] for name, (row, _, _) in zip(names, results, strict=True)]
    answers = {name: a for name, (_, a, _) in zip(names, results, strict=True)}
    print_table(f"placement on {title}, {args.threads} thread", COLUMNS, rows)
    unchanged = same(answers[names[0]], answers[names[1]])
    print(f"stored frames against solved: {unchanged} of {len(items)} answers the same")
    name = "pairframes-heldout.json" if args.heldout else "pairframes.json"
    path = write_json(args.out, name, {"machine": machine_info(), "cost": cost, "rows": rows,
                                       "unchanged": unchanged, "answers": answers})  # fmt: skip
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
