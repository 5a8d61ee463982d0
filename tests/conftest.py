"""Shared fixtures: paths to the data, a synthetic scene, real services."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures_db"]

REPO = Path(__file__).resolve().parents[1]
GETTY = REPO.parent / "shared" / "getty"

needs_getty = pytest.mark.skipif(
    not (GETTY / "references.csv").is_file(), reason="../shared/getty is absent"
)


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> Path:
    """A small synthetic scene (core.synthetic) in the Getty layout: images/, references.csv,
    queries.csv. Generated once per test session."""
    from core.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("scene")
    generate_dataset(out, seed=0)
    return out
