"""Persistence for featureloc: SQLAlchemy models, sessions, alembic migrations and queries.

Workers and the CLI use :mod:`db.queries` through a :class:`db.session.Database`::

    init_db(url)                 # migrate to head (idempotent)
    db = Database(url)
    with db.session() as s:      # commits on success, rolls back on error
        job, created = queries.create_job(s, job_id, "getty", image_key, options)
"""

from db.models import Base, CandidateMatch, Job, JobStatus, Map, ReferenceImage
from db.session import Database, dispose_engines, init_db, make_engine, make_session_factory

__all__ = [
    "Base",
    "CandidateMatch",
    "Database",
    "Job",
    "JobStatus",
    "Map",
    "ReferenceImage",
    "dispose_engines",
    "init_db",
    "make_engine",
    "make_session_factory",
]
