"""A throw-away PostgreSQL schema, for tests and benchmarks that must not share tables."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine
from sqlalchemy.schema import CreateSchema, DropSchema


@contextmanager
def temporary_schema(admin_url: str, prefix: str = "t") -> Iterator[str]:
    """Create a fresh schema, yield a URL whose search_path points at it, then drop it."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url)
    with admin.begin() as conn:
        conn.execute(CreateSchema(schema))
    sep = "&" if "?" in admin_url else "?"
    try:
        yield f"{admin_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(DropSchema(schema, cascade=True))
        admin.dispose()
