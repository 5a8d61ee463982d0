"""The pipeline of core/localiser.py on a real map of the synthetic scene: what a job reads
and what its result says."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from cli.synthetic import FOV_DEG
from core.camera import Camera
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser

pytestmark = pytest.mark.integration  # builds the scene's map once per session


def _query(scene: Path, k: int):
    row = list(csv.DictReader((scene / "queries.csv").open()))[k]
    return read_image(scene / "images" / f"{row['id']}.jpg")


def test_a_job_reads_each_reference_once(scene: Path, copy_scene_map, monkeypatch) -> None:
    """Candidates and placement use the features the shortlist read: no reference's features
    are read from the map twice in one job (they were re-read to count keypoints, and again
    for every placement pair)."""
    store = copy_scene_map()
    store.set_camera("scene", Camera(fov_x_deg=FOV_DEG))
    loc = Localiser(store.open("scene"))
    reads: Counter[int] = Counter()
    features = loc.map.features
    original = type(features).__getitem__

    def counted(self, i):
        reads[int(i)] += 1
        return original(self, i)

    monkeypatch.setattr(type(features), "__getitem__", counted)
    placed = 0
    for k in range(3):
        reads.clear()
        result = loc.localise(_query(scene, k), LocaliseOptions(top_k=20))
        placed += result.estimate.method.endswith("placement")
        assert reads and max(reads.values()) == 1, reads.most_common(3)
        shortlisted = {c.reference_id for c in result.candidates}
        assert {loc.map.ids[i] for i in reads} >= shortlisted
        for c in result.candidates:
            assert c.reference_keypoints == len(original(features, loc.map.index[c.reference_id]))
    assert placed >= 1  # placement ran, and read through the same cache


def test_the_result_records_the_scale_it_extracted_at(scene: Path, scene_xfeat_map) -> None:
    from core.mapstore import MapStore

    loc = Localiser(MapStore(scene_xfeat_map).open("scene"))
    image = _query(scene, 0)
    small = image[::2, ::2]  # 240x180: enlarged 2x to the references' 480x360
    result = loc.localise(small)
    assert result.query_size == (480, 360) and result.query_scale == pytest.approx(2.0)
    assert loc.localise(image).query_scale == 1.0
