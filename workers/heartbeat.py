"""Job heartbeats: while a job runs, its process says so every few seconds.

Recovery (workers/recovery.py) re-sends a ``running`` job whose heartbeat stopped for
``stale_after`` seconds, so a dead worker's job is back in the queue within a minute, while a
long job on a live worker is never sent twice. A second delivery of a job whose holder is alive
is skipped (:func:`holder_alive`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from types import TracebackType

from db import queries
from db.session import Database

log = logging.getLogger(__name__)


def holder_alive(worker: str | None) -> bool:
    """Whether the process named ``host:pid`` (workers.runtime.worker_name) may still run its job.

    On this host the process table says; on another host only its heartbeat can.
    """
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return not _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """A killed process whose parent died too stays a zombie where the container's PID 1 does not
    reap: ``kill(pid, 0)`` still finds it, yet it runs nothing (proc(5): state ``Z``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no procfs (macOS): trust kill()
    return stat.rpartition(")")[2].split()[0] == "Z"


class Heartbeat:
    """A thread that refreshes ``jobs.heartbeat_at`` every ``interval`` seconds until exit."""

    def __init__(self, db: Database, job_id: str, worker: str, interval: float) -> None:
        self.db, self.job_id, self.worker, self.interval = db, job_id, worker, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.db.session() as s:
                    if not queries.heartbeat(s, self.job_id, self.worker):
                        return  # the job was taken over or finished: nothing left to vouch for
            except Exception as exc:  # the database is away: the next beat tries again
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc)
