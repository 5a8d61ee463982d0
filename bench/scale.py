"""Scale: time and memory per query against map size, retrieval with distractors, build time.

1. **Map size.** Maps of 500 / 1500 / 3000 Getty references (``--sizes``), written as subsets of
   one cached map (``bench/getty_maps.ensure_map``; stored features and retrieval state, no
   re-extraction; whole positions spread over the site). Each size runs in its own process so
   memory is clean: map load time, seconds per query (mean and per stage), resident memory after
   loading and peak RSS (``ru_maxrss``).
2. **Retrieval with distractors.** The full map's VLAD descriptors plus synthetic distractor
   references up to 30,000 (``--distractor-sizes``). A distractor is a *chimera*: each of its
   visual-word blocks (one block of residuals per codebook word) is taken from one of two real
   references at different positions, then renormalised — a descriptor as real in its parts as
   any reference, of no real place. Measured: shortlist time per query (the retriever's own
   ``shortlist``), the descriptor matrix's memory and RSS, and whether the true references keep
   their rank (recall@1/5/20 within distance 5, queries whose first true rank is unchanged).
3. **Build time per reference.** From the cached map's build record, and a timed build of
   ``--build-refs`` references with the same extractor and retriever.

Configuration: the cached map (``--map``, default ``getty-xfeat``: XFeat + VLAD as in
``core/defaults.py``) and the default job options, changed with ``--top-k`` / ``--option``.

Reproduce:

    python -m bench.scale                                   # sizes 500,1500,3000; 10 queries
    python -m bench.scale --queries 30 --distractor-sizes 3000,10000,30000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import (
    DEFAULT_OUT,
    GETTY,
    REPO,
    current_rss_mib,
    machine_info,
    peak_rss_mib,
    print_table,
    spread_subset,
    write_json,
    write_subset_map,
)
from core import defaults
from core.evaluation import first_rank_within

RECALL_AT = (1, 5, 20)


# --- 1. one map size, in a child process ---------------------------------------------------


def measure_map(
    maps_dir: Path, name: str, query_images: list[Path], options: dict, threads: int = 1
) -> dict:
    """Load a map and localise the queries; run in a fresh process for clean memory figures.

    ``threads``: torch and OpenCV threads, 1 like a CPU worker process (0: library defaults).
    """
    if threads:
        import cv2
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    from core.images import read_image
    from core.localiser import LocaliseOptions, Localiser
    from core.mapstore import MapStore

    opts = LocaliseOptions.parse(options)
    images = [read_image(p) for p in query_images]
    rss_start = current_rss_mib()
    t0 = time.perf_counter()
    ref_map = MapStore(maps_dir).open(name)
    loc = Localiser(ref_map)
    load_s = time.perf_counter() - t0
    rss_loaded = current_rss_mib()
    loc.localise(images[0], opts)  # warm-up: lazy model and matcher set-up
    seconds, stages = [], {}
    for img in images:
        t = time.perf_counter()
        res = loc.localise(img, opts)
        seconds.append(time.perf_counter() - t)
        for k, v in res.timings.items():
            stages.setdefault(k, []).append(v)
    return {
        "references": len(ref_map),
        "queries": len(images),
        "load_seconds": load_s,
        "seconds_per_query": float(np.mean(seconds)),
        "seconds_per_query_p95": float(np.percentile(seconds, 95)),
        "stages": {k: float(np.mean(v)) for k, v in stages.items()},
        "rss_before_map_mib": rss_start,
        "rss_after_load_mib": rss_loaded,
        "peak_rss_mib": peak_rss_mib(),
    }


def map_size_rows(args, src, query_images: list[Path], options: dict) -> list[dict]:
    from core.mapstore import MapStore

    maps_dir = args.out / "scale" / "maps"
    store = MapStore(maps_dir)
    rows = []
    for n in args.sizes:
        ids = spread_subset(src.ids, src.positions, n)
        write_subset_map(src, store, f"scale-{n}", ids)
        cmd = [
            sys.executable,
            "-m",
            "bench.scale",
            "--child",
            json.dumps(
                {
                    "maps_dir": str(maps_dir),
                    "name": f"scale-{n}",
                    "images": [str(p) for p in query_images],
                    "options": options,
                    "threads": args.threads,
                }
            ),
        ]
        print(f"  map of {len(ids)} references ...", flush=True)
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"child for size {n} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        shutil.rmtree(store.path(f"scale-{n}"))  # subset maps are cheap to rewrite
    return rows


# --- 2. retrieval with synthetic distractors ------------------------------------------------


def chimera_distractors(
    descriptors: np.ndarray,
    positions: np.ndarray,
    num_words: int,
    count: int,
    seed: int = 0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``count`` unit vectors, each word block from one of two references at different places.

    ``descriptors`` (N, k*d) are VLAD vectors (k = ``num_words`` blocks of d). The result is
    written into ``out`` when given (rows 0..count-1), to avoid a second copy of a large matrix.
    """
    rng = np.random.default_rng(seed)
    n, dim = descriptors.shape
    d = dim // num_words
    res = out if out is not None else np.empty((count, dim), np.float32)
    for start in range(0, count, 1000):
        m = min(1000, count - start)
        a = rng.integers(0, n, m)
        b = rng.integers(0, n, m)
        same = np.all(positions[a] == positions[b], axis=1)
        b[same] = (b[same] + n // 2) % n  # another place (the map spans many positions)
        pick = rng.random((m, num_words, 1)) < 0.5
        va = descriptors[a].reshape(m, num_words, d)
        vb = descriptors[b].reshape(m, num_words, d)
        v = np.where(pick, va, vb).reshape(m, dim).astype(np.float32)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        res[start : start + m] = v
    return res


class _SizedMap:
    """What the VLAD retriever's shortlist needs of a map: its size."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def distractor_rows(args, src, query_feats, truths) -> list[dict]:
    from core.registry import retriever_class

    conf = src.retriever.get("conf")
    retriever = retriever_class(src.retriever["name"])(conf)
    retriever.prepare(src)
    if retriever.name != "vlad":
        print("  (distractors only for VLAD maps; skipped)")
        return []
    real = retriever.descriptors
    words = retriever.centroids.shape[0]
    top = max(max(RECALL_AT), args.top_k or defaults.TOP_K)
    rows, base_ranks = [], None
    for size in args.distractor_sizes:
        extra = max(size - len(real), 0)
        rss0 = current_rss_mib()
        matrix = np.empty((len(real) + extra, real.shape[1]), np.float32)
        matrix[: len(real)] = real
        t = time.perf_counter()
        chimera_distractors(real, src.positions, words, extra, out=matrix[len(real) :])
        gen_s = time.perf_counter() - t
        positions = np.full((len(matrix), 2), np.nan)
        positions[: len(real)] = src.positions
        retriever.descriptors = matrix
        retriever._position_groups = None
        sized = _SizedMap(len(matrix))
        times, ranks = [], []
        for feats, truth in zip(query_feats, truths, strict=True):
            t = time.perf_counter()
            order, _ = retriever.shortlist(feats, sized, top)
            times.append(time.perf_counter() - t)
            ranks.append(first_rank_within(positions[order], truth, 5.0))
        if base_ranks is None:
            base_ranks = ranks
        row = {
            "references": len(matrix),
            "distractors": extra,
            "shortlist_ms": 1000 * float(np.mean(times)),
            "matrix_mib": matrix.nbytes / 2**20,
            "rss_growth_mib": current_rss_mib() - rss0,
            "generate_seconds": gen_s,
            "rank_unchanged": float(
                np.mean([a == b for a, b in zip(ranks, base_ranks, strict=False)])
            ),
        }
        for k in RECALL_AT:
            row[f"recall@{k}"] = float(np.mean([r is not None and r < k for r in ranks]))
        rows.append(row)
        retriever.descriptors = None
        del matrix
    return rows


# --- 3. build time ---------------------------------------------------------------------------


def timed_build(args, src) -> dict:
    from core.mapbuild import build_map, read_positions_csv
    from core.mapstore import MapStore

    entries = read_positions_csv(args.getty / "references.csv", args.getty / "images")
    by_id = {e.reference.id: e for e in entries}
    ids = spread_subset(src.ids, src.positions, args.build_refs)
    store = MapStore(args.out / "scale" / "maps")
    name = f"build-{args.build_refs}"
    if store.path(name).exists():
        shutil.rmtree(store.path(name))
    ext, ret = src.extractor, src.retriever
    t = time.perf_counter()
    build_map(
        store,
        name,
        [by_id[i] for i in ids],
        ext["name"],
        ext.get("conf"),
        ret["name"],
        ret.get("conf"),
    )
    seconds = time.perf_counter() - t
    shutil.rmtree(store.path(name))
    return {
        "references": len(ids),
        "seconds": seconds,
        "ms_per_reference": 1000 * seconds / len(ids),
    }


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--getty", type=Path, default=GETTY)
    p.add_argument("--map", default="getty-xfeat", help="cached map under <out>/maps")
    p.add_argument("--extractor", default="xfeat", help="to build the map if not cached")
    p.add_argument("--retriever", default="vlad", help="to build the map if not cached")
    p.add_argument("--sizes", default="500,1500,3000")
    p.add_argument("--distractor-sizes", default="3000,10000,30000")
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--top-k", type=int, default=0, help="job option top_k (0: the job default)")
    p.add_argument("--option", action="append", default=[], help="other job option key=value")
    p.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads (0: default)")
    p.add_argument("--build-refs", type=int, default=100, help="timed build size (0: skip)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        row = measure_map(
            Path(spec["maps_dir"]),
            spec["name"],
            [Path(i) for i in spec["images"]],
            spec["options"],
            spec["threads"],
        )
        print(json.dumps(row))
        return 0
    if not args.getty.is_dir():
        print(f"no Getty set at {args.getty}: the scale benchmark needs it", file=sys.stderr)
        return 2
    from bench.getty_maps import ensure_map
    from cli.common import parse_options
    from core.images import read_image
    from core.mapbuild import read_positions_csv
    from core.registry import create_extractor

    args.out = args.out.resolve()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.distractor_sizes = [int(s) for s in args.distractor_sizes.split(",") if s]
    options = parse_options(args.option, None)
    if args.top_k:
        options["top_k"] = args.top_k
    store, build_record = ensure_map(
        args.out, args.map, args.extractor, args.retriever, getty=args.getty
    )
    src = store.open(args.map)
    queries = read_positions_csv(args.getty / "queries.csv", args.getty / "images")[: args.queries]
    images = [q.image for q in queries]

    print(f"1. time and memory per query, {len(images)} queries, options {options}")
    if args.threads:
        import cv2
        import torch

        torch.set_num_threads(args.threads)  # the same for distractors and the timed build
        cv2.setNumThreads(args.threads)
    sizes = map_size_rows(args, src, images, options)

    print("2. retrieval with chimera distractors")
    extractor = create_extractor(src.extractor["name"], src.extractor.get("conf"), "cpu")
    feats = [extractor.extract(read_image(p)) for p in images]
    truths = [(q.reference.x, q.reference.y) for q in queries]
    distractors = distractor_rows(args, src, feats, truths)

    print("3. build time")
    build = timed_build(args, src) if args.build_refs else None

    print_table(
        f"time and memory per query against map size ({src.extractor['name']} + "
        f"{src.retriever['name']}, options {options})",
        ["references", "load s", "s/query", "p95", "extract", "retrieve", "match", "verify"]
        + ["RSS loaded MiB", "peak RSS MiB"],
        [
            (
                r["references"],
                r["load_seconds"],
                r["seconds_per_query"],
                r["seconds_per_query_p95"],
                r["stages"].get("extract"),
                r["stages"].get("retrieve"),
                r["stages"].get("match"),
                r["stages"].get("verify"),
                r["rss_after_load_mib"],
                r["peak_rss_mib"],
            )
            for r in sizes
        ],
    )
    if len(sizes) > 1:
        a, b = sizes[0], sizes[-1]
        print(
            f"{b['references'] / a['references']:.1f}x the references: "
            f"{b['seconds_per_query'] / a['seconds_per_query']:.2f}x the time per query, "
            f"{b['rss_after_load_mib'] / a['rss_after_load_mib']:.2f}x the memory after load"
        )
    if distractors:
        print_table(
            "retrieval only, real + chimera distractor references",
            ["references", "shortlist ms", "matrix MiB", "RSS growth MiB", "rank unchanged"]
            + [f"recall@{k}" for k in RECALL_AT],
            [
                (
                    r["references"],
                    r["shortlist_ms"],
                    r["matrix_mib"],
                    r["rss_growth_mib"],
                    f"{r['rank_unchanged']:.0%}",
                    *(f"{r[f'recall@{k}']:.0%}" for k in RECALL_AT),
                )
                for r in distractors
            ],
        )
    print_table(
        "build time per reference",
        ["source", "references", "ms/reference"],
        [("cached map build record", build_record.get("added"), build_record["ms_per_reference"])]
        + ([("timed build now", build["references"], build["ms_per_reference"])] if build else []),
    )
    out = write_json(
        args.out,
        "scale.json",
        {
            "map": args.map,
            "extractor": src.extractor,
            "retriever": src.retriever,
            "options": options,
            "threads": args.threads,
            "map_sizes": sizes,
            "distractors": {
                "method": "chimera: each VLAD word block from one of two real references at "
                "different positions, renormalised",
                "rows": distractors,
            },
            "build": {"record": build_record, "timed": build},
            "machine": machine_info(),
        },
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
