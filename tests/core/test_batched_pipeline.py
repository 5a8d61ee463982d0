"""Matching a query's whole shortlist in batched products, and retrieval from descriptors held
in memory, give the estimates of one pair at a time and of descriptors read from disk."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from core.images import read_image
from core.localiser import LocaliseOptions, Localiser
from core.mapstore import MapStore
from core.matching import mnn
from core.registry import retriever_class

pytestmark = pytest.mark.integration  # the scene's map, built once per session


def test_batched_and_resident_give_the_per_pair_estimates(
    scene: Path, scene_xfeat_map: Path, monkeypatch
) -> None:
    store = MapStore(scene_xfeat_map)
    rows = list(csv.DictReader((scene / "queries.csv").open()))[:6]
    photos = [read_image(scene / "images" / f"{r['id']}.jpg") for r in rows]
    options = LocaliseOptions(top_k=30)

    batched = Localiser(store.open("scene"))
    assert batched.retriever.resident_bytes > 0  # the exact pass reads no disk
    assert len(batched.map) > mnn.CPU_BLOCK  # several blocks, each padded
    new = [batched.localise(p, options) for p in photos]

    # Today's path: each pair alone (no padding), every reference's descriptor read per query.
    plain = Localiser(store.open("scene"))
    ret = plain.map.retriever
    plain.retriever = retriever_class(ret["name"])(ret.get("conf"))
    plain.retriever.prepare(plain.map)
    assert plain.retriever.resident_bytes == 0
    monkeypatch.setattr(mnn, "CPU_BLOCK", 1)
    old = [plain.localise(p, options) for p in photos]

    localised = 0
    for a, b in zip(new, old, strict=True):
        assert [c.reference_id for c in a.candidates] == [c.reference_id for c in b.candidates]
        np.testing.assert_allclose(
            [c.retrieval_score for c in a.candidates],
            [c.retrieval_score for c in b.candidates],
            rtol=0,
            atol=1e-6,
        )
        assert [c.tentative_matches for c in a.candidates] == [
            c.tentative_matches for c in b.candidates
        ]
        assert [c.inliers for c in a.candidates] == [c.inliers for c in b.candidates]
        assert a.estimate.localised == b.estimate.localised
        if a.estimate.localised:
            localised += 1
            assert a.estimate.x == pytest.approx(b.estimate.x, abs=1e-6)
            assert a.estimate.y == pytest.approx(b.estimate.y, abs=1e-6)
        assert a.estimate.confidence == pytest.approx(b.estimate.confidence, abs=1e-9)
    assert localised >= 3  # the comparison covers real estimates, not only refusals


def test_resident_descriptors_score_as_the_disk_pass(
    scene: Path, scene_xfeat_map: Path, device: str
) -> None:
    """Equal on the CPU (NumPy's product sums as the row blocks read from disk do); within
    float32 rounding on a GPU."""
    ref_map = MapStore(scene_xfeat_map).open("scene")
    ret = ref_map.retriever
    disk = retriever_class(ret["name"])(ret.get("conf"))
    disk.prepare(ref_map)
    held = retriever_class(ret["name"])(ret.get("conf"))
    held.prepare(ref_map)
    held.keep_resident(device)
    assert held.resident_bytes >= 4 * len(ref_map) and disk.resident_bytes == 0
    for i in range(0, len(ref_map), 7):  # references as queries: a spread of scores
        query = ref_map.features[i]
        want, got = disk.scores(query, ref_map), held.scores(query, ref_map)
        if device == "cpu":
            assert np.array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert int(np.argmax(got)) == i
