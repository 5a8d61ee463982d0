"""Security against real services: only JSON reaches a task (a pickled message is refused
unopened), credentials never reach logs or CLI output, blob keys are content hashes (no client
path reaches the filesystem), and SQL is only built by the ORM or with bound parameters."""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kombu import Queue

from tests.support.faults import (
    JOB_OPTIONS,
    PrivateRedis,
    make_tiny_scene,
    query_images,
    stack,
    wait_until,
)
from tests.support.paths import REPO
from workers.blobstore import DirectoryBlobStore, InvalidBlobKey, blob_key
from workers.celery_app import LOCALISE_TASK

pytestmark = pytest.mark.integration

REDIS_PASSWORD = "redis-S3cret-9f2c"
DB_PASSWORD = "db-S3cret-71ab"  # the test server trusts loopback, so any password connects


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("security")
    scene = make_tiny_scene(tmp / "scene", num_queries=2)
    redis = PrivateRedis(tmp / "redis", password=REDIS_PASSWORD).start()
    try:
        with stack(tmp / "svc", scene, broker_url=redis.url) as st:
            # The database URL the worker and CLI get carries a password too.
            st.env["FEATURELOC_DATABASE_URL"] = st.db_url.replace(
                "postgres@", f"postgres:{DB_PASSWORD}@"
            )
            assert DB_PASSWORD in st.env["FEATURELOC_DATABASE_URL"]
            worker = st.worker(loglevel="debug").start()
            try:
                yield st, worker, redis
            finally:
                worker.stop()
    finally:
        redis.stop()


class _Exploit:
    """Unpickling this creates a file: proof that a pickle was opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_message_is_refused_and_the_worker_serves_on(service, tmp_path):
    st, worker, _ = service
    client = st.client()
    marker = tmp_path / "pwned"
    queue = st.settings.localise_queue
    with client.app.connection_for_write() as conn:
        conn.Producer().publish(
            pickle.dumps(_Exploit(marker)),
            routing_key=queue,
            exchange="",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"lang": "py", "task": LOCALISE_TASK, "id": "pickled-1", "retries": 0},
            declare=[Queue(queue)],
        )
    wait_until(lambda: "untrusted content" in worker.log(), 30, "the worker to refuse it")
    assert not marker.exists(), "the pickle was unpickled"

    done = client.wait(client.submit(query_images(st.scene)[0], "tiny", JOB_OPTIONS), 60)
    assert done.status == "done"
    assert worker.proc.poll() is None
    assert client.app.conf.accept_content == ["json"]


def _cli(st, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env or st.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_credentials_never_reach_logs_or_output(service):
    st, worker, redis = service
    image = str(query_images(st.scene)[1])
    outputs = [
        _cli(st, "localise", image, "--map", "tiny", "--option", "top_k=5", "--wait"),
        _cli(st, "jobs", "list", "--json"),
        _cli(st, "jobs", "recover"),
        _cli(st, "map", "list"),
    ]
    for out in outputs:
        assert out.returncode == 0, out.stderr
    listed = [json.loads(line) for line in outputs[1].stdout.splitlines()]
    assert "done" in {j["status"] for j in listed}, "the job localise --wait waited for"

    # The broker is away: the error names it, masked.
    redis.kill()
    try:
        refused = _cli(st, "localise", str(query_images(st.scene)[0]), "--map", "tiny")
    finally:
        redis.start()
    said = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "is unavailable" in said, said
    outputs.append(refused)
    wait_until(lambda: worker.log().count("Connected to redis://") >= 2, 60, "reconnect")

    log = worker.log()
    assert "redis://:**@127.0.0.1" in log, "Celery's banner shows the broker, masked"
    for text in [log] + [o.stdout + o.stderr for o in outputs]:
        assert REDIS_PASSWORD not in text
        assert DB_PASSWORD not in text


def test_blob_keys_are_content_hashes(service, tmp_path):
    st, worker, _ = service
    store = DirectoryBlobStore(tmp_path / "blobs")
    key = store.put(b"some bytes")
    assert key == blob_key(b"some bytes") and len(key) == 64
    assert store.get(key) == b"some bytes"
    (tmp_path / "secret.txt").write_text("secret")
    for hostile in ["../secret.txt", "../../etc/passwd", "/etc/passwd", key[:2] + "/../x", ""]:
        with pytest.raises(InvalidBlobKey):
            store.get(hostile)
        with pytest.raises(InvalidBlobKey):
            store.delete(hostile)
    assert (tmp_path / "secret.txt").exists()
    store.delete(key)
    assert not store.exists(key)

    # A sender in another language could put a path where the key goes: the job fails cleanly.
    client = st.client()
    job_id = "path-traversal-" + str(time.time_ns())
    client.app.send_task(
        LOCALISE_TASK,
        args=[job_id, "tiny", "../../../../etc/passwd", {}],
        queue=st.settings.localise_queue,
    )
    wait_until(lambda: job_id in {j.id for j in client.list_jobs(limit=1000)}, 60, "the job row")
    res = client.wait(job_id, timeout=60)  # the worker creates the row of a sent-only job
    # Refused by the message check (workers/messages.py) before the blob store is asked.
    assert res.status == "failed" and "invalid image key" in res.error, res.error
    assert res.map_name == "tiny", "the valid fields of a refused message are kept"
    assert worker.proc.poll() is None


SQL_CALLS = {"text", "execute", "exec_driver_sql", "executescript"}


def _formatted_sql(tree: ast.AST) -> list[int]:
    """Lines calling text()/execute()/exec_driver_sql() with SQL built by formatting, except
    f-strings of ALL_CAPS module constants (e.g. a PRAGMA with a fixed timeout)."""
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", None))
        if name not in SQL_CALLS:
            continue
        arg = node.args[0]
        if isinstance(arg, ast.JoinedStr):
            names = [
                n.id for v in arg.values if isinstance(v, ast.FormattedValue)
                for n in ast.walk(v.value) if isinstance(n, ast.Name)
            ]  # fmt: skip
            if not names or any(not n.isupper() for n in names):
                bad.append(node.lineno)
        elif isinstance(arg, ast.BinOp) or (
            isinstance(arg, ast.Call) and getattr(arg.func, "attr", None) == "format"
        ):
            bad.append(node.lineno)
    return bad


def test_sql_is_only_built_by_the_orm_or_bound_parameters():
    sources = [p for d in ("core", "db", "workers", "cli") for p in (REPO / d).rglob("*.py")]
    assert len(sources) > 20
    offenders = {
        str(p.relative_to(REPO)): lines
        for p in sources
        if (lines := _formatted_sql(ast.parse(p.read_text())))
    }
    assert offenders == {}
    # The checker itself catches what it is meant to.
    assert _formatted_sql(ast.parse('s.execute(text(f"SELECT * FROM t WHERE id = {x}"))'))
    assert _formatted_sql(ast.parse('c.exec_driver_sql("DELETE FROM t WHERE id = %s" % x)'))
    assert not _formatted_sql(ast.parse('c.exec_driver_sql(f"PRAGMA busy_timeout={MS}")'))


def test_flower_requires_auth(service, tmp_path):
    import base64
    import urllib.error
    import urllib.request

    from cli.main import app
    from tests.support.faults import free_port

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    if "flower" not in names:
        pytest.skip("no `featureloc flower` command yet")
    st, _, _ = service
    env = {k: v for k, v in st.env.items() if k != "FLOWER_BASIC_AUTH"}
    refused = _cli(st, "flower", "--address", "127.0.0.1", env=env)
    assert refused.returncode == 1 and "basic-auth" in refused.stderr, refused.stderr

    port, password = free_port(), "flower-S3cret-55d0"
    log = tmp_path / "flower.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "flower", "--address", "127.0.0.1"]
            + [f"--port={port}"],
            env={**env, "FLOWER_BASIC_AUTH": f"admin:{password}"},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/workers"

    def status(auth: str | None) -> int:
        request = urllib.request.Request(url)
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    try:
        wait_until(lambda: status(None) != 0, 60, "Flower to listen", poll=0.3)
        assert status(None) == 401
        assert status("admin:wrong") == 401
        assert status(f"admin:{password}") == 200
    finally:
        proc.terminate()
        proc.wait(10)
    text = log.read_text(errors="replace")
    for secret in (password, REDIS_PASSWORD, DB_PASSWORD):
        assert secret not in text
