"""The S3 blob store against a real S3 protocol server (moto's, on loopback), not a mocked boto3.

One job also goes end to end through a real worker process that reads its photo from the bucket.
"""

from __future__ import annotations

import csv
import uuid

import pytest
from pydantic import SecretStr

from tests.support.s3 import ACCESS_KEY, SECRET_KEY, s3_client
from workers.blobstore import BlobNotFound, InvalidBlobKey, S3BlobStore, blob_key, make_blob_store
from workers.settings import Settings

pytest.importorskip("boto3")
pytest.importorskip("moto.server")


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"featureloc-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def _settings(s3_endpoint: str, bucket: str, **extra) -> Settings:
    return Settings(
        blob_backend="s3",
        s3_bucket=bucket,
        s3_prefix="q",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id=SecretStr(ACCESS_KEY),
        s3_secret_access_key=SecretStr(SECRET_KEY),
        **extra,
    )


def _objects(store: S3BlobStore) -> list[str]:
    listing = store.client.list_objects_v2(Bucket=store.bucket)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_round_trip_and_layout(s3_endpoint, bucket):
    store = make_blob_store(_settings(s3_endpoint, bucket))
    assert isinstance(store, S3BlobStore)
    data = b"\xff\xd8 not really a jpeg " + uuid.uuid4().bytes
    key = blob_key(data)

    assert not store.exists(key)
    assert store.put(data) == key
    assert store.exists(key)
    assert store.get(key) == data
    assert _objects(store) == [f"q/{key[:2]}/{key}"]
    store.delete(key)  # a refused submission's photo (workers/client.py)
    assert not store.exists(key) and _objects(store) == []
    store.delete(key)  # absent: a no-op


def test_put_is_idempotent(s3_endpoint, bucket):
    store = make_blob_store(_settings(s3_endpoint, bucket))
    data = b"the same bytes twice"
    first = store.put(data)
    # Overwrite the object behind the store's back: a second put must skip, not rewrite it.
    store.client.put_object(Bucket=bucket, Key=f"q/{first[:2]}/{first}", Body=b"marker")
    assert store.put(data) == first
    assert store.get(first) == b"marker"
    assert len(_objects(store)) == 1


def test_missing_key_raises_blob_not_found(s3_endpoint, bucket):
    store = make_blob_store(_settings(s3_endpoint, bucket))
    missing = blob_key(b"never stored")
    with pytest.raises(BlobNotFound):
        store.get(missing)
    assert not store.exists(missing)


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "ab/cd", "A" * 64, "0" * 63, "", "0" * 64 + "/x", None]
)
def test_bad_keys_are_refused_before_any_request(s3_endpoint, bucket, key):
    store = make_blob_store(_settings(s3_endpoint, bucket))
    with pytest.raises(InvalidBlobKey):
        store.get(key)
    with pytest.raises(InvalidBlobKey):
        store.exists(key)


def test_an_s3_backend_without_a_bucket_is_refused():
    with pytest.raises(ValueError, match="s3_bucket"):
        make_blob_store(Settings(blob_backend="s3"))


@pytest.mark.integration
def test_a_job_runs_end_to_end_with_photos_in_s3(s3_endpoint, bucket, scene, tmp_path):
    from db.session import init_db
    from tests.support.services import (
        WorkerProcess,
        register_scene_map,
        require_redis,
        service_env,
        service_settings,
    )
    from workers.client import Client

    require_redis()
    db_url = f"sqlite:///{tmp_path / 'featureloc.db'}"
    env = service_env(tmp_path, db_url, uuid.uuid4().hex[:8])
    env.update(
        FEATURELOC_BLOB_BACKEND="s3",
        FEATURELOC_S3_BUCKET=bucket,
        FEATURELOC_S3_PREFIX="q",
        FEATURELOC_S3_ENDPOINT_URL=s3_endpoint,
        FEATURELOC_S3_ACCESS_KEY_ID=ACCESS_KEY,
        FEATURELOC_S3_SECRET_ACCESS_KEY=SECRET_KEY,
    )
    settings = service_settings(env)
    init_db(db_url)
    register_scene_map(settings, scene)
    with (scene / "queries.csv").open() as f:
        query_id = next(csv.DictReader(f))["id"]
    photo = (scene / "images" / f"{query_id}.jpg").read_bytes()

    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        client = Client(settings)
        result = client.wait(client.submit(photo, "scene"), timeout=120)
        assert result.status == "done", (result.error, worker.log()[-2000:])
        assert result.candidates
    finally:
        worker.stop()
    key = blob_key(photo)
    assert make_blob_store(settings).get(key) == photo  # the photo went to the bucket...
    assert not (tmp_path / "blobs" / key[:2] / key).exists()  # ...and not to the local directory
