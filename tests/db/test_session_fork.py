"""A process forked while another of its threads is in a SQLite session can still write
(db/session.py ``_sqlite_sessions``): the worker's pool processes are forked from a main
process whose stale check runs in a thread."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

import db.session as sessions


def test_a_child_forked_during_a_session_can_write(tmp_path: Path, monkeypatch) -> None:
    # A short busy timeout, so that a child that cannot write says so in seconds.
    monkeypatch.setattr(sessions, "SQLITE_BUSY_TIMEOUT_MS", 2000)
    url = f"sqlite:///{tmp_path / 'fork.db'}"
    database = sessions.Database(url)
    with database.session() as s:
        s.execute(text("CREATE TABLE t (x INTEGER)"))
    inside = threading.Event()

    def hold() -> None:
        with database.session() as s:
            s.execute(text("INSERT INTO t VALUES (1)"))
            inside.set()
            time.sleep(0.5)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    started = time.monotonic()
    pid = os.fork()  # waits for the holder's session to end
    if pid == 0:  # the child: write, and say how it went by the exit status only
        try:
            with sessions.Database(url).session() as s:
                s.execute(text("INSERT INTO t VALUES (2)"))
        except BaseException:
            os._exit(1)
        os._exit(0)
    waited = time.monotonic() - started
    _, status = os.waitpid(pid, 0)
    holder.join()
    assert os.waitstatus_to_exitcode(status) == 0, "the child could not write"
    assert waited >= 0.3  # the fork waited for the session (0.5 s) rather than copy it
    with database.session() as s:
        assert sorted(s.execute(text("SELECT x FROM t")).scalars()) == [1, 2]


def test_a_session_held_by_another_thread_is_waited_for_then_refused(tmp_path, monkeypatch):
    """Sessions of one process take turns on SQLite (its writes do anyway); one kept open past
    the busy timeout makes the next fail as SQLite would, "database is locked", not hang."""
    monkeypatch.setattr(sessions, "SQLITE_BUSY_TIMEOUT_MS", 300)
    database = sessions.Database(f"sqlite:///{tmp_path / 'turns.db'}")
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with database.session():
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    try:
        with pytest.raises(TimeoutError, match="database is locked"), database.session():
            pass
    finally:
        release.set()
        holder.join()
    with database.session() as s:  # free again
        assert s.execute(text("SELECT 1")).scalar() == 1
