"""Seconds per query of one or two checkouts of featureloc side by side, in-process, on one map.

Each checkout (``--checkouts``: source folders, default this one) runs in its own Python process
with that folder first on its path, the map loaded once; the queries go to the processes in
turn, one at a time and in alternating order, so a busy shared machine slows both alike. Per
checkout: wall seconds per query (mean, median), the seconds per stage (the results' timings),
host CPU per query (``process_time``) split into the model forward passes (CPU time of the
extractor's ``extract`` calls, measured in that thread) and the rest, and the process's resident
memory after loading and at the end. With two checkouts it counts the queries whose estimates
are equal (localised alike, x and y within 1e-6, confidence within 1e-9) and lists the others.

Today's code side by side with a branch (``git archive`` leaves the repository untouched):

    git archive main | tar -x -C /tmp/base
    python -m bench.speed_ab --maps bench/out/maps --map getty-xfeat \\
        --checkouts /tmp/base,. --limit 22 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import DEFAULT_OUT, GETTY, machine_info, print_table, write_json

CHILD = r"""
import json, sys, time
import cv2, torch
maps, name, device, threads, options = sys.argv[1:6]
torch.set_num_threads(int(threads))
cv2.setNumThreads(int(threads))
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser
from core.mapstore import MapStore

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

loc = Localiser(MapStore(maps).open(name), device=device)
opts = LocaliseOptions.parse(json.loads(options))
model = [0.0]
extract = loc.extractor.extract

def timed(image):
    t = time.thread_time()
    try:
        return extract(image)
    finally:
        model[0] += time.thread_time() - t

loc.extractor.extract = timed
print(json.dumps({"rss_mib": rss_mib()}), flush=True)
for line in sys.stdin:
    image = read_image(line.strip())
    model[0] = 0.0
    c0, t0 = time.process_time(), time.perf_counter()
    r = loc.localise(image, opts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    e = r.estimate
    print(json.dumps({
        "wall": wall, "cpu": cpu, "model_cpu": model[0], "timings": r.timings,
        "x": e.x, "y": e.y, "localised": e.localised, "confidence": e.confidence,
        "method": e.method, "rss_mib": rss_mib(),
    }), flush=True)
"""


class Checkout:
    """One checkout's localiser process: a query path in, a JSON line out."""

    def __init__(self, source: Path, args) -> None:
        self.source = source
        env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": str(args.threads)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(args.maps), args.map, args.device]
            + [str(args.threads), json.dumps(args.options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=source,
        )
        self.loaded_rss = self._read()["rss_mib"]
        self.results: list[dict] = []

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the process of {self.source} ended (see its error above)")
        return json.loads(line)

    def run(self, photo: Path) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{photo}\n")
        self.proc.stdin.flush()
        self.results.append(self._read())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def summary(c: Checkout) -> dict:
    rs = c.results
    n = len(rs)
    stages = sorted({k for r in rs for k in r["timings"]})
    return {
        "checkout": str(c.source),
        "queries": n,
        "s_per_query": sum(r["wall"] for r in rs) / n,
        "s_median": statistics.median(r["wall"] for r in rs),
        "stage_seconds": {k: sum(r["timings"].get(k, 0.0) for r in rs) / n for k in stages},
        "cpu_ms": 1000 * sum(r["cpu"] for r in rs) / n,
        "model_cpu_ms": 1000 * sum(r["model_cpu"] for r in rs) / n,
        "rest_cpu_ms": 1000 * sum(r["cpu"] - r["model_cpu"] for r in rs) / n,
        "rss_loaded_mib": c.loaded_rss,
        "rss_end_mib": rs[-1]["rss_mib"],
    }


def same_estimate(a: dict, b: dict) -> bool:
    if a["localised"] != b["localised"] or abs(a["confidence"] - b["confidence"]) > 1e-9:
        return False
    if a["x"] is None or b["x"] is None:
        return a["x"] is None and b["x"] is None
    return abs(a["x"] - b["x"]) <= 1e-6 and abs(a["y"] - b["y"]) <= 1e-6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--maps", type=Path, default=DEFAULT_OUT / "maps", help="maps folder")
    p.add_argument("--map", default="getty-xfeat")
    p.add_argument("--getty", type=Path, default=GETTY, help="queries.csv and images/")
    p.add_argument("--checkouts", default=".", help="comma-separated source folders")
    p.add_argument("--limit", type=int, default=0, help="first N queries (0: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    p.add_argument("--option", action="append", default=[], help="job option key=value")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    from cli.common import parse_options
    from core.mapbuild import read_positions_csv

    args.maps = args.maps.resolve()
    args.options = parse_options(args.option, None)
    rows = read_positions_csv(args.getty / "queries.csv", args.getty / "images")
    queries = [e.image for e in rows]
    if args.limit:
        queries = queries[: args.limit]
    checkouts = [Checkout(Path(s).resolve(), args) for s in args.checkouts.split(",")]
    try:
        for k, photo in enumerate(queries):
            for c in checkouts if k % 2 == 0 else checkouts[::-1]:
                c.run(photo.resolve())
            last = [c.results[-1] for c in checkouts]
            same = "" if len(last) < 2 else f" same={same_estimate(*last)}"
            walls = " ".join(f"{r['wall']:.3f}" for r in last)
            print(f"query {k + 1}/{len(queries)} {photo.name}: s {walls}{same}", flush=True)
    finally:
        for c in checkouts:
            c.close()
    runs = [summary(c) for c in checkouts]
    stages = sorted({k for r in runs for k in r["stage_seconds"]})
    print_table(
        f"{len(queries)} queries, device {args.device}, {args.threads} thread(s), options"
        f" {args.options or '{}'}",
        ["checkout", "s/query", "median", *stages, "CPU ms", "models ms", "rest ms", "RSS MiB"],
        [
            (
                Path(r["checkout"]).name,
                r["s_per_query"],
                r["s_median"],
                *(r["stage_seconds"].get(k, 0.0) for k in stages),
                r["cpu_ms"],
                r["model_cpu_ms"],
                r["rest_cpu_ms"],
                r["rss_end_mib"],
            )
            for r in runs
        ],
    )
    report: dict = {"map": args.map, "device": args.device, "runs": runs}
    if len(checkouts) == 2:
        a, b = (c.results for c in checkouts)
        differ = [
            {"query": str(q.name), "first": x, "second": y}
            for q, x, y in zip(queries, a, b, strict=True)
            if not same_estimate(x, y)
        ]
        ratio = runs[1]["s_per_query"] / runs[0]["s_per_query"]
        print(f"\nsecond / first: {ratio:.2f}x the time; equal estimates: "
              f"{len(queries) - len(differ)} of {len(queries)}")  # fmt: skip
        for d in differ:
            print(f"  differs: {d['query']}: {d['first']} vs {d['second']}")
        report.update(ratio=ratio, equal=len(queries) - len(differ), differ=differ)
    report["machine"] = machine_info()
    print(f"\nwrote {write_json(args.out, f'speed-ab-{args.device}.json', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
