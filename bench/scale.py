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
from bench.distractors import GroupChimeras
from core.evaluation import HIT_RADIUS, first_rank_within, hits, l1_error

# --- 1. one map size, in a child process ---------------------------------------------------


def measure_map(
    maps_dir: Path,
    name: str,
    query_images: list[Path],
    options: dict,
    threads: int = 1,
    hold: bool = False,
) -> dict:
    """Load a map and localise the queries; run in a fresh process for clean memory figures.

    ``threads``: torch and OpenCV threads, 1 like a CPU worker process (0: library defaults).
    ``hold``: print the figures, then keep the map loaded until stdin closes, so that another
    process can read this one's memory as a serving worker's.
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
    row = {
        "load_seconds": load_s,
        "rss_before_map_mib": rss_start,
        "rss_after_load_mib": current_rss_mib(),
        **localise_all(loc, images, opts),
    }
    if hold:
        print(json.dumps(row), flush=True)
        sys.stdin.read()  # the map stays loaded until the parent has read this memory
    return row


def localise_all(loc, images: list, opts) -> dict:
    """One warm-up, then the figures of localising ``images`` in this process."""
    loc.localise(images[0], opts)  # warm-up: lazy model and matcher set-up
    seconds, stages, estimates = [], {}, []
    for img in images:
        t = time.perf_counter()
        res = loc.localise(img, opts)
        seconds.append(time.perf_counter() - t)
        est = res.estimate
        estimates.append(None if est.x is None else (est.x, est.y))
        for k, v in res.timings.items():
            stages.setdefault(k, []).append(v)
    return {
        "references": len(loc.map),
        "queries": len(images),
        "seconds_per_query": float(np.mean(seconds)),
        "s_per_query_p50": float(np.percentile(seconds, 50)),
        "seconds_per_query_p95": float(np.percentile(seconds, 95)),
        "stages": {k: float(np.mean(v)) for k, v in stages.items()},
        "retrieve_ms_p50": 1000 * float(np.percentile(stages.get("retrieve", [np.nan]), 50)),
        "rss_after_queries_mib": current_rss_mib(),
        "rss_anon_after_queries_mib": current_rss_mib("RssAnon"),
        "rss_file_after_queries_mib": current_rss_mib("RssFile"),
        "peak_rss_mib": peak_rss_mib(),
        "estimates": estimates,
    }


def serve_pool(spec: dict) -> None:
    """A prefork worker's process tree, as ``featureloc worker --concurrency N`` with
    ``FEATURELOC_PRELOAD_MAPS`` runs it: this main process preloads the map with the worker's
    own code (workers/runtime.preload), then, per line ``N`` on stdin, forks a worker process
    that localises the first N queries with the inherited localiser, prints its figures (and
    pid) as one JSON line and stays alive until stdin closes."""
    import os

    threads = int(spec["threads"])
    os.environ.update(
        FEATURELOC_MAPS_DIR=spec["maps_dir"],
        FEATURELOC_DEVICE="cpu",
        FEATURELOC_TORCH_THREADS=str(threads),
    )
    from core.images import read_image
    from core.localiser import LocaliseOptions
    from workers import runtime

    opts = LocaliseOptions.parse(spec["options"])
    images = [read_image(p) for p in spec["images"]]
    t0 = time.perf_counter()
    runtime.preload([spec["name"]])
    load_s = time.perf_counter() - t0
    children = []
    for line in sys.stdin:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            for _, earlier in children:  # else an earlier worker never sees its pipe close
                os.close(earlier)
            os.close(write_end)
            loc, _ = runtime.localiser(spec["name"])  # the inherited one: nothing loads
            row = {"pid": os.getpid(), "load_seconds": load_s,
                   **localise_all(loc, images[: int(line)], opts)}  # fmt: skip
            print(json.dumps(row), flush=True)
            os.read(read_end, 1)  # until the main process closes its end
            os._exit(0)
        os.close(read_end)
        children.append((pid, write_end))
    for pid, write_end in children:
        os.close(write_end)
        os.waitpid(pid, 0)


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


# --- 1b. full pipeline: real references plus distractors, one and two worker processes ----


def pss_mib(pid: int, field: str = "Pss") -> float:
    """Proportional set size: pages shared with other processes (the page cache of a
    memory-mapped map, libraries) count once across them all. ``field``: ``Pss``, or its
    ``Pss_Anon`` (the process's own heap: Python, torch, models) or ``Pss_File`` part."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no {field} for process {pid}")


class HeldChild:
    """``bench.scale --child`` that localises the queries, reports, then stays alive (its
    memory can be read) until released."""

    def __init__(self, spec: dict) -> None:
        cmd = [sys.executable, "-m", "bench.scale", "--child", json.dumps({**spec, "hold": True})]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def report(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the report is the child's one JSON line
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"child exited with {self.proc.wait()} before reporting")

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the child's read returns: it exits
        self.proc.wait(timeout=60)


def two_workers(spec: dict, second_queries: int) -> dict:
    """One worker's figures and PSS alone, then the PSS of it and a second worker on the same
    map (after the second localised ``second_queries`` queries) together."""
    first = HeldChild(spec)
    try:
        row = first.report()
        row["pss_one_mib"] = pss_mib(first.proc.pid)
        row["pss_one_anon_mib"] = pss_mib(first.proc.pid, "Pss_Anon")
        row["pss_one_file_mib"] = pss_mib(first.proc.pid, "Pss_File")
        second = HeldChild({**spec, "images": spec["images"][:second_queries]})
        try:
            second.report()
            row["pss_two_mib"] = pss_mib(first.proc.pid) + pss_mib(second.proc.pid)
        finally:
            second.release()
    finally:
        first.release()
    row["worker_rss_mib"] = row["rss_after_queries_mib"]
    row["worker_rss_anon_mib"] = row["rss_anon_after_queries_mib"]
    return row


def pool_workers(spec: dict, second_queries: int) -> dict:
    """One prefork worker with its map preloaded (bench.scale's ``serve_pool``): the PSS of its
    main process and one worker process after the queries, then with a second worker process
    (after ``second_queries`` queries); the worker processes' own figures."""
    cmd = [sys.executable, "-m", "bench.scale", "--child", json.dumps({**spec, "pool": True})]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None

    def fork(queries: int) -> dict:
        proc.stdin.write(f"{queries}\n")
        proc.stdin.flush()
        for line in proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"pool exited with {proc.wait()} before reporting")

    try:
        first = fork(len(spec["images"]))
        one = pss_mib(proc.pid) + pss_mib(first["pid"])
        second = fork(second_queries)
        two = pss_mib(proc.pid) + pss_mib(first["pid"]) + pss_mib(second["pid"])
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    return {
        "pool_worker_rss_mib": first["rss_after_queries_mib"],
        "pool_s_per_query_p50": first["s_per_query_p50"],
        "pool_pss_one_mib": one,
        "pool_pss_two_mib": two,
        "pool_pss_two_over_one": two / one,
        "pool_estimates_equal": first["estimates"] == spec.get("expected_estimates"),
    }


def full_pipeline(args, src, query_images: list[Path], truths, options: dict) -> dict:
    """The real map and a copy grown with distractors to ``--references`` (written once under
    ``--scale-maps``, fitted by the map's own finalisation), each served by worker processes."""
    from bench.distractors import write_distractor_map
    from core.mapbuild import finalise_map
    from core.mapstore import MapStore

    store = MapStore(args.scale_maps)
    grown = f"{src.name}-{args.references}"
    prepare_s = None
    if not store.exists(grown) or len(store.open(grown)) != args.references:
        print(f"  writing {args.references - len(src)} distractors into {store.path(grown)}")
        t = time.perf_counter()
        write_distractor_map(src, store, grown, args.references)
        finalise_map(store, grown)
        prepare_s = time.perf_counter() - t
    rows = []
    for maps_dir, name in ((src.path.parent, src.name), (store.root, grown)):
        print(f"  {name}: one worker, then two ...", flush=True)
        spec = {
            "maps_dir": str(maps_dir),
            "name": name,
            "images": [str(p) for p in query_images],
            "options": options,
            "threads": args.threads,
        }
        row = two_workers(spec, args.second_worker_queries)
        print(f"  {name}: a prefork worker with the map preloaded, 1 then 2 processes ...")
        row.update(pool_workers({**spec, "expected_estimates": row["estimates"]},
                                args.second_worker_queries))  # fmt: skip
        errors = [  # a query without an estimate is a miss
            np.inf if e is None else l1_error(e[0], e[1], t[0], t[1])
            for e, t in zip(row.pop("estimates"), truths, strict=True)
        ]
        row["within_5"] = float(hits(errors).mean())
        row["index_bytes"] = _index_bytes(maps_dir / name)
        rows.append(row)
    base, big = rows
    return {
        **big,
        "distractor_method": "group chimeras (bench/distractors.py): VLAD descriptors of 8 word "
        "groups from two real references, local features of the first, each alone at x >= 1e6",
        "distractors_written_seconds": prepare_s,
        "baseline": base,
        "s_per_query_ratio": big["s_per_query_p50"] / base["s_per_query_p50"],
        "pss_two_over_one": big["pss_two_mib"] / big["pss_one_mib"],
        "pool_pss_two_over_one": big["pool_pss_two_over_one"],
        "threads": args.threads,
    }


def _index_bytes(map_dir: Path) -> int | None:
    """Size of the map's compressed retrieval index file (None: ranked exactly)."""
    files = list((map_dir / "retrieval").glob("vlad-index-*.arr"))
    return max(f.stat().st_size for f in files) if files else None


# --- 2. retrieval only, up to a million references ----------------------------------------


def retrieval_only(args, src, query_feats, truths) -> dict:
    """Shortlist time, index size and build time, and recall of the index against exact
    search, on the real references plus group-chimera distractors up to ``--references``."""
    import faiss

    from core.registry import retriever_class
    from core.retrieval.index import CompressedIndex, IndexConfig, project

    faiss.omp_set_num_threads(1)
    retriever = retriever_class(src.retriever["name"])(src.retriever.get("conf"))
    retriever.prepare(src)
    real = retriever.descriptor_rows(np.arange(len(src)))
    words = retriever.centroids.shape[0]
    extra = max(args.references - len(real), 0)
    chimeras = GroupChimeras(real, src.positions, words, extra)
    positions = np.concatenate([src.positions, np.full((extra, 2), np.nan)])
    conf = IndexConfig(**json.loads(args.index_conf)) if args.index_conf else IndexConfig()
    total = len(real) + extra
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    pca = CompressedIndex.fit_pca(real[rng.permutation(len(real))[: conf.pca_sample]], conf.dim)
    train_real = project(real, *pca)
    train = [train_real]
    if extra:
        first = next(chimeras.projections(*pca, chunk=max(conf.train_sample - len(real), 1)))
        train.append(first)
    index = CompressedIndex.train(pca, np.concatenate(train), total, conf)
    index.add_projected(train_real)
    for block in chimeras.projections(*pca):
        index.add_projected(block)
    build_s = time.perf_counter() - t
    times, exact_ms, hits_exact, hits_index = [], [], [], []
    top = 50
    for feats, truth in zip(query_feats, truths, strict=True):
        q = retriever.describe(feats)
        t = time.perf_counter()
        per = chimeras.query_sums(q) if extra else None
        full = np.concatenate([real @ q, chimeras.scores(per)]) if extra else real @ q
        exact_ms.append(1000 * (time.perf_counter() - t))
        exact = np.argsort(-full)[:top]
        t = time.perf_counter()
        rows = index.candidates(q)
        is_real = rows < len(real)
        scores = np.empty(len(rows), np.float32)
        scores[is_real] = real[rows[is_real]] @ q
        if extra:
            scores[~is_real] = chimeras.scores(per, rows[~is_real] - len(real))
        short = rows[np.argsort(-scores)[:top]]
        times.append(1000 * (time.perf_counter() - t))
        hits_exact.append(first_rank_within(positions[exact], truth, HIT_RADIUS) is not None)
        hits_index.append(first_rank_within(positions[short], truth, HIT_RADIUS) is not None)
    found = [i for e, i in zip(hits_exact, hits_index, strict=True) if e]
    return {
        "references": total,
        "distractors": extra,
        "distractor_method": "group chimeras: 8 VLAD word groups, each from one of two real "
        "references at different positions (both used), renormalised",
        "index": {**conf.__dict__, "dim": len(pca[1])},
        "shortlist_ms_p50": float(np.percentile(times, 50)),
        "shortlist_ms_p95": float(np.percentile(times, 95)),
        "exact_ms_p50": float(np.percentile(exact_ms, 50)),
        "index_bytes": index.nbytes,
        "index_build_seconds": build_s,
        "queries": len(truths),
        "queries_with_exact_hit": len(found),
        "recall50_vs_exact": float(np.mean(found)) if found else None,
        "exact_recall50": float(np.mean(hits_exact)),
        "threads": 1,
    }


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
    p.add_argument("--maps", type=Path, help="maps directory holding --map (default <out>/maps)")
    p.add_argument("--retrieval-only", action="store_true", help="only section 2, at --references")
    p.add_argument("--references", type=int, default=1_000_000, help="real + distractor refs")
    p.add_argument("--index-conf", default="", help="IndexConfig fields as JSON")
    p.add_argument(
        "--full-pipeline",
        action="store_true",
        help="the map and a copy grown to --references with distractors: s/query, RSS, PSS",
    )
    p.add_argument("--scale-maps", type=Path, help="where the grown copy is written")
    p.add_argument("--second-worker-queries", type=int, default=3, help="for the PSS of two")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        if spec.get("pool"):
            serve_pool(spec)
            return 0
        row = measure_map(
            Path(spec["maps_dir"]),
            spec["name"],
            [Path(i) for i in spec["images"]],
            spec["options"],
            spec["threads"],
            spec.get("hold", False),
        )
        if not spec.get("hold"):
            print(json.dumps(row))
        return 0
    if not args.getty.is_dir():
        print(f"no Getty set at {args.getty}: the scale benchmark needs it", file=sys.stderr)
        return 2
    from bench.getty_maps import ensure_map
    from cli.common import parse_options
    from core.images import read_image
    from core.mapbuild import read_positions_csv
    from core.mapstore import MapStore
    from core.registry import create_extractor

    args.out = args.out.resolve()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.distractor_sizes = [int(s) for s in args.distractor_sizes.split(",") if s]
    options = parse_options(args.option, None)
    if args.top_k:
        options["top_k"] = args.top_k
    if args.maps:
        store, build_record = MapStore(args.maps), {"ms_per_reference": None}
    else:
        store, build_record = ensure_map(
            args.out, args.map, args.extractor, args.retriever, getty=args.getty
        )
    src = store.open(args.map)
    queries = read_positions_csv(args.getty / "queries.csv", args.getty / "images")[: args.queries]
    images = [q.image for q in queries]
    if args.threads:
        import cv2
        import torch

        torch.set_num_threads(args.threads)  # the same for every section
        cv2.setNumThreads(args.threads)
    extractor = create_extractor(src.extractor["name"], src.extractor.get("conf"), "cpu")
    truths = [(q.reference.x, q.reference.y) for q in queries]
    if args.full_pipeline:
        args.scale_maps = (args.scale_maps or args.out / "scale" / "maps").resolve()
        row = full_pipeline(args, src, images, truths, options)
        print_table(
            f"full pipeline, {len(images)} queries, 1-thread worker processes, options {options}",
            ["references", "s/query p50", "p95", "retrieve ms p50", "RSS MiB", "PSS one MiB"]
            + ["PSS two MiB", "within 5"],
            [
                (
                    r["references"],
                    r["s_per_query_p50"],
                    r["seconds_per_query_p95"],
                    r["retrieve_ms_p50"],
                    r["worker_rss_mib"],
                    r["pss_one_mib"],
                    r["pss_two_mib"],
                    r["within_5"],
                )
                for r in (row["baseline"], row)
            ],
        )
        print(
            f"s/query {row['s_per_query_ratio']:.2f}x the {row['baseline']['references']}-"
            f"reference figure; two workers {row['pss_two_over_one']:.2f}x the PSS of one as "
            f"separate processes, {row['pool_pss_two_over_one']:.2f}x as one prefork worker with "
            f"the map preloaded ({row['pool_pss_one_mib']:.0f} -> {row['pool_pss_two_mib']:.0f} "
            f"MiB; its worker process: RSS {row['pool_worker_rss_mib']:.0f} MiB, "
            f"{row['pool_s_per_query_p50']:.2f} s/query p50, same estimates: "
            f"{row['pool_estimates_equal']})"
        )
        row["machine"] = machine_info()
        if args.json:
            args.json.write_text(json.dumps(row, indent=2))
            print(f"wrote {args.json}")
        return 0
    if args.retrieval_only:
        feats = [extractor.extract(read_image(p)) for p in images]
        row = retrieval_only(args, src, feats, truths)
        print_table(
            "retrieval only: real + distractor references, compressed index, 1 thread",
            ["references", "shortlist ms p50", "p95", "exact ms p50", "index MiB", "build s"]
            + ["recall50_vs_exact", "queries counted"],
            [
                (
                    row["references"],
                    row["shortlist_ms_p50"],
                    row["shortlist_ms_p95"],
                    row["exact_ms_p50"],
                    row["index_bytes"] / 2**20,
                    row["index_build_seconds"],
                    row["recall50_vs_exact"],
                    row["queries_with_exact_hit"],
                )
            ],
        )
        row["machine"] = machine_info()
        if args.json:
            args.json.write_text(json.dumps(row, indent=2))
            print(f"wrote {args.json}")
        return 0

    print(f"1. time and memory per query, {len(images)} queries, options {options}")
    sizes = map_size_rows(args, src, images, options)
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
            "build": {"record": build_record, "timed": build},
            "machine": machine_info(),
        },
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
