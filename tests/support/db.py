"""Database fixtures (a pytest plugin, loaded from conftest.py).

``db_url`` is parametrised over SQLite (a file under tmp_path) and PostgreSQL. Each PostgreSQL test
gets its own freshly created schema (selected with ``search_path`` in the URL), dropped afterwards,
so parallel and earlier runs never collide. PostgreSQL tests are skipped when the server is
unreachable. Server: ``FEATURELOC_TEST_POSTGRES_URL`` or the local default below.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from functools import cache

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db.session import Database, dispose_engines, init_db

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_base_url() -> str:
    return os.environ.get("FEATURELOC_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@cache
def postgres_unreachable_reason() -> str | None:
    """None when the test server answers, else why not (checked once per session)."""
    engine = create_engine(postgres_base_url(), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to connect means: skip, do not error
        return f"PostgreSQL unreachable at {postgres_base_url()}: {exc.__class__.__name__}"
    finally:
        engine.dispose()
    return None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL schema (dropped after the test)."""
    reason = postgres_unreachable_reason()
    if reason:
        pytest.skip(reason)
    schema = f"test_featureloc_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_base_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = (
        make_url(postgres_base_url())
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    try:
        yield url
    finally:
        dispose_engines(url)
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> Iterator[str]:
    """URL of a SQLite file in a not yet existing folder (make_engine must create it)."""
    url = f"sqlite:///{tmp_path / 'db' / 'featureloc.db'}"
    yield url
    dispose_engines(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def db_url(request) -> str:
    """An empty database on each backend (not migrated)."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def database(db_url) -> Database:
    """A migrated database on each backend."""
    init_db(db_url)
    return Database(db_url)
