"""Start and stop a real ``featureloc worker`` process: used by tests, benchmarks and tooling."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.support.paths import REPO


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
            cwd=REPO,
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
