"""Fault injection for the reliability tests: a private Redis to kill, a TCP proxy to cut the
database, a tiny map whose jobs take tens of milliseconds, and helpers to count what was lost.

Never touches the shared Redis (6379) or PostgreSQL (5432) servers: faults are injected on a
private ``redis-server`` on a free loopback port and on a proxy in front of PostgreSQL.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import pytest
from celery import Celery
from sqlalchemy import func, select

from db.models import CandidateMatch, Job
from db.session import Database, init_db
from tests.support.services import (
    WorkerProcess,
    postgres_schema,
    register_scene_map,
    service_env,
    service_settings,
)
from workers.celery_app import LOCALISE_TASK
from workers.client import BrokerUnavailable, Client
from workers.settings import Settings

# Every job of the fault tests uses these options: a shortlist of 5 keeps a job near 50 ms.
JOB_OPTIONS = {"top_k": 5}
# Short limits and heartbeats so that stale detection happens within seconds.
FAST_RECOVERY = {
    "task_time_limit": "6",
    "task_soft_time_limit": "5",
    "stale_check_interval": "1",
    "heartbeat_interval": "0.5",
    "stale_after": "3",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll=0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def wait_running(db, job_id: str, timeout: float = 60) -> str:
    """Wait until the job is running; returns the worker ("host:pid") that claimed it."""
    seen: dict[str, str] = {}

    def running() -> bool:
        with db.session() as s:
            job = s.get(Job, job_id)
            if job is not None and job.status == "running":
                seen["worker"] = job.worker
                return True
        return False

    wait_until(running, timeout, f"job {job_id} to start", poll=0.02)
    return seen["worker"]


# --------------------------------------------------------------------------------- private Redis


class PrivateRedis:
    """A ``redis-server`` of our own on a free loopback port, to kill and restart at will.

    Started with ``--save "" --appendonly no``: a restart loses every queued and unacknowledged
    message, the worst case the service must survive (recovery re-sends from the database).
    ``persistent=True`` runs it as docker-compose.yml does, with an append-only file (fsync on
    every write here, so that even SIGKILL loses nothing): a restart keeps the messages.
    """

    def __init__(
        self, workdir: Path, password: str | None = None, persistent: bool = False
    ) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        if self.persistent:
            args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._answers, 10, "private redis-server to answer")
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    s.recv(64)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save, clients see their connections reset."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()


# ----------------------------------------------------------------------------------- TCP proxy


class TcpProxy:
    """Loopback TCP proxy; ``cut()`` drops every connection and refuses new ones until
    ``restore()``. Put between a worker and PostgreSQL it makes the database "unavailable"."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = threading.Event()
        self._closed = False
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()  # the peer sees the connection closed at once
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.connections += 1
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._open.difference_update((src, dst))

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            sockets = list(self._open)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()


# ------------------------------------------------------------------------------ tiny map, stack


def make_tiny_scene(
    out: Path,
    num_queries: int = 8,
    size: tuple[int, int] = (240, 180),
    grid: tuple[int, int] = (2, 2),
    views_per_position: int = 4,
) -> Path:
    """16 references at 240x180 (2x2 positions x 4 views) and ``num_queries`` query photos, or
    smaller still for tests that run thousands of jobs."""
    from cli.synthetic import generate_dataset

    generate_dataset(
        out,
        seed=3,
        grid=grid,
        views_per_position=views_per_position,
        num_queries=num_queries,
        size=size,
    )
    return out


# A job that takes seconds on its own merits, a window to kill a worker in: references and
# query at 1280x960 (queries are brought to the map's scale, so an enlarged query would not
# do) with up to 8000 SIFT keypoints each, about 5 s per job on a 2-core CPU (the map builds
# in about 5 s). Use ``make_slow_scene`` with ``stack(..., sift_conf=SLOW_SIFT)``.
SLOW_SIFT = {"max_keypoints": 8000}


def make_slow_scene(out: Path) -> Path:
    return make_tiny_scene(out, num_queries=1, size=(1280, 960))


def query_images(scene: Path) -> list[Path]:
    return sorted((scene / "images").glob("query_*.jpg"))


def variants(data: bytes, count: int) -> list[bytes]:
    """``count`` distinct byte strings that decode to the same JPEG: distinct jobs, equal work.

    A JPEG comment segment (FFFE) after SOI carries a counter; decoders ignore it.
    """
    assert data[:2] == b"\xff\xd8"
    out = []
    for i in range(count):
        text = f"featureloc-variant-{i}".encode()
        segment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
        out.append(data[:2] + segment + data[2:])
    return out


@dataclass
class Stack:
    """A data dir, a database, a tiny map, settings/env for a worker and a client."""

    data: Path
    db_url: str  # what the client and tests use
    env: dict[str, str]  # the worker's environment
    settings: Settings
    scene: Path

    def client(self) -> Client:
        return Client(self.settings)

    def worker(self, name: str = "worker", concurrency: int = 1, **env) -> WorkerProcess:
        return WorkerProcess({**self.env, **env}, self.data / f"{name}.log", concurrency)

    def db(self) -> Database:
        return Database(self.db_url)


@contextlib.contextmanager
def stack(
    tmp: Path,
    scene: Path,
    backend: str = "postgres",
    broker_url: str | None = None,
    sift_conf: dict | None = None,
    **overrides: str,
) -> Iterator[Stack]:
    """Database (fresh PostgreSQL schema or SQLite file), tiny map registered, env for workers.

    ``sift_conf`` configures the map's extractor; ``overrides`` are extra ``FEATURELOC_*``
    settings (lower-case names without the prefix).
    """
    db_ctx = (
        postgres_schema()
        if backend == "postgres"
        else contextlib.nullcontext(f"sqlite:///{tmp / 'featureloc.db'}")
    )
    with db_ctx as db_url:
        env = service_env(tmp, db_url, uuid.uuid4().hex[:8])
        if broker_url:
            env["FEATURELOC_BROKER_URL"] = broker_url
        env.update({f"FEATURELOC_{k.upper()}": str(v) for k, v in overrides.items()})
        settings = service_settings(env)
        init_db(db_url)
        register_scene_map(settings, scene, "tiny", sift_conf)
        yield Stack(tmp, db_url, env, settings, scene)


# ------------------------------------------------------------------------------------ map builds


def big_references(scene: Path, out: Path, count: int, size=(2000, 1500)) -> Path:
    """The first ``count`` references of the scene upscaled to ``size`` (2000x1500: about a
    second of SIFT each, a build chunk lasts long enough to be killed in), with their positions
    CSV."""
    with (scene / "references.csv").open() as f:
        rows = list(csv.DictReader(f))[:count]
    (out / "images").mkdir(parents=True)
    for r in rows:
        image = cv2.imread(str(scene / "images" / f"{r['id']}.jpg"))
        cv2.imwrite(str(out / "images" / f"{r['id']}.jpg"), cv2.resize(image, size))
    with (out / "references.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "x", "y"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("id", "x", "y")} for r in rows)
    return out


def submit_big_build(st: Stack, refs: Path, chunk_size: int):
    """Queue map "big" of ``refs`` (SIFT) in chunks of ``chunk_size``; its BuildPlan."""
    from workers.build import submit_build

    return submit_build(
        st.settings,
        st.client().app,
        "big",
        refs / "images",
        refs / "references.csv",
        extractor="sift",
        chunk_size=chunk_size,
    )


def build_ended(st: Stack, build_id: str, timeout: float):
    """The build's row once it is done or failed (an AssertionError after ``timeout`` s)."""
    from workers.build import build_progress

    ended = ("done", "failed")
    wait_until(lambda: build_progress(st.settings, build_id).status in ended, timeout, build_id)
    return build_progress(st.settings, build_id)


# ------------------------------------------------------------------------------------- counting


def job_summary(db: Database) -> dict[str, int]:
    """Jobs per status."""
    with db.session() as s:
        return dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())


def duplicate_candidates(db: Database) -> int:
    """Candidate rows beyond one per (job, reference): must be 0 (the unique constraint and
    save_result's delete-then-insert both guard it)."""
    with db.session() as s:
        total = s.scalar(select(func.count()).select_from(CandidateMatch))
        distinct = s.scalar(
            select(func.count()).select_from(
                select(CandidateMatch.job_id, CandidateMatch.reference_id).distinct().subquery()
            )
        )
    return total - distinct


def orphan_candidates(db: Database) -> int:
    """Candidate rows of jobs that are not done: a half-written result."""
    with db.session() as s:
        return s.scalar(
            select(func.count())
            .select_from(CandidateMatch)
            .join(Job, Job.id == CandidateMatch.job_id)
            .where(Job.status != "done")
        )


def pool_children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (the prefork pool of a Celery worker)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(pid)


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and its pool: no warm shutdown, no chance to ack or requeue."""
    for child in pool_children(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def send_by_name(
    broker_url: str, queue: str, args: Any, kwargs: dict | None = None, task: str = LOCALISE_TASK
) -> None:
    """Send a task the way another service does: by name, JSON, with a plain Celery app (not
    featureloc's client, which records the job first)."""
    sender = Celery(broker=broker_url)
    sender.conf.update(task_serializer="json", broker_connection_retry_on_startup=False)
    sender.send_task(task, args=args, kwargs=kwargs or {}, queue=queue)
    sender.close()


def write_blob(blob_dir: Path, data: bytes) -> str:
    """Store a photo as the README tells other services: SHA-256 key, temporary name, rename."""
    key = hashlib.sha256(data).hexdigest()
    path = blob_dir / key[:2] / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.rename(path)
    return key


def submit_share(
    settings: Settings,
    images: list[bytes],
    map_name: str,
    options: dict,
    broker_patience: float = 0.0,
) -> list:
    """Submit ``images`` from a fresh Client: the body of one load-test client process.

    With ``broker_patience`` seconds, a photo refused because the broker is down is submitted
    again (as the client's error tells its caller to) until it is accepted or patience runs out.
    """
    client = Client(settings)
    ids = []
    for img in images:
        deadline = time.monotonic() + broker_patience
        while True:
            try:
                ids.append(client.submit(img, map_name, options))
                break
            except BrokerUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return ids
