"""``featureloc map upgrade`` and ``featureloc map publish`` as a user runs them: the real
command in a process, a SQLite file, and moto's S3 server on loopback for publishing."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import numpy as np
import pytest

from core.mapstore import MapStore, Reference, write_part
from core.types import Features
from tests.support.process import run_cli
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, s3_client
from tests.support.services import service_env

h5py = pytest.importorskip("h5py")

VLAD_CONF = {"num_clusters": 4, "train_per_image": 8, "kmeans_iters": 2}


def _features(rng: np.random.Generator, n: int = 12) -> Features:
    return Features(
        rng.uniform(0, 100, (n, 2)).astype(np.float32),
        rng.normal(size=(n, 16)).astype(np.float32),
        rng.uniform(0, 1, n).astype(np.float32),
        (640, 480),
    )


def _format_1_map(maps: Path, name: str, refs: int) -> np.ndarray:
    """A map as format 1 wrote it: HDF5 parts and a VLAD state holding only its codebook.
    Returns the codebook."""
    rng = np.random.default_rng(1)
    path = maps / name
    (path / "parts").mkdir(parents=True)
    manifest = {
        "name": name,
        "format": 1,
        "extractor": {"name": "sift", "conf": {}},
        "retriever": {"name": "vlad", "conf": VLAD_CONF},
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    for part in range(2):
        with h5py.File(path / "parts" / f"part-{part}.h5", "w") as f:
            group = f.create_group("refs")
            for i in range(part, refs, 2):
                feats = _features(rng)
                g = group.create_group(f"r{i:02d}")
                g.attrs["x"], g.attrs["y"] = float(i), 0.0
                g.attrs["width"], g.attrs["height"] = feats.image_size
                g.create_dataset("keypoints", data=feats.keypoints)
                g.create_dataset("descriptors", data=feats.descriptors.astype(np.float16))
                g.create_dataset("scores", data=feats.scores.astype(np.float16))
    centroids = rng.normal(size=(4, 16)).astype(np.float32)
    codebook_conf = {**VLAD_CONF, "multi_assign": 1, "seed": 0}
    (path / "retrieval").mkdir()
    np.savez(
        path / "retrieval" / "vlad.npz",
        centroids=centroids,
        fitted_on=np.int64(refs),
        conf=json.dumps(codebook_conf),
    )
    return centroids


def test_map_upgrade_converts_keeps_the_codebook_and_records_the_map(tmp_path):
    env = service_env(tmp_path, f"sqlite:///{tmp_path / 'fl.db'}", uuid.uuid4().hex[:8])
    env["COLUMNS"] = "200"
    centroids = _format_1_map(tmp_path / "maps", "old", refs=10)

    done = run_cli(env, "map", "upgrade", "old")
    assert done.returncode == 0, done.stderr
    assert "2 part(s) converted" in done.stdout
    ref_map = MapStore(tmp_path / "maps").open("old")
    assert ref_map.ids == [f"r{i:02d}" for i in range(10)]
    assert not list((ref_map.path / "parts").glob("*.h5"))
    with np.load(ref_map.retrieval_dir / "vlad.npz") as state:
        np.testing.assert_array_equal(state["centroids"], centroids)  # the codebook kept
        described = json.loads(str(state["desc_files"]))
    assert len(described) == 1 and (ref_map.retrieval_dir / described[0]).is_file()
    listing = run_cli(env, "map", "list").stdout
    assert re.search(r"old\s+│?\s*10\s", listing), listing

    again = run_cli(env, "map", "upgrade", "old")
    assert again.returncode == 0 and "already in format 2" in again.stdout
    unknown = run_cli(env, "map", "upgrade", "nope")
    assert unknown.returncode == 1 and "unknown map 'nope'" in unknown.stderr


def test_map_publish_uploads_a_version_once_and_refuses_without_a_bucket(tmp_path, s3_endpoint):
    from workers.mapversions import MapVersions

    client = s3_client(s3_endpoint)
    bucket = f"maps-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    env = service_env(tmp_path, f"sqlite:///{tmp_path / 'fl.db'}", uuid.uuid4().hex[:8])
    env["COLUMNS"] = "200"
    rng = np.random.default_rng(2)
    store = MapStore(tmp_path / "maps")
    path = store.create("site", {"name": "sift", "conf": {}}, {"name": "exhaustive", "conf": {}})
    write_part(path, [(Reference(f"r{i}", i, 0), _features(rng)) for i in range(4)])

    refused = run_cli(env, "map", "publish", "site")
    assert refused.returncode == 1 and "FEATURELOC_S3_BUCKET" in refused.stderr

    env.update(
        FEATURELOC_S3_BUCKET=bucket,
        FEATURELOC_S3_ENDPOINT_URL=s3_endpoint,
        FEATURELOC_S3_ACCESS_KEY_ID=ACCESS_KEY,
        FEATURELOC_S3_SECRET_ACCESS_KEY=SECRET_KEY,
    )
    first = run_cli(env, "map", "publish", "site")
    assert first.returncode == 0, first.stderr
    version = re.search(r"version (\w+)", first.stdout).group(1)
    versions = MapVersions(client, bucket, "maps")
    assert versions.latest("site") == version
    assert set(versions.manifest("site", version)["files"]) == {
        "manifest.json",
        *(f"parts/{p.name}" for p in (path / "parts").iterdir()),
    }
    # The same content is the same version: nothing new is uploaded.
    second = run_cli(env, "map", "publish", "site")
    assert second.returncode == 0 and f"version {version}" in second.stdout
    missing = run_cli(env, "map", "publish", "nope")
    assert missing.returncode == 1 and "unknown map 'nope'" in missing.stderr
