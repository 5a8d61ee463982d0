"""Claiming a job when another process may hold it, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import socket

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
