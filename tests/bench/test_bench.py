"""Smoke tests of the benchmark scripts' building blocks (not their timings)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.calibration import calibration_figures, plot_calibration
from bench.common import spread_subset, write_subset_map
from bench.distractors import FAR_AWAY, GroupChimeras, write_distractor_map
from bench.throughput import cpu_seconds, distinct_photos, latency_figures, stage_seconds


def test_calibration_figures_rank_by_confidence(tmp_path: Path) -> None:
    # The 5 most confident are right (error 1), the next 3 wrong (20), the last 2 very wrong.
    conf = [0.9, 0.95, 0.8, 0.85, 0.99, 0.5, 0.4, 0.45, 0.1, 0.2]
    err = [1, 1, 1, 1, 1, 20, 20, 20, 100, 100]
    figs = {f["fraction"]: f for f in calibration_figures(err, conf)}
    assert figs[0.5]["queries"] == 5 and figs[0.5]["within_5"] == 1.0
    assert figs[0.5]["mae"] == 1.0 and figs[0.5]["min_confidence"] == 0.8
    assert figs[0.8]["within_5"] == pytest.approx(5 / 8)
    assert figs[0.8]["mae"] == pytest.approx((5 + 60) / 8)
    assert figs[1.0]["mae"] == pytest.approx(26.5)
    png = plot_calibration(err, conf, [c > 0.3 for c in conf], tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spread_subset_keeps_whole_positions_across_the_map() -> None:
    ids = [f"p{p:03d}_{v}" for p in range(100) for v in range(5)]
    pos = np.array([(p, 2 * p) for p in range(100) for _ in range(5)], float)
    chosen = spread_subset(ids, pos, 50)
    assert len(chosen) == 50
    places = {c.split("_")[0] for c in chosen}
    assert len(places) == 10  # 10 whole positions of 5 views
    assert "p000" in places and "p099" in places  # spread from one end to the other


@pytest.mark.integration  # builds and queries a map
def test_subset_map_holds_the_chosen_references_and_localises(scene: Path, tmp_path) -> None:
    from core.images import read_image
    from core.localiser import LocaliseOptions, Localiser
    from core.mapbuild import build_map, read_positions_csv
    from core.mapstore import MapStore

    entries = read_positions_csv(scene / "references.csv", scene / "images")[:16]
    store = MapStore(tmp_path / "maps")
    build_map(store, "full", entries, "sift", retriever_name="vlad",
              retriever_conf={"num_clusters": 8})  # fmt: skip
    full = store.open("full")
    keep = full.ids[4:12]
    write_subset_map(full, store, "part", keep)
    sub = store.open("part")
    assert sub.ids == sorted(keep)
    assert sub.manifest["extractor"] == full.manifest["extractor"]
    for rid in keep:
        a, b = sub.features[sub.index[rid]], full.features[full.index[rid]]
        assert np.array_equal(a.keypoints, b.keypoints)
        assert np.array_equal(sub.positions[sub.index[rid]], full.positions[full.index[rid]])
    # The copied VLAD state serves the subset: a kept reference finds itself first.
    image = read_image(next(e.image for e in entries if e.reference.id == keep[3]))
    res = Localiser(sub).localise(image, LocaliseOptions(top_k=3))
    assert {c.reference_id for c in res.candidates} <= set(keep)
    assert res.candidates[0].reference_id == keep[3]


@pytest.mark.integration  # builds a map, grows a copy and indexes it
def test_distractor_map_grows_a_copy_with_far_away_chimeras_and_indexes_them(
    scene: Path, tmp_path
) -> None:
    from core.mapbuild import build_map, finalise_map, read_positions_csv
    from core.mapstore import MapStore
    from core.registry import retriever_class

    entries = read_positions_csv(scene / "references.csv", scene / "images")[:16]
    store = MapStore(tmp_path / "maps")
    conf = {"num_clusters": 8, "index_min_references": 40, "index": {"dim": 8, "rerank": 60}}
    build_map(store, "real", entries, "sift", retriever_name="vlad", retriever_conf=conf)
    real = store.open("real")
    write_distractor_map(real, store, "grown", 70, chunk=20)
    finalise_map(store, "grown")

    grown = store.open("grown")
    assert len(grown) == 70 and set(real.ids) < set(grown.ids)
    assert len(store.open("real")) == 16, "the source map is unchanged"
    fake = [i for i, rid in enumerate(grown.ids) if rid.startswith("distractor-")]
    assert len(fake) == 54 and (grown.positions[fake, 0] >= FAR_AWAY).all()
    vlad = retriever_class("vlad")(grown.retriever["conf"])
    vlad.prepare(grown)
    assert vlad.index is not None and len(vlad.index) == 70
    source = retriever_class("vlad")(conf)
    source.prepare(real)
    np.testing.assert_array_equal(vlad.centroids, source.centroids)  # the codebook is kept
    # Stored chimera descriptors, not descriptors of the copied features: no tie with a source.
    src_desc = vlad.descriptor_rows([grown.index[rid] for rid in real.ids])
    fake_desc = vlad.descriptor_rows(fake)
    assert (src_desc @ fake_desc.T).max() < 0.999
    np.testing.assert_allclose(np.linalg.norm(fake_desc, axis=1), 1.0, atol=1e-2)


def test_group_chimeras_score_and_project_like_the_vectors_they_stand_for() -> None:
    rng = np.random.default_rng(1)
    words, d = 8, 3
    real = rng.normal(size=(6, words * d)).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    pos = np.repeat(np.arange(3), 2)[:, None] * np.ones((1, 2))
    fake = GroupChimeras(real, pos, words, 20, groups=4, seed=3)
    # The explicit vectors: each group of words from the source reference chosen for it.
    group = (np.arange(words * d) // d) % 4
    explicit = np.stack([real[fake.src[j, group], np.arange(words * d)] for j in range(20)])
    explicit /= np.linalg.norm(explicit, axis=1, keepdims=True)
    q = real[2]
    per = fake.query_sums(q)
    np.testing.assert_allclose(fake.scores(per), explicit @ q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fake.scores(per, np.array([4, 1])), explicit[[4, 1]] @ q, atol=1e-6)
    np.testing.assert_allclose(fake.descriptors(np.array([4, 1])), explicit[[4, 1]], atol=1e-6)
    a, b = rng.normal(size=(5, words * d)).astype(np.float32), np.ones(5, np.float32)
    proj = np.concatenate(list(fake.projections(a, b, chunk=7)))
    np.testing.assert_allclose(proj, explicit @ a.T + b, rtol=1e-4, atol=1e-5)


def test_latency_figures_from_job_timestamps() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    jobs = [
        SimpleNamespace(
            created_at=t0,
            started_at=t0 + timedelta(seconds=i),
            finished_at=t0 + timedelta(seconds=i + 1),
            status="done",
            timings={"load": 0.0},
        )
        for i in range(10)
    ]
    f = latency_figures(jobs)
    assert f["drain_seconds"] == 10 and f["queries_per_second"] == 1.0
    assert f["latency_p50"] == pytest.approx(5.5) and f["service_p95"] == pytest.approx(1.0)
    assert f["failed"] == 0


def test_calibration_reads_an_accuracy_report(tmp_path: Path, capsys) -> None:
    """bench/accuracy.py writes one report per configuration; calibration picks one."""
    import json

    from bench.calibration import main

    def rows(errors):
        return [{"error": e, "confidence": 1 / (1 + e), "localised": e < 50} for e in errors]

    report = tmp_path / "accuracy.json"
    report.write_text(
        json.dumps({"results": {"default": {"rows": rows([1, 2, 90, 3])}, "top20": {"rows": []}}})
    )
    assert main(["--report", str(report), "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "calibration.json").read_text())
    by_fraction = {f["fraction"]: f for f in written["figures"]}
    assert by_fraction[1.0]["mae"] == pytest.approx(24.0)  # (1 + 2 + 90 + 3) / 4
    assert by_fraction[0.5]["mae"] == pytest.approx(1.5)  # the two most confident: 1 and 2
    assert written["source"].endswith("(default)")
    assert (tmp_path / "calibration.png").is_file()
    assert main(["--report", str(report), "--out", str(tmp_path), "--config", "nope"]) == 2
    assert "has default, top20" in capsys.readouterr().err


def test_repeated_photos_are_jobs_of_their_own_with_the_same_pixels(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        paths.append(tmp_path / f"q{k}.jpg")
        paths[-1].write_bytes(cv2.imencode(".jpg", image)[1].tobytes())
    photos = distinct_photos(paths, 5)
    assert len(set(photos)) == 5  # no two share a job (jobs are keyed by the photo's bytes)
    assert photos[:2] == [p.read_bytes() for p in paths]
    decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in photos]
    for i in range(2, 5):
        assert np.array_equal(decoded[i], decoded[i % 2])


def test_stage_seconds_and_cpu_seconds() -> None:
    import os

    jobs = [SimpleNamespace(timings={"extract": 0.2, "match": 0.1}), SimpleNamespace(timings={})]
    assert stage_seconds(jobs) == pytest.approx({"extract": 0.1, "match": 0.05})
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))  # burn some CPU in this process
    assert cpu_seconds(os.getpid()) > before


def test_fit_queue_copies_a_map_without_its_fit_state(copy_scene_map, scene: Path, tmp_path):
    from bench.fit_queue import FIT_STATE, copy_map

    store = copy_scene_map()
    for name in FIT_STATE:
        (store.path("scene") / name).write_text("{}")
    copy = copy_map(store, "scene", tmp_path / "maps", scene / "images")
    assert not any((copy.path("scene") / name).exists() for name in FIT_STATE)
    assert copy.images_dir("scene") == scene / "images"
    assert copy.open("scene").ids == store.open("scene").ids
