"""The coarse-to-fine cascade and the map's self-measurement on a real map of the synthetic
scene: real XFeat and ALIKED features, real LightGlue, real MAGSAC."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from core import registry
from core.calibration import LOCALISED_PROBABILITY
from core.errors import MapError
from core.finestage import DEFAULT_ESCALATE_BELOW
from core.heldout import fit, fit_map, hidden_mask, read_rows, run_heldout, sample_heldout
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser
from core.mapbuild import add_fine_features, build_map, read_positions_csv
from core.mapstore import TRAINING_FILE, MapStore, fine_fitted, write_training

pytestmark = pytest.mark.integration
FINE = {
    "max_keypoints": 256,
    "resize_max": 320,
}  # the fine stage at its cheapest: the tests are about its decisions


def _image_of(scene: Path):
    return lambda rid: next((scene / "images").glob(f"{rid}.*"))


@pytest.fixture(scope="module")
def store(scene: Path, tmp_path_factory) -> MapStore:
    store = MapStore(tmp_path_factory.mktemp("maps"))
    entries = read_positions_csv(scene / "references.csv", scene / "images")
    build_map(store, "scene", entries, "xfeat", retriever_name="vlad")
    # A fine set for a few references only; the rest are filled when a query needs them.
    report = add_fine_features(store, "scene", entries[:4], "aliked", FINE)
    assert len(report.added) == 4
    return store


@pytest.fixture
def own_copy(store: MapStore, scene: Path, tmp_path: Path):
    """``own_copy(training)`` -> a Localiser on a private copy of the scene map with that
    training record (None: none), so a test fits its map without touching the others'."""

    def copy(training: dict | None = None) -> Localiser:
        root = tmp_path / f"maps-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(store.path("scene"), root / "scene")
        (root / "scene" / TRAINING_FILE).unlink(missing_ok=True)
        if training is not None:
            write_training(root / "scene", training)
        return Localiser(MapStore(root).open("scene"), fine_source=_image_of(scene))

    return copy


def _query(scene: Path, k: int = 0) -> tuple[np.ndarray, tuple[float, float]]:
    row = list(csv.DictReader((scene / "queries.csv").open()))[k]
    return read_image(_image_of(scene)(row["id"])), (float(row["x"]), float(row["y"]))


def test_the_accurate_profile_reverifies_doubtful_answers_with_fine_features(
    store: MapStore, scene: Path
) -> None:
    loc = Localiser(store.open("scene"), fine_source=_image_of(scene))
    image, _ = _query(scene)
    fast = loc.localise(image, LocaliseOptions.parse({"profile": "fast"}))
    assert all(c.stage == "coarse" for c in fast.candidates) and "fine" not in fast.timings

    always = {
        "profile": "accurate",
        "fine_conf": {"escalate_below": 1.0, "places": 2, "views": 2},
    }
    res = loc.localise(image, LocaliseOptions.parse(always))
    fine = [c for c in res.candidates if c.stage == "fine"]
    assert 1 <= len(fine) <= 4 and "fine" in res.timings
    assert "fine" in res.estimate.method
    assert max(c.inliers for c in fine) > 0
    # The coarse rows are the same as the fast profile's: the fine stage only adds.
    coarse = [c for c in res.candidates if c.stage == "coarse"]
    assert [c.reference_id for c in coarse] == [c.reference_id for c in fast.candidates]
    # The fine features it lacked were extracted once and added to the map.
    reopened = store.open("scene")
    stored = reopened.feature_set("fine")
    assert all(stored.has(loc.map.index[c.reference_id]) for c in fine)

    never = {"profile": "accurate", "fine_conf": {"escalate_below": 0.0}}
    res = loc.localise(image, LocaliseOptions.parse(never))
    assert all(c.stage == "coarse" for c in res.candidates)


def test_hidden_references_are_neither_candidates_nor_placement_partners(
    store: MapStore, scene: Path
) -> None:
    loc = Localiser(store.open("scene"))
    row = sample_heldout(loc.map, 1, seed=3)[0]
    hidden = hidden_mask(loc.map, row)
    assert hidden[row] and hidden.sum() >= 1
    image = read_image(_image_of(scene)(loc.map.ids[row]))
    seen = loc.localise(image).candidates
    assert loc.map.ids[row] in {c.reference_id for c in seen}  # it finds itself ...
    res = loc.localise(image, None, hidden)
    ids = {c.reference_id for c in res.candidates}
    assert not ids & {loc.map.ids[i] for i in np.flatnonzero(hidden)}  # ... unless hidden


def test_the_map_fits_its_confidence_on_its_own_held_out_positions(
    store: MapStore, scene: Path, tmp_path: Path
) -> None:
    ref_map = store.open("scene")
    loc = Localiser(ref_map)
    rows = sample_heldout(ref_map, 6, seed=0)
    assert len({tuple(ref_map.positions[r]) for r in rows}) == 6
    out = tmp_path / "heldout.jsonl"
    got = run_heldout(loc, rows[:4], _image_of(scene), out, fine_below=0.0)
    got = run_heldout(loc, rows, _image_of(scene), out, fine_below=0.0)  # resumes: 2 more
    assert len(got) == 6 and len(read_rows(out)) == 6
    assert all(r.fine_score is None for r in got)  # fine_below=0: coarse only
    record = fit(
        got, fallback=tuple(ref_map.positions.mean(0)), fine_extractor=ref_map.fine_extractor
    )
    assert record["heldout_queries"] == 6 and "escalate_below" not in record
    assert record["fine_missing"] == "no held-out position ran the fine stage"
    write_training(ref_map.path, record)

    calibrated = Localiser(store.open("scene"))
    image, _ = _query(scene, 1)
    raw = loc.localise(image).estimate  # the map as loaded before: no training
    est = calibrated.localise(image).estimate
    curve = record["calibration"]["coarse"]
    assert est.confidence == pytest.approx(float(np.interp(raw.confidence, curve["x"], curve["y"])))
    assert (est.x, est.y) == (raw.x, raw.y)  # calibration changes the confidence, not the answer
    assert est.localised == (raw.localised and est.confidence >= LOCALISED_PROBABILITY)


def test_fine_features_come_from_one_extractor_per_map(store: MapStore) -> None:
    other = registry.create_extractor("aliked", {"max_keypoints": 128}).identity()
    with pytest.raises(MapError, match="fine features"):
        store.set_fine_extractor("scene", other)


def test_a_map_fitted_before_its_fine_set_keeps_its_accurate_profile(
    copy_scene_map, scene: Path
) -> None:
    """Fitted without a fine set, then given one: the accurate profile says it ran as fast,
    then runs on its defaults (never a 0.0 threshold, never a zero confidence), and the next
    fit measures the fine stage on the positions already done."""
    store, image_of = copy_scene_map(), _image_of(scene)
    first = fit_map(store, "scene", image_of, queries=3, fine_below=1.0)
    assert "escalate_below" not in first and set(first["calibration"]) == {"coarse"}
    assert first["fine_missing"] == "the map has no fine set"
    assert first["last_run"] == {"measured": 3, "fine_remeasured": 0, "remeasured_near_new": 0}
    image, _ = _query(scene)
    loc = Localiser(store.open("scene"))
    res = loc.localise(image, LocaliseOptions.parse({"profile": "accurate"}))
    assert res.profile_used == "fast" and "has no fine set" in (res.profile_note or "")
    assert res.calibrated and res.fit_id is not None and res.fit_id == loc.map.fit[1]

    entries = read_positions_csv(scene / "references.csv", scene / "images")
    add_fine_features(store, "scene", entries[:4], "aliked", FINE)
    # The record such a fit wrote before this fix: a 0.0 threshold and an all-zero fine curve.
    legacy = {**first, "escalate_below": 0.0}
    legacy["calibration"] = {**first["calibration"], "fine": {"x": [0.0, 1.0], "y": [0.0, 0.0]}}
    for key in ("fine_extractor", "fine_missing"):
        legacy.pop(key)
    write_training(store.path("scene"), legacy)
    loc = Localiser(store.open("scene"), fine_source=image_of)
    asked = LocaliseOptions.parse({"profile": "accurate"})
    run = loc.profile_run(asked, loc.map.training)
    assert run.profile == "accurate" and run.escalate_below == DEFAULT_ESCALATE_BELOW
    assert "its fit has no fine part" in (run.note or "")
    forced = LocaliseOptions.parse(
        {"profile": "accurate", "fine_conf": {"escalate_below": 1.0, "places": 2, "views": 2}}
    )
    res = loc.localise(image, forced)
    raw = loc.localise(image, forced, calibrated=False)
    assert "fine" in res.timings and res.profile_used == "accurate"
    assert not res.calibrated  # the fit did not measure this fine set: its score stands
    assert res.estimate.confidence == pytest.approx(raw.estimate.confidence)
    assert res.estimate.confidence > 0

    second = fit_map(store, "scene", image_of, queries=3, fine_below=1.0)
    assert second["last_run"] == {"measured": 0, "fine_remeasured": 3, "remeasured_near_new": 0}
    assert second["heldout"]["fine_run"] >= 1 and "fine_missing" not in second
    assert 0.0 <= second["escalate_below"] <= 1.0 + 1e-6
    refitted = store.open("scene")
    assert fine_fitted(refitted.training, refitted.fine_extractor)
    assert len(read_rows(refitted.path / "heldout.jsonl")) == 3


# One place, one view: the cheapest fine stage; the tests are about its decisions.
ONE_VIEW = {"places": 1, "views": 1}
FAST = LocaliseOptions.parse({"profile": "fast"})


def _escalated(loc: Localiser, image: np.ndarray, fine_conf: dict | None = None) -> bool:
    opts = {"profile": "accurate", "fine_conf": {**ONE_VIEW, **(fine_conf or {})}}
    res = loc.localise(image, LocaliseOptions.parse(opts))
    return any(c.stage == "fine" for c in res.candidates)


def _fitted(escalate_below: float) -> dict:
    """A training record whose fit measured the fine stage (core.mapstore.fine_fitted)."""
    return {"escalate_below": escalate_below, "heldout": {"fine_run": 1}}


def test_the_escalation_threshold_is_the_jobs_else_the_maps_else_the_default(
    own_copy, scene: Path
) -> None:
    image, _ = _query(scene)
    bare = own_copy()
    raw = bare.localise(image, FAST).estimate.confidence  # no training: not calibrated
    assert 0.0 < raw < 1.0
    # A map without a fitted threshold escalates below the default.
    assert _escalated(bare, image) == (raw < DEFAULT_ESCALATE_BELOW)
    # A fitted one is the map's, on either side of this query's confidence ...
    assert _escalated(own_copy(_fitted(raw + 1e-6)), image)
    fitted = own_copy(_fitted(raw))  # strictly below escalates
    assert not _escalated(fitted, image)
    # ... unless the job sets its own.
    assert _escalated(fitted, image, {"escalate_below": 1.0})
    assert not _escalated(own_copy(_fitted(1.0)), image, {"escalate_below": 0.0})


def test_a_declined_coarse_answer_is_taken_over_only_by_a_strong_fine_place(
    own_copy, scene: Path
) -> None:
    loc = own_copy()
    image, _ = _query(scene)
    never_enough = {"estimator_conf": {"min_evidence": 1e9}}  # the coarse stage declines
    coarse = loc.localise(image, LocaliseOptions.parse({"profile": "fast", **never_enough}))
    assert not coarse.estimate.localised and coarse.estimate.method == "cluster:doubt"

    def accurate(switch_inliers: float):
        fine_conf = {"escalate_below": 1.0, "places": 1, "views": 2}
        fine_conf["switch_inliers"] = switch_inliers
        opts = {"profile": "accurate", **never_enough, "fine_conf": fine_conf}
        return loc.localise(image, LocaliseOptions.parse(opts))

    # One place: nothing to switch to, so only the declined-answer rule can move it.
    strong = accurate(switch_inliers=1)
    fine = [c for c in strong.candidates if c.stage == "fine" and c.inliers > 0]
    assert fine, "the fine stage found no inliers on the coarse place"
    assert strong.estimate.localised and strong.estimate.method == "fine"
    w = np.array([c.inliers for c in fine], np.float64) ** 2
    xy = np.array([c.position for c in fine])
    assert (strong.estimate.x, strong.estimate.y) == pytest.approx(tuple(w @ xy / w.sum()))
    assert set(strong.estimate.support) == {c.reference_id for c in fine}

    weak = accurate(switch_inliers=1e6)  # the fine place lacks the evidence to answer
    assert not weak.estimate.localised and weak.estimate.method == "cluster:doubt+fine"
    assert (weak.estimate.x, weak.estimate.y) == (coarse.estimate.x, coarse.estimate.y)


def test_fine_answers_are_calibrated_by_the_fine_curve(own_copy, scene: Path) -> None:
    flat = lambda p: {"x": [0.0, 1.0], "y": [p, p]}  # noqa: E731 - every score -> p
    loc = own_copy(
        {
            **_fitted(0.5),  # a fit that measured the fine stage, so its fine curve counts
            "calibration": {"coarse": flat(0.9), "fine": flat(0.2)},
            "localised_probability": LOCALISED_PROBABILITY,
        }
    )
    image, _ = _query(scene)
    raw = loc.localise(image, FAST, calibrated=False).estimate
    coarse = loc.localise(image, FAST).estimate
    assert coarse.confidence == pytest.approx(0.9) and coarse.localised == raw.localised
    always = {**ONE_VIEW, "escalate_below": 1.0}
    accurate = LocaliseOptions.parse({"profile": "accurate", "fine_conf": always})
    res = loc.localise(image, accurate)
    assert any(c.stage == "fine" for c in res.candidates)
    assert res.estimate.confidence == pytest.approx(0.2) and not res.estimate.localised
    # A job that does not escalate keeps the coarse curve under the accurate profile too.
    off = {"profile": "accurate", "fine_conf": {"escalate_below": 0.0}}
    assert loc.localise(image, LocaliseOptions.parse(off)).estimate.confidence == pytest.approx(0.9)
