"""Engines, sessions and schema migration.

``make_engine`` caches one engine per URL per process: workers call it for every task, and a
forked child must never reuse the parent's pooled connections (see ``_forget_inherited_engines``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# How long a SQLite writer waits for another process's write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _forget_inherited_engines() -> None:
    """In a forked child, drop the parent's engines without closing their sockets.

    Closing would send a terminate message on a socket the parent still uses.
    """
    global _engines_lock
    _engines_lock = threading.Lock()
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


os.register_at_fork(after_in_child=_forget_inherited_engines)

# SQLite keeps the lock state of each open database file in process memory. A child forked
# while another thread of its parent is inside a transaction inherits that state for good:
# every write it makes then fails with "database is locked", though no process holds the lock
# (a worker's pool processes are forked from a main process whose stale check runs in a
# thread). So a fork waits until no SQLite session of the process is open.
_sqlite_sessions = threading.RLock()


def _new_sqlite_guard() -> None:
    global _sqlite_sessions
    _sqlite_sessions = threading.RLock()


@contextmanager
def _sqlite_session() -> Iterator[None]:
    """Hold the fork guard for one session; waiting for another thread's session at most as
    long as SQLite waits for another process's write lock (then, like SQLite, "locked")."""
    guard = _sqlite_sessions
    if not guard.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
        raise TimeoutError("database is locked: another thread of this process kept its session")
    try:
        yield
    finally:
        guard.release()


os.register_at_fork(
    before=lambda: _sqlite_sessions.acquire(),
    after_in_parent=lambda: _sqlite_sessions.release(),
    after_in_child=_new_sqlite_guard,
)


def _is_sqlite_file(database: str | None) -> bool:
    return bool(database) and database != ":memory:" and not str(database).startswith("file:")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 driver: SAVEPOINTs and reads become transactional.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers do not block the writer, several worker processes can share one file.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")  # ON DELETE CASCADE is off by default in SQLite
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front (waiting up to busy_timeout). A deferred
        # transaction that reads then writes fails at once with "database is locked" when another
        # process committed in between; busy_timeout cannot help it.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and _is_sqlite_file(parsed.database):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _configure_sqlite(engine)
        return engine
    # pool_pre_ping: a worker idle for hours must survive PostgreSQL restarts and dropped sockets.
    return create_engine(parsed, pool_pre_ping=True)


def make_engine(url: str) -> Engine:
    """The engine for ``url``, created once per process.

    SQLite: the file's folder is created, WAL + busy_timeout + foreign keys are set on connect.
    PostgreSQL: connections are pinged before use. A schema can be chosen in the URL with
    ``?options=-csearch_path%3Dmyschema``.
    """
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = _create_engine(url)
        return engine


def dispose_engines(url: str | None = None) -> None:
    """Close the pooled connections of one cached engine (or all) and forget it."""
    with _engines_lock:
        urls = [url] if url is not None else list(_engines)
        for key in urls:
            engine = _engines.pop(key, None)
            if engine is not None:
                engine.dispose()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: rows returned from a committed session stay readable (workers and the
    # CLI read job fields after the block that loaded them).
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """Alembic config built in code; the URL travels in ``attributes``, never through ini
    interpolation (which would choke on ``%`` in passwords)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def init_db(url: str, revision: str = "head") -> None:
    """Create or upgrade the schema at ``url`` to ``revision`` (idempotent)."""
    config = alembic_config(url)
    with make_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


class Database:
    """An engine and its session factory, for one URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = make_session_factory(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed if the block succeeds, rolled back if it raises.
        On SQLite, a fork of this process waits until it ends (see ``_sqlite_sessions``)."""
        guard = _sqlite_session() if self.engine.dialect.name == "sqlite" else nullcontext()
        with guard, self.sessionmaker.begin() as session:
            yield session

    def init(self) -> None:
        """Migrate the schema to head."""
        init_db(self.url)

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"
