"""The one retry policy: what the tasks carry, and what Celery does with it (in process)."""

from __future__ import annotations

import pytest
from celery import Celery
from sqlalchemy.exc import DBAPIError, OperationalError

from workers.celery_app import BUILD_CHUNK_TASK, FINALISE_BUILD_TASK, LOCALISE_TASK, make_celery
from workers.retry import MAX_RETRIES, RETRY_POLICY, TransientFault, is_transient, last_try
from workers.settings import Settings


def test_every_task_carries_the_policy(tmp_path):
    app = make_celery(Settings(data_dir=tmp_path, broker_url="memory://"))
    app.loader.import_default_modules()
    for name in (LOCALISE_TASK, BUILD_CHUNK_TASK, FINALISE_BUILD_TASK):
        task = app.tasks[name]
        assert task.autoretry_for == (TransientFault,), name
        assert (task.max_retries, task.retry_backoff, task.retry_backoff_max) == (
            MAX_RETRIES, 2, 60,
        )  # fmt: skip


def test_transient_faults_are_told_apart():
    assert is_transient(OperationalError("SELECT 1", {}, Exception("database is locked")))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    invalidated = DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert is_transient(invalidated)
    assert not is_transient(DBAPIError("SELECT 1", {}, Exception("syntax")))
    assert not is_transient(ValueError("a bug"))


def test_a_transient_fault_is_retried_until_the_retries_are_spent():
    app = Celery("retry-test", broker="memory://")
    app.conf.task_always_eager = True  # retries run at once, in this process
    calls: list[bool] = []

    @app.task(bind=True, **RETRY_POLICY)
    def flaky(self, fail_times: int) -> str:
        calls.append(last_try(self))
        if len(calls) <= fail_times:
            raise TransientFault("database away")
        return "done"

    assert flaky.apply(args=[2]).get() == "done" and calls == [False, False, False]
    calls.clear()
    with pytest.raises(TransientFault):
        flaky.apply(args=[100]).get()
    assert len(calls) == MAX_RETRIES + 1 and calls[-1] and not any(calls[:-1])
