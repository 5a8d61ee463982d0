"""Claiming a job when another process may hold it, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from db import queries
from workers.heartbeat import holder_alive


def test_a_running_job_held_elsewhere_is_not_claimed_again(database):
    with database.session() as s:
        queries.create_job(s, "j", "m", "img", {})
        queries.claim_job(s, "j", "w1")
    with database.session() as s:
        job = queries.claim_job(s, "j", "w2", held_elsewhere=lambda j: j.worker == "w1")
        assert (job.status, job.worker, job.attempts) == ("running", "w1", 1), "skipped"
    with database.session() as s:
        job = queries.claim_job(s, "j", "w2", held_elsewhere=lambda j: False)
        assert (job.status, job.worker, job.attempts) == ("running", "w2", 2), "taken over"


def test_holder_alive_asks_the_process_table_on_this_host():
    host = socket.gethostname()
    assert holder_alive(f"{host}:{os.getpid()}")
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    assert not holder_alive(f"{host}:{dead}"), "a reaped process holds nothing"
    assert holder_alive(f"another-host:{dead}"), "elsewhere only its heartbeat can tell"


def test_a_killed_process_nobody_reaped_holds_nothing():
    """A pool process killed with its parent stays a zombie where PID 1 does not reap (as in many
    containers): the process table still lists it, yet it runs no job."""
    host = socket.gethostname()
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{zombie}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        assert not holder_alive(f"{host}:{zombie}")
    finally:
        os.waitpid(zombie, 0)
