"""Real services for tests: a PostgreSQL schema of its own, a Celery worker process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from db.schemas import temporary_schema

REDIS_URL = os.environ.get("FEATURELOC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "FEATURELOC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_redis() -> None:
    if not reachable("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema, dropped afterwards; yields a URL whose search_path points at it."""
    if not reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    with temporary_schema(POSTGRES_URL) as url:
        yield url


def service_env(data_dir: Path, database_url: str, tag: str) -> dict[str, str]:
    """Environment for a worker and client that share nothing with other test runs."""
    env = os.environ.copy()
    env.update(
        FEATURELOC_DATA_DIR=str(data_dir),
        FEATURELOC_DATABASE_URL=database_url,
        FEATURELOC_BROKER_URL=REDIS_URL,
        FEATURELOC_LOCALISE_QUEUE=f"test-{tag}-localise",
        FEATURELOC_BUILD_QUEUE=f"test-{tag}-build",
        FEATURELOC_TORCH_THREADS="1",
    )
    return env


class WorkerProcess:
    """A real ``featureloc worker`` (Celery prefork) process."""

    def __init__(
        self, env: dict[str, str], log_path: Path, concurrency: int = 1, name: str | None = None
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.concurrency = concurrency
        self.name = name or f"w{uuid.uuid4().hex[:6]}@%h"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        self._log = self.log_path.open("ab")
        start_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "worker",
                f"--concurrency={self.concurrency}",
                "--loglevel=info",
                f"--hostname={self.name}",
            ],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[start_offset:].decode(errors="replace")
            if " ready." in text:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{text[-3000:]}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown: finish the current task
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
