"""Start and stop real ``featureloc worker`` and ``featureloc serve`` processes, run the CLI: used
by tests, benchmarks and tooling."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from tests.support.paths import REPO


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``featureloc ARGS`` in a subprocess with ``env``; its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ServiceProcess:
    """A ``featureloc`` subcommand in its own process, its output appended to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path = REPO) -> None:
        self.env = env
        self.log_path = log_path
        self.cwd = cwd  # whose code runs: this checkout unless a benchmark compares another
        self.proc: subprocess.Popen | None = None

    def _spawn(self, *args: str) -> int:
        """Start ``featureloc ARGS``; returns where its output begins in the log."""
        self._log = self.log_path.open("ab")
        start_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
        )
        return start_offset

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # a worker's warm shutdown finishes its current task
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


class WorkerProcess(ServiceProcess):
    """A real ``featureloc worker`` (Celery prefork) process."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        concurrency: int = 1,
        name: str | None = None,
        cwd: Path = REPO,
    ) -> None:
        super().__init__(env, log_path, cwd)
        self.concurrency = concurrency
        self.name = name or f"w{uuid.uuid4().hex[:6]}@%h"

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        start_offset = self._spawn(
            "worker",
            f"--concurrency={self.concurrency}",
            "--loglevel=info",
            f"--hostname={self.name}",
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


class ApiServerProcess(ServiceProcess):
    """A real ``featureloc serve`` (uvicorn) process on 127.0.0.1, on a free port."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        super().__init__(env, log_path)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ApiServerProcess:
        self._spawn("serve", "--port", str(self.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API server exited early:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:  # not listening yet (URLError is an OSError)
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"API server not up after {timeout} s:\n{self.log()[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
