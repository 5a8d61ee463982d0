"""Shared fixtures: the Getty photos, the devices to run models on, a synthetic scene, and the
database fixtures of tests/support/db.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import GETTY, getty_present

pytest_plugins = ["tests.support.db", "tests.support.s3"]


@pytest.fixture(scope="session")
def getty() -> Path:
    """The Getty set (``FEATURELOC_GETTY_DIR``, default ../shared/getty); skips when absent."""
    if not getty_present():
        pytest.skip(f"no Getty set at {GETTY} (set FEATURELOC_GETTY_DIR)")
    return GETTY


# Session pools of services (tests/support/services.ServicePool): the test files that use one
# run on one pytest-xdist process (``make test``'s ``--dist loadgroup``), so that each pool's
# stacks start once per run, not once per process (a stack costs 8-17 s to start).
SHARED_POOLS = {"api_stacks": "api-stacks", "scene_services": "scene-services"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        # One source of truth: a test that uses the getty fixture (directly or through another
        # fixture) carries the getty marker, so ``-m "not getty"`` selects exactly the others.
        # Real photos through real models take seconds each: those are integration tests too.
        if "getty" in fixtures:
            item.add_marker(pytest.mark.getty)
            item.add_marker(pytest.mark.integration)
        # Otherwise one file per process at a time, as ``--dist loadfile``, so that module
        # fixtures are built once; but each timer-bound test ("slow") on its own, as they wait
        # far longer than their fixtures take. A name shared by chance only shares a process.
        pool = next((group for f, group in SHARED_POOLS.items() if f in fixtures), None)
        unit = item.path.stem
        if item.get_closest_marker("slow"):
            unit = f"{unit}.{item.name}"
        item.add_marker(pytest.mark.xdist_group(pool or unit))


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def device(request) -> str:
    """The devices model tests run on: the CPU always, CUDA too where a GPU is present."""
    if request.param == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
    return request.param


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """On a shared 2-core machine, 2-thread torch ops stall under load (spin-waiting, up to 20x
    slower than one thread; a Getty test took 105 s in the suite against 8 s alone): the test
    process uses one thread for torch and OpenCV, as its worker and CLI processes do
    (FEATURELOC_TORCH_THREADS in tests/support/services.py)."""
    import cv2
    import torch

    from core.threads import limit_threads

    before = torch.get_num_threads(), cv2.getNumThreads()
    limit_threads(1)
    yield
    torch.set_num_threads(before[0])
    cv2.setNumThreads(before[1])


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> Path:
    """A small synthetic scene (cli.synthetic) in the Getty layout: images/, references.csv,
    queries.csv. Generated once per test session."""
    from cli.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("scene")
    generate_dataset(out, seed=0)
    return out


@pytest.fixture(scope="session")
def scene_xfeat_map(scene: Path, tmp_path_factory) -> Path:
    """The scene's references as an XFeat + VLAD map (the default preset), built once per
    session; tests that change a map take their own copy with :func:`copy_scene_map`."""
    from core.mapbuild import build_map, read_positions_csv
    from core.mapstore import MapStore

    root = tmp_path_factory.mktemp("scene-maps")
    entries = read_positions_csv(scene / "references.csv", scene / "images")
    build_map(MapStore(root), "scene", entries, "xfeat", retriever_name="vlad")
    return root


@pytest.fixture(scope="session")
def copy_scene_map(scene_xfeat_map: Path, tmp_path_factory):
    """``copy_scene_map()`` -> a MapStore holding a private copy of the scene map."""
    import shutil

    from core.mapstore import MapStore

    def copy() -> MapStore:
        root = tmp_path_factory.mktemp("scene-map-copy")
        shutil.copytree(scene_xfeat_map / "scene", root / "scene")
        return MapStore(root)

    return copy
