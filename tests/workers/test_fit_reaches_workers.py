"""A new fit reaches a running worker process with no restart, on both map backends: the fit
task (workers/fit.py) writes it and, with ``map_backend=s3``, publishes it (moto's S3 server on
loopback); the worker's next job loads it (workers/runtime.py), a job already holding the map
keeps the fit it started with. Real XFeat map of the synthetic scene, in this process."""

from __future__ import annotations

import uuid

import pytest

from tests.support.services import service_env, service_settings
from workers import runtime
from workers.fit import fit_map_task

pytestmark = pytest.mark.integration


@pytest.fixture
def worker_state(monkeypatch):
    """This process as a fresh worker: no map loaded, no version looked up."""
    monkeypatch.setattr(runtime, "_localisers", {})
    monkeypatch.setattr(runtime, "_latest_seen", {})
    runtime.map_versions.cache_clear()
    yield monkeypatch
    runtime.map_versions.cache_clear()


def _settings(tmp_path, **extra: str):
    env = service_env(tmp_path, f"sqlite:///{tmp_path / 'fl.db'}", uuid.uuid4().hex[:8])
    env.update(FEATURELOC_DEVICE="cpu", **extra)
    return service_settings(env)


def _scene_map(copy_scene_map, settings, scene) -> None:
    store = copy_scene_map()
    settings.maps_dir.mkdir(parents=True, exist_ok=True)
    store.path("scene").rename(settings.maps_dir / "scene")
    from core.mapstore import MapStore

    MapStore(settings.maps_dir).set_images_dir("scene", scene / "images")


def test_a_fit_reaches_a_running_worker_of_a_directory_map(
    worker_state, copy_scene_map, scene, tmp_path
) -> None:
    settings = _settings(tmp_path)
    worker_state.setattr(runtime, "settings", lambda: settings)
    _scene_map(copy_scene_map, settings, scene)
    before, v1 = runtime.localiser("scene")
    assert before.map.training == {}
    assert fit_map_task("scene", 2)["status"] == "done"
    after, v2 = runtime.localiser("scene")
    assert v2 != v1 and after is not before
    assert after.map.training["heldout_queries"] == 2 and after.map.fit[1] is not None
    assert before.map.training == {}  # a job holding the old map keeps its fit


def test_the_steps_of_a_fit_share_one_loaded_map(
    worker_state, copy_scene_map, scene, tmp_path
) -> None:
    """A fit runs in steps of a few positions (workers/fit.py): each step takes the
    localiser the worker keeps, loaded once per map version, not the models and map anew."""
    from core.heldout import fit_map
    from core.mapbuild import map_photos
    from core.mapstore import MapStore

    settings = _settings(tmp_path)
    worker_state.setattr(runtime, "settings", lambda: settings)
    _scene_map(copy_scene_map, settings, scene)
    first = runtime.fit_localiser("scene")
    assert runtime.fit_localiser("scene") is first  # the next step
    assert runtime.localiser("scene")[0] is first  # a directory map: jobs share it
    store = MapStore(settings.maps_dir)
    photos = map_photos(first.map.ids, scene / "images")
    assert fit_map(store, "scene", photos, queries=2, batch=1, localiser=first) is None
    assert runtime.fit_localiser("scene") is first  # rows written, the map's version holds
    assert fit_map(store, "scene", photos, queries=2, localiser=first) is not None
    assert runtime.fit_localiser("scene") is not first  # a new fit: a new version
    other = tmp_path / "other"
    MapStore(other).path("scene").mkdir(parents=True)
    with pytest.raises(ValueError, match="not map 'scene'"):
        fit_map(MapStore(other), "scene", photos, queries=2, localiser=first)


def test_a_fit_reaches_a_running_worker_of_a_published_map(
    worker_state, copy_scene_map, scene, tmp_path, s3_endpoint
) -> None:
    from tests.support.s3 import ACCESS_KEY, SECRET_KEY, s3_client
    from workers.maps import publish_if_configured

    bucket = f"maps-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    settings = _settings(
        tmp_path,
        FEATURELOC_MAP_BACKEND="s3",
        FEATURELOC_S3_BUCKET=bucket,
        FEATURELOC_S3_ENDPOINT_URL=s3_endpoint,
        FEATURELOC_S3_ACCESS_KEY_ID=ACCESS_KEY,
        FEATURELOC_S3_SECRET_ACCESS_KEY=SECRET_KEY,
        FEATURELOC_MAP_REFRESH_SECONDS="0",
    )
    worker_state.setattr(runtime, "settings", lambda: settings)
    _scene_map(copy_scene_map, settings, scene)
    from core.mapstore import MapStore

    publish_if_configured(settings, MapStore(settings.maps_dir), "scene")
    before, v1 = runtime.localiser("scene")
    assert before.map.training == {} and before.map.path.is_relative_to(settings.map_cache_dir)
    assert fit_map_task("scene", 2)["status"] == "done"
    after, v2 = runtime.localiser("scene")
    assert v2 != v1 and after.map.training["heldout_queries"] == 2
    assert after.map.fit[1] is not None
    assert after.map.path.is_relative_to(settings.map_cache_dir)
