"""Throughput through the real queue with 1 and then 2 worker processes.

Real services: Redis (``--redis``, unique queue names per run), SQLite (default) or PostgreSQL
(``--database postgres``, a fresh schema dropped afterwards), and real ``featureloc worker``
processes, each of ``--concurrency`` pool processes (default 1) with
``FEATURELOC_TORCH_THREADS=1``. For each worker count the script warms the workers up (models and
map loaded), submits ``--queries`` photos at once through ``workers.client.Client`` and waits for
all of them, then reads the job rows:

- queries/s over the whole drain (first submission to last finish, database timestamps);
- latency per job (``finished_at - created_at``: queueing included) p50 / p95, and service time
  (``finished_at - started_at``) p50 / p95;
- the speed-up of 2 workers over 1;
- seconds per stage (mean of the jobs' stored timings: extract, retrieve, match, verify, ...);
- host CPU-seconds per query: user + system time of the worker processes (main and pool, read
  from /proc) over the timed batch, divided by the queries; split into the model forward passes
  (the ``extract`` stage's wall seconds: the coarse extractor, about its CPU time on an idle
  1-thread CPU worker, more than it on a busy machine or a GPU, where the host waits, so "rest"
  is then understated; the fine stage's models count in "rest"; bench/speed_ab.py measures
  the models' CPU time itself) and the rest;
- on a GPU (``nvidia-ml-py`` installed: ``pip install nvidia-ml-py``), its utilisation (mean of
  samples every 0.2 s over the timed batch) and the most memory used; absent otherwise;

and writes them to ``<out>/throughput-<database>.json`` (default out: bench/out).

Configuration: the defaults (``core/defaults.py`` extractor and retriever, default job options)
unless ``--extractor`` / ``--retriever`` / ``--option`` say otherwise. The map holds
``--references`` Getty references (whole positions, spread over the site; 0 = all 3000); its timed
build also gives the build time per reference (on Getty the map records Getty's camera, so
placement runs as in bench/accuracy.py; ``--fine`` adds the accurate profile's fine set);
``--map-from DIR`` serves an already built map
instead (e.g. the full 3000-reference ``bench/out/maps/getty-xfeat``). Without the Getty set
(../shared/getty) the script falls back to the synthetic scene (cli.synthetic) and says so.

``--via-http`` also sends the same number of photos through the HTTP API (a real ``featureloc
serve`` process on loopback, uploads from ``--http-clients`` threads, results read with
``?wait=``) to the same workers in the same run, right after the direct client's batch, and prints
both rates and the API's cost in throughput (the target: at most 10 %). Its photos are the same
queries with a few bytes after the JPEG end marker (same pixels, same work, new job ids).

Reproduce:

    python -m bench.throughput                       # Getty, 20 queries, 150 references, SQLite
    python -m bench.throughput --map-from bench/out/maps/getty-xfeat --queries 40
    python -m bench.throughput --database postgres
    python -m bench.throughput --synthetic --workers 1 --queries 16 --via-http
    python -m bench.throughput --device cuda --workers 1 --concurrency 8   # a GPU host
    bench/gpu_run.sh                                 # every GPU figure in one command
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import (
    DEFAULT_OUT,
    GETTY,
    machine_info,
    percentile,
    print_table,
    spread_subset,
    write_json,
)
from cli.common import parse_options
from core import defaults
from core.mapbuild import (
    RefEntry,
    add_fine_features,
    add_geometry,
    build_map,
    read_positions_csv,
)
from core.mapstore import MapStore, existing_reference_ids
from tests.support.process import WorkerProcess
from workers.settings import Settings

POSTGRES_URL = os.environ.get(
    "FEATURELOC_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def database_url(kind: str, data_dir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{(data_dir / 'featureloc.db').resolve()}"
        return
    from db.schemas import temporary_schema

    with temporary_schema(POSTGRES_URL, prefix="bench") as url:
        yield url


def latency_figures(jobs) -> dict:
    """Drain rate and latency from the stored jobs (``workers.client.JobResult``)."""
    created = [j.created_at for j in jobs]
    finished = [j.finished_at for j in jobs]
    drain = (max(finished) - min(created)).total_seconds()
    latency = [(j.finished_at - j.created_at).total_seconds() for j in jobs]
    service = [(j.finished_at - j.started_at).total_seconds() for j in jobs if j.started_at]
    return {
        "jobs": len(jobs),
        "failed": sum(j.status != "done" for j in jobs),
        "drain_seconds": drain,
        "queries_per_second": len(jobs) / drain if drain > 0 else None,
        "latency_p50": percentile(latency, 50),
        "latency_p95": percentile(latency, 95),
        "service_p50": percentile(service, 50),
        "service_p95": percentile(service, 95),
        "map_load_seconds_max": max((j.timings or {}).get("load", 0.0) for j in jobs),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children (the prefork pool)."""
    from tests.support.faults import pool_children

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in [pid, *pool_children(pid)]:
        try:
            # Fields after the command's closing parenthesis: utime and stime are 12th and 13th.
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a pool process that just ended
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


class GpuSampler:
    """GPU utilisation and memory sampled through NVML (nvidia-ml-py) while a batch runs;
    ``figures()`` is None without the package or a GPU."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.util: list[float] = []
        self.memory: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception:  # no package, no driver or no GPU: nothing to sample
            self._nvml, self._handles = None, []

    def __enter__(self) -> GpuSampler:
        if self._handles:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        nvml = self._nvml
        assert nvml is not None
        while not self._stop.wait(self.period):
            for h in self._handles:
                self.util.append(float(nvml.nvmlDeviceGetUtilizationRates(h).gpu))
                self.memory.append(nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def figures(self) -> dict | None:
        if not self._handles or not self.util:
            return None
        nvml = self._nvml
        assert nvml is not None
        name = nvml.nvmlDeviceGetName(self._handles[0])
        return {
            "gpu": name.decode() if isinstance(name, bytes) else name,
            "gpu_util_mean_percent": sum(self.util) / len(self.util),
            "gpu_util_max_percent": max(self.util),
            "gpu_memory_max_mib": max(self.memory),
            "samples": len(self.util),
        }


def stage_seconds(jobs) -> dict[str, float]:
    """Mean seconds per stage over the jobs' stored timings (a stage a job skipped counts 0)."""
    stages: dict[str, float] = {}
    for j in jobs:
        for stage, seconds in (j.timings or {}).items():
            stages[stage] = stages.get(stage, 0.0) + float(seconds)
    return {k: v / max(len(jobs), 1) for k, v in stages.items()}


def run_with_workers(
    n_workers: int,
    args,
    maps_dir: Path,
    map_name: str,
    warmups: list[Path],
    queries: list[bytes],
    options: dict,
) -> dict:
    from workers.client import Client

    tag = uuid.uuid4().hex[:8]
    data_dir = (args.out / "throughput" / f"run-{n_workers}w-{tag}").resolve()
    data_dir.mkdir(parents=True)
    with database_url(args.database, data_dir) as db_url:
        env = os.environ.copy()
        env.update(
            FEATURELOC_DATA_DIR=str(data_dir),
            FEATURELOC_MAPS_DIR=str(maps_dir),
            FEATURELOC_DATABASE_URL=db_url,
            FEATURELOC_BROKER_URL=args.redis,
            FEATURELOC_LOCALISE_QUEUE=f"bench-{tag}-localise",
            FEATURELOC_BUILD_QUEUE=f"bench-{tag}-build",
            FEATURELOC_TORCH_THREADS="1",
            FEATURELOC_DEVICE=args.device,
        )
        settings = Settings(
            data_dir=data_dir,
            maps_dir=maps_dir,
            database_url=db_url,
            broker_url=args.redis,
            localise_queue=env["FEATURELOC_LOCALISE_QUEUE"],
            build_queue=env["FEATURELOC_BUILD_QUEUE"],
        )
        workers: list[WorkerProcess] = []
        try:
            for i in range(n_workers):  # one after the other: the first migrates the database
                workers.append(
                    WorkerProcess(
                        env,
                        data_dir / f"worker-{i}.log",
                        concurrency=args.concurrency,
                        name=f"bench{uuid.uuid4().hex[:6]}@%h",
                    ).start(timeout=120.0)
                )
            client = Client(settings)
            # Warm-up: every worker loads its models and the map before the clock starts.
            warm = [client.submit(p, map_name, options) for p in warmups[: 2 * n_workers]]
            client.wait_many(warm, timeout=args.timeout)
            cpu0 = sum(cpu_seconds(w.proc.pid) for w in workers)
            with GpuSampler() as gpu:
                t0 = time.perf_counter()
                ids = [client.submit(p, map_name, options) for p in queries]
                submit_s = time.perf_counter() - t0
                jobs = client.wait_many(ids, timeout=args.timeout)
                wall = time.perf_counter() - t0
            cpu_s = sum(cpu_seconds(w.proc.pid) for w in workers) - cpu0
            http = run_via_http(args, env, data_dir, client, map_name, queries, options)
        finally:
            for w in workers:
                w.stop(timeout=60.0)
    figures = batch_figures(jobs, wall)
    stages = stage_seconds(jobs)
    host_cpu = cpu_s / len({j.id for j in jobs})
    figures.update(
        workers=n_workers,
        processes=n_workers * args.concurrency,
        submit_seconds=submit_s,
        stage_seconds=stages,
        host_cpu_seconds_per_query=host_cpu,
        model_seconds_per_query=stages.get("extract", 0.0),
        host_cpu_seconds_outside_models=host_cpu - stages.get("extract", 0.0),
        gpu=gpu.figures(),
    )
    if http is not None:
        figures["http"] = http
        figures["http_cost"] = (
            1 - http["wall_queries_per_second"] / figures["wall_queries_per_second"]
        )
    return figures


def batch_figures(jobs, wall: float) -> dict:
    """Stored-timestamp figures of a batch, its wall-clock rate and its errors."""
    figures = latency_figures(jobs)
    figures.update(wall_seconds=wall, wall_queries_per_second=len(jobs) / wall)
    errors = sorted({j.error for j in jobs if j.error})
    if errors:
        figures["errors"] = errors[:5]
    return figures


def run_via_http(args, env, data_dir: Path, client, map_name: str, queries, options) -> dict | None:
    """The same photos (new bytes, same pixels) through a real API server; None without
    ``--via-http``."""
    if not args.via_http:
        return None
    import json
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from db import api_keys
    from tests.support.process import ApiServerProcess
    from workers.maps import record_map

    record_map(client.settings, map_name)  # the API refuses maps the database does not know
    with client.db.session() as s:
        token = api_keys.create_key(s, f"bench-{uuid.uuid4().hex[:6]}")[1]
    server = ApiServerProcess(
        {**env, "FEATURELOC_API_RATE_LIMIT": "0"}, data_dir / "api.log"
    ).start()
    photos = [http_copy(p) for p in queries]
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=args.timeout) as http:

            def upload(photo: bytes) -> str:
                answer = http.post(
                    f"/v1/maps/{map_name}/jobs",
                    files={"photo": ("q.jpg", photo, "image/jpeg")},
                    data={"options": json.dumps(options)},
                )
                answer.raise_for_status()
                return answer.json()["id"]

            def finish(job_id: str) -> None:
                status = "pending"
                while status not in ("done", "failed"):
                    status = http.get(f"/v1/jobs/{job_id}", params={"wait": 60}).json()["status"]

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.http_clients) as pool:
                ids = list(pool.map(upload, photos))
                submit_s = time.perf_counter() - t0
                list(pool.map(finish, ids))
            wall = time.perf_counter() - t0
    finally:
        server.stop()
    figures = batch_figures([client.result(j) for j in ids], wall)
    figures.update(submit_seconds=submit_s, clients=args.http_clients)
    return figures


def http_copy(data: bytes, tag: str = "http") -> bytes:
    """The photo with bytes after its end marker: another job id, the same decoded pixels."""
    if not data.startswith(b"\xff\xd8"):
        raise SystemExit("query photos must be JPEG to be sent more than once")
    return data + f"\x00featureloc-bench-{tag}".encode()


def distinct_photos(paths: list[Path], count: int) -> list[bytes]:
    """``count`` photos cycling through ``paths``; each repeat gets bytes after its end marker
    (the same pixels, the same work) so that it is a job of its own, not the first one's."""
    data = [p.read_bytes() for p in paths]
    return [
        data[i] if i < len(data) else http_copy(data[i % len(data)], f"repeat-{i}")
        for i in range(count)
    ]


def build_device(device: str) -> str:
    """The device the map is built on: ``--device``, with ``auto`` resolved as workers do."""
    return Settings(device=device).resolved_device()


def getty_inputs(args) -> tuple[list[RefEntry], list[Path], str]:
    refs = read_positions_csv(args.getty / "references.csv", args.getty / "images")
    if args.references:
        import numpy as np

        keep = set(
            spread_subset(
                [e.reference.id for e in refs],
                np.array([(e.reference.x, e.reference.y) for e in refs]),
                args.references,
            )
        )
        refs = [e for e in refs if e.reference.id in keep]
    qs = read_positions_csv(args.getty / "queries.csv", args.getty / "images")
    return refs, [e.image for e in qs], f"getty ({len(refs)} references)"


def synthetic_inputs(args) -> tuple[list[RefEntry], list[Path], str]:
    from cli.synthetic import generate_dataset

    root = args.out / "throughput" / f"synthetic-{args.queries + 8}"
    if not (root / "queries.csv").is_file():
        generate_dataset(root, num_queries=args.queries + 8)
    refs = read_positions_csv(root / "references.csv", root / "images")
    qs = read_positions_csv(root / "queries.csv", root / "images")
    return refs, [e.image for e in qs], f"synthetic scene ({len(refs)} references)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--getty", type=Path, default=GETTY)
    p.add_argument("--synthetic", action="store_true", help="use the synthetic scene")
    p.add_argument("--queries", type=int, default=20, help="photos submitted at once")
    p.add_argument("--references", type=int, default=150, help="map size on Getty (0: all)")
    p.add_argument(
        "--map-from", type=Path, help="serve this built map (e.g. bench/out/maps/getty-xfeat)"
    )
    p.add_argument("--workers", default="1,2", help="worker counts to run, in order")
    p.add_argument("--concurrency", type=int, default=1, help="processes per worker")
    p.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--extractor", default=defaults.EXTRACTOR)
    p.add_argument("--retriever", default=defaults.RETRIEVER)
    p.add_argument("--option", action="append", default=[], help="job option key=value")
    p.add_argument(
        "--fine", action="store_true", help="build the map's fine set too (accurate profile)"
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for a batch")
    p.add_argument(
        "--via-http", action="store_true", help="also through the HTTP API, in the same run"
    )
    p.add_argument("--http-clients", type=int, default=4, help="concurrent uploads with --via-http")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    options = parse_options(args.option, None)

    if args.synthetic or not args.getty.is_dir():
        if not args.synthetic:
            print(f"Getty set not found at {args.getty}: falling back to the synthetic scene")
        refs, query_paths, dataset = synthetic_inputs(args)
    else:
        refs, query_paths, dataset = getty_inputs(args)
    # Warm-up photos are references (the timed queries stay unseen); queries repeat if too few.
    warmups = [e.image for e in refs[:4]]
    queries = distinct_photos(query_paths, args.queries)
    if len(query_paths) < args.queries:
        print(f"{len(query_paths)} query photos sent {args.queries} times, each repeat its own job")

    maps_dir = (args.out / "throughput" / "maps").resolve()
    store = MapStore(maps_dir)
    build_s = frames_s = None
    if args.map_from:
        map_name = args.map_from.name
        maps_dir.mkdir(parents=True, exist_ok=True)
        link = store.path(map_name)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(args.map_from.resolve())
        dataset = (
            f"{dataset.split()[0]} ({len(existing_reference_ids(link))} references, {map_name})"
        )
    else:
        map_name = f"tp-{args.extractor}-{args.retriever}-{len(refs)}-{dataset.split()[0]}"
        print(f"building map {map_name}: {dataset}, {args.extractor} + {args.retriever} ...")
        if store.path(map_name).exists():
            shutil.rmtree(store.path(map_name))
        t0 = time.perf_counter()
        device = build_device(args.device)
        build_map(
            store,
            map_name,
            refs,
            args.extractor,
            defaults.EXTRACTOR_CONF if args.extractor == defaults.EXTRACTOR else None,
            args.retriever,
            defaults.RETRIEVER_CONF if args.retriever == defaults.RETRIEVER else None,
            device=device,
        )
        build_s = time.perf_counter() - t0
        if dataset.startswith("getty"):  # placement needs the map's camera, as on Getty maps
            from bench.getty_maps import GETTY_CAMERA

            store.set_camera(map_name, GETTY_CAMERA)
            # The pair frames placement reads, as a queued build stores them by default
            # (FEATURELOC_GEOMETRY_AFTER_BUILD); on the worker's device's host, one thread.
            t0 = time.perf_counter()
            while (step := add_geometry(store, map_name, 100)) is not None and step.remaining:
                pass
            frames_s = time.perf_counter() - t0
        if args.fine:  # the fine set, for the accurate profile (core/finestage.py)
            add_fine_features(
                store,
                map_name,
                refs,
                defaults.FINE_EXTRACTOR,
                defaults.FINE_EXTRACTOR_CONF,
                device=device,
            )

    runs = []
    for n in [int(x) for x in args.workers.split(",")]:
        print(f"running {args.queries} queries through {n} worker(s) ...")
        runs.append(run_with_workers(n, args, maps_dir, map_name, warmups, queries, options))
    base = runs[0]["queries_per_second"]
    for r in runs:
        qps = r["queries_per_second"]
        r["speedup"] = qps / base if qps and base else None

    if args.via_http:
        print_table(
            "the same photos, direct client vs HTTP API (wall clock, submit to last result)",
            ["workers", "direct q/s", "HTTP q/s", "API cost", "HTTP latency p50", "p95", "failed"],
            [
                (
                    r["workers"],
                    r["wall_queries_per_second"],
                    r["http"]["wall_queries_per_second"],
                    f"{100 * r['http_cost']:.1f} %",
                    r["http"]["latency_p50"],
                    r["http"]["latency_p95"],
                    r["http"]["failed"],
                )
                for r in runs
            ],
        )
    built = f"; map build {1000 * build_s / len(refs):.0f} ms/reference" if build_s else ""
    if frames_s:
        built += f", its pair frames {1000 * frames_s / len(refs):.0f} ms/reference"
    print(f"\ndata: {dataset}{built}")
    print_table(
        f"throughput, {args.queries} queries at once, {args.database}, options {options or '{}'}",
        ["workers", "queries/s", "speed-up", "latency p50", "p95", "service p50", "p95", "failed"],
        [
            (
                r["workers"],
                r["queries_per_second"],
                r["speedup"],
                r["latency_p50"],
                r["latency_p95"],
                r["service_p50"],
                r["service_p95"],
                r["failed"],
            )
            for r in runs
        ],
    )
    stages = sorted({k for r in runs for k in r["stage_seconds"]})
    print_table(
        "seconds per query by stage (jobs' stored timings) and host CPU per query (ms)",
        ["processes", *stages, "host CPU ms", "models ms", "rest ms"],
        [
            (
                r["processes"],
                *(r["stage_seconds"].get(k, 0.0) for k in stages),
                1000 * r["host_cpu_seconds_per_query"],
                1000 * r["model_seconds_per_query"],
                1000 * r["host_cpu_seconds_outside_models"],
            )
            for r in runs
        ],
    )
    gpu_runs = [r for r in runs if r["gpu"]]
    if gpu_runs:
        print_table(
            "GPU (NVML samples over the timed batch)",
            ["processes", "GPU", "util mean %", "util max %", "memory max MiB"],
            [
                (
                    r["processes"],
                    r["gpu"]["gpu"],
                    r["gpu"]["gpu_util_mean_percent"],
                    r["gpu"]["gpu_util_max_percent"],
                    r["gpu"]["gpu_memory_max_mib"],
                )
                for r in gpu_runs
            ],
        )
    else:
        print("\nGPU: not measured (no GPU, or nvidia-ml-py not installed)")
    out = write_json(
        args.out,
        f"throughput-{args.database}.json",
        {
            "dataset": dataset,
            "map": map_name,
            "extractor": args.extractor,
            "retriever": args.retriever,
            "options": options,
            "database": args.database,
            "queries": args.queries,
            "device": args.device,
            "concurrency": args.concurrency,
            "build_seconds": build_s,
            "build_ms_per_reference": 1000 * build_s / len(refs) if build_s else None,
            "pair_frames_ms_per_reference": 1000 * frames_s / len(refs) if frames_s else None,
            "runs": runs,
            "machine": machine_info(),
        },
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
