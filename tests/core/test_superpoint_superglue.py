"""SuperPoint + SuperGlue plug-ins, exercised with checkpoints in the official format.

The official Magic Leap files cannot be shipped or downloaded here, so the tests save seeded
random weights the way the official files are stored (a plain ``state_dict``) and check the key
names against the official structure. Random weights say nothing about accuracy; the tests check
what does not depend on the weights: strict loading, shapes and ranges, translation
equivariance, optimal-transport marginals, batching, and an exact hand-built "identity" matcher.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import registry
from core.errors import InputError
from core.features.superpoint import (
    SuperPointExtractor,
    SuperPointNet,
    nms,
    sample_descriptors,
)
from core.matching.superglue import SuperGlueMatcher, SuperGlueNet, log_optimal_transport
from core.types import Features
from workers import settings  # noqa: F401 - registers the weights paths of the environment

# Key names of the official checkpoints, derived from the official model definitions
# (magicleap/SuperGluePretrainedNetwork, models/superpoint.py and models/superglue.py).
SUPERPOINT_CONVS = [f"conv{s}{ab}" for s in "1234" for ab in "ab"] + [
    "convPa",
    "convPb",
    "convDa",
    "convDb",
]
SUPERPOINT_KEYS = {f"{c}.{p}" for c in SUPERPOINT_CONVS for p in ("weight", "bias")}
# kenc: 5 convs (2 keys) + 4 BatchNorms (5 keys) = 30; each of 18 GNN layers: 4 attention convs
# (8) + 2 MLP convs (4) + 1 BatchNorm (5) = 17; final_proj 2; bin_score 1. 30 + 306 + 3 = 339,
# of which 22 are BatchNorm ``num_batches_tracked`` counters.
SUPERGLUE_KEY_COUNT = 339
SUPERGLUE_SHAPES = {
    "bin_score": (),
    "kenc.encoder.0.weight": (32, 3, 1),
    "kenc.encoder.1.running_var": (32,),
    "kenc.encoder.12.weight": (256, 256, 1),
    "kenc.encoder.12.bias": (256,),
    "gnn.layers.0.attn.merge.weight": (256, 256, 1),
    "gnn.layers.0.attn.proj.2.bias": (256,),
    "gnn.layers.17.mlp.0.weight": (512, 512, 1),
    "gnn.layers.17.mlp.1.running_mean": (512,),
    "gnn.layers.17.mlp.3.weight": (256, 512, 1),
    "final_proj.weight": (256, 256, 1),
    "final_proj.bias": (256,),
}

SP_ENV, SG_ENV = "FEATURELOC_SUPERPOINT_WEIGHTS", "FEATURELOC_SUPERGLUE_WEIGHTS"
FEW_ITERATIONS = 20


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """A BGR image with shapes and texture: corners and blobs for a detector to find."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w)) * 40 + 100).astype(np.uint8)
    for _ in range(max(8, h * w // 1500)):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        colour = int(rng.integers(0, 256))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(5, 30)), y + 15), colour, -1)
        else:
            cv2.circle(img, (x, y), int(rng.integers(3, 12)), colour, -1)
    return cv2.cvtColor(cv2.GaussianBlur(img, (3, 3), 0), cv2.COLOR_GRAY2BGR)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Seeded random weights saved like the official files (a plain state dict)."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    sp, sg = root / "superpoint_v1.pth", root / "superglue_outdoor.pth"
    superpoint = SuperPointNet()
    # PyTorch's default init shrinks activations layer after layer, leaving a flat heatmap (a
    # regular grid of points); He init keeps some contrast, closer to a trained detector.
    for conv in superpoint.children():
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        torch.nn.init.zeros_(conv.bias)
    torch.save(superpoint.state_dict(), sp)
    torch.save(SuperGlueNet().state_dict(), sg)
    return {"superpoint": sp, "superglue": sg, "root": root}


@pytest.fixture(scope="module")
def extractor(checkpoints, device) -> SuperPointExtractor:
    conf = {"weights": str(checkpoints["superpoint"]), "max_keypoints": 64}
    return SuperPointExtractor(conf, device=device)


@pytest.fixture(scope="module")
def matcher(checkpoints, device) -> SuperGlueMatcher:
    return SuperGlueMatcher(
        {
            "weights": str(checkpoints["superglue"]),
            "sinkhorn_iterations": FEW_ITERATIONS,
            "match_threshold": 0.0,  # random weights are unconfident; keep every mutual pair
        },
        device=device,
    )


# --- structure and loading ----------------------------------------------------------------


def test_state_dict_keys_match_official_structure():
    assert set(SuperPointNet().state_dict()) == SUPERPOINT_KEYS
    sg = SuperGlueNet().state_dict()
    assert len(sg) == SUPERGLUE_KEY_COUNT
    assert sum(k.endswith("num_batches_tracked") for k in sg) == 22
    for key, shape in SUPERGLUE_SHAPES.items():
        assert tuple(sg[key].shape) == shape, key
    assert all(f"gnn.layers.{i}.attn.proj.0.weight" in sg for i in range(18))
    assert "gnn.layers.18.attn.merge.weight" not in sg


def test_strict_load_restores_every_tensor(checkpoints, extractor, matcher):
    saved = torch.load(checkpoints["superpoint"], weights_only=True)
    for key, value in extractor.net.state_dict().items():
        assert torch.equal(value, saved[key]), key
    saved = torch.load(checkpoints["superglue"], weights_only=True)
    for key, value in matcher.net.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_checkpoint_without_batchnorm_counters_loads(checkpoints, tmp_path):
    state = torch.load(checkpoints["superglue"], weights_only=True)
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(legacy, tmp_path / "legacy.pth")
    m = SuperGlueMatcher({"weights": str(tmp_path / "legacy.pth")})
    assert torch.equal(m.net.bin_score, state["bin_score"])


def test_checkpoint_with_renamed_or_missing_key_is_refused(checkpoints, tmp_path):
    state = torch.load(checkpoints["superpoint"], weights_only=True)
    renamed = dict(state)
    renamed["convDb.w"] = renamed.pop("convDb.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(InputError, match=r"missing keys \[convDb.weight\].*unexpected.*convDb.w"):
        SuperPointExtractor({"weights": str(tmp_path / "renamed.pth")})

    state = torch.load(checkpoints["superglue"], weights_only=True)
    del state["bin_score"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(InputError, match=r"not an official SuperGlue checkpoint.*bin_score"):
        SuperGlueMatcher({"weights": str(tmp_path / "missing.pth")})

    torch.save({"model": state}, tmp_path / "wrapped.pth")  # e.g. a training checkpoint
    with pytest.raises(InputError, match="unexpected keys \\[model\\]"):
        SuperGlueMatcher({"weights": str(tmp_path / "wrapped.pth")})


def test_superglue_checkpoint_refused_as_superpoint(checkpoints):
    with pytest.raises(InputError, match="not an official SuperPoint checkpoint"):
        SuperPointExtractor({"weights": str(checkpoints["superglue"])})


def test_missing_weights_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(SP_ENV, raising=False)
    monkeypatch.delenv(SG_ENV, raising=False)
    with pytest.raises(InputError, match=f"{SP_ENV}.*magicleap.*licence"):
        registry.create_extractor("superpoint")
    with pytest.raises(InputError, match=f"{SG_ENV}.*magicleap.*licence"):
        registry.create_matcher("superglue")
    with pytest.raises(InputError, match="does not exist"):
        SuperPointExtractor({"weights": str(tmp_path / "nope.pth")})
    monkeypatch.setenv(SG_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(InputError, match="does not exist"):
        SuperGlueMatcher()


def test_weights_from_environment_and_pinned_digest(checkpoints, monkeypatch):
    monkeypatch.setenv(SP_ENV, str(checkpoints["superpoint"]))
    monkeypatch.setenv(SG_ENV, str(checkpoints["superglue"]))
    ext = registry.create_extractor("superpoint")
    assert registry.create_matcher("superglue").accepts("superpoint")
    assert not SuperGlueMatcher.compatible_extractors & {"sift"}
    # A map records the digest; re-creating from the identity checks it.
    ident = ext.identity()
    assert len(ident["conf"]["weights_sha256"]) == 64
    registry.create_extractor(ident["name"], ident["conf"])
    with pytest.raises(InputError, match="not the SuperPoint checkpoint"):
        registry.create_extractor("superpoint", {"weights_sha256": "0" * 64})


# --- SuperPoint -------------------------------------------------------------------------------


def test_heatmap_unfolds_cells_row_major():
    """Detector channel r * 8 + c is pixel (r, c) of its cell (the paper's depth-to-space)."""
    torch.manual_seed(1)
    net = SuperPointNet().eval()
    x = torch.rand(1, 1, 24, 32)
    with torch.no_grad():
        heatmap, desc = net(x)
        cells = net.convPb(F.relu(net.convPa(_encoder(net, x)))).softmax(1)[:, :-1]
    expected = cells[0].reshape(8, 8, 3, 4).permute(2, 0, 3, 1).reshape(24, 32)
    torch.testing.assert_close(heatmap[0], expected)
    assert desc.shape == (1, 256, 3, 4)
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(1, 3, 4))


def _encoder(net: SuperPointNet, x: torch.Tensor) -> torch.Tensor:
    for i, s in enumerate("1234"):
        x = F.relu(getattr(net, f"conv{s}b")(F.relu(getattr(net, f"conv{s}a")(x))))
        if i < 3:
            x = F.max_pool2d(x, 2)
    return x


def test_nms_keeps_isolated_maxima_only():
    heat = torch.zeros(1, 20, 20)
    heat[0, 5, 5], heat[0, 5, 7], heat[0, 15, 15] = 0.9, 0.5, 0.3
    kept = nms(heat, radius=4)
    assert torch.nonzero(kept[0]).tolist() == [[5, 5], [15, 15]]
    assert kept[0, 5, 5] == pytest.approx(0.9)


def test_extract_respects_limits_and_returns_unit_descriptors(extractor):
    img = synthetic_image(120, 160, seed=3)
    feats = extractor.extract(img)
    assert feats.image_size == (160, 120)
    assert len(feats) == 64  # the synthetic image has far more maxima
    assert feats.descriptors.shape == (len(feats), 256)
    assert feats.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)
    x, y = feats.keypoints.T
    assert x.min() >= 4 and x.max() < 160 - 4 and y.min() >= 4 and y.max() < 120 - 4
    assert (feats.scores > 0.005).all()
    all_points = SuperPointExtractor(
        {"weights": extractor.conf["weights"], "max_keypoints": -1}
    ).extract(img)
    assert len(all_points) > 64
    # top-k keeps the strongest.
    assert feats.scores.min() >= np.sort(all_points.scores)[-64]


def test_extract_handles_sizes_not_multiple_of_eight(extractor):
    feats = extractor.extract(synthetic_image(101, 133, seed=4)[:, :, 0])  # grayscale input
    assert feats.image_size == (133, 101)
    assert len(feats) > 0
    assert feats.keypoints[:, 0].max() < 133 - 4 and feats.keypoints[:, 1].max() < 101 - 4


def test_superpoint_is_equivariant_to_shifts_by_whole_cells(checkpoints, extractor):
    """Shifting the image by a multiple of 8 shifts interior keypoints, scores and the dense
    descriptor map (sampled descriptors follow the official pixel-to-grid convention, which
    scales by (8w - 8) / (8w - 4.5) and so drifts by up to 3.5 px: not shift-equivariant)."""
    ext = SuperPointExtractor({"weights": str(checkpoints["superpoint"]), "max_keypoints": -1})
    big = synthetic_image(232, 304, seed=5)
    dx, dy, h, w = 16, 8, 224, 288
    img_a, img_b = big[:h, :w], big[dy : dy + h, dx : dx + w]
    fa, fb = ext.extract(img_a), ext.extract(img_b)
    # Beyond the reach of the zero padding at the borders (receptive field up to ~7 cells
    # towards the right/bottom, see below) and of NMS.
    margin = 72
    x, y = fa.keypoints.T
    interior = (x >= margin + dx) & (x < w - margin) & (y >= margin + dy) & (y < h - margin)
    assert interior.sum() >= 20
    lookup = {tuple(p): i for i, p in enumerate(fb.keypoints.astype(int).tolist())}
    found = 0
    for i in np.flatnonzero(interior):
        j = lookup.get((int(x[i]) - dx, int(y[i]) - dy))
        if j is not None:
            found += 1
            assert fb.scores[j] == pytest.approx(fa.scores[i], abs=1e-6)
    assert found == interior.sum()

    def dense(img: np.ndarray) -> torch.Tensor:
        gray = torch.from_numpy(img[:, :, 0].astype(np.float32) / 255)
        with torch.inference_mode():
            return ext.net(gray[None, None])[1][0]

    da, db = dense(img_a), dense(img_b)  # (256, 28, 36) cells
    cx, cy = dx // 8, dy // 8
    # Cell (i, j) of A is cell (i - cy, j - cx) of B; keep 5 cells from every left/top border
    # and 7 from every right/bottom one.
    inner_a = da[:, 5 + cy : -7, 5 + cx : -7]
    inner_b = db[:, 5 : -7 - cy, 5 : -7 - cx]
    torch.testing.assert_close(inner_a, inner_b, atol=1e-5, rtol=0)
    # ...and the comparison is not vacuous: next to the border the maps differ.
    assert (da[:, 1:3, 3:-3] - db[:, 0:2, 1:-5]).abs().max() > 1e-3


def test_descriptor_sampling_convention(extractor):
    """Cell (0, 0)'s centre (3.5, 3.5) samples that cell exactly; descriptors are unit."""
    torch.manual_seed(4)
    desc_map = F.normalize(torch.randn(256, 6, 8), dim=0)
    got = sample_descriptors(torch.tensor([[3.5, 3.5], [20.0, 30.0]]), desc_map)
    torch.testing.assert_close(got[0], desc_map[:, 0, 0])
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2))


# --- SuperGlue ------------------------------------------------------------------------------


def test_optimal_transport_marginals():
    torch.manual_seed(2)
    m, n = 7, 5
    scores = torch.randn(1, m, n) * 3
    log_plan = log_optimal_transport(scores, torch.tensor(0.5), iterations=500)
    plan = log_plan.exp()[0]
    torch.testing.assert_close(plan[:m].sum(1), torch.ones(m), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan[:, :n].sum(0), torch.ones(n), atol=1e-4, rtol=0)
    assert plan[m].sum().item() == pytest.approx(n, abs=1e-3)  # dustbins take the surplus
    assert plan[:, n].sum().item() == pytest.approx(m, abs=1e-3)
    # After the final column update, every real column sums to 1 exactly.
    few = log_optimal_transport(scores, torch.tensor(0.5), iterations=3).exp()[0]
    torch.testing.assert_close(few[:, :n].sum(0), torch.ones(n))


def test_optimal_transport_masking_equals_unpadded():
    torch.manual_seed(3)
    bin_score = torch.tensor(1.0)
    a = torch.randn(1, 6, 4)
    padded = torch.cat([a, torch.randn(1, 6, 3) * 10], dim=2)
    mask1 = torch.tensor([[True] * 4 + [False] * 3])
    mask0 = torch.ones(1, 6, dtype=torch.bool)
    ref = log_optimal_transport(a, bin_score, 50)[0]
    got = log_optimal_transport(padded, bin_score, 50, mask0, mask1)[0]
    torch.testing.assert_close(got[:, :4], ref[:, :4])
    torch.testing.assert_close(got[:, -1], ref[:, -1])  # dustbin column
    assert torch.isneginf(got[:, 4:7]).all()


def _check_consistent(matches, n_query: int, n_ref: int, threshold: float) -> None:
    idx = matches.indices
    assert idx.dtype == np.int64 and idx.shape == (len(matches), 2)
    assert len(np.unique(idx[:, 0])) == len(idx) and len(np.unique(idx[:, 1])) == len(idx)
    assert (idx[:, 0] >= 0).all() and (idx[:, 0] < n_query).all()
    assert (idx[:, 1] >= 0).all() and (idx[:, 1] < n_ref).all()
    assert ((matches.scores >= 0) & (matches.scores <= 1)).all()
    assert (matches.scores > threshold).all()


def test_matches_are_mutual_and_scored(extractor, matcher):
    q = extractor.extract(synthetic_image(120, 160, seed=6))
    r = extractor.extract(synthetic_image(120, 160, seed=7))
    matches = matcher.match(q, r)
    assert len(matches) > 0  # threshold 0: at least the globally best pair is mutual
    _check_consistent(matches, len(q), len(r), 0.0)
    strict = SuperGlueMatcher({**matcher.conf, "match_threshold": 0.2}, device=matcher.device)
    _check_consistent(strict.match(q, r), len(q), len(r), 0.2)


def test_match_many_equals_pairwise(checkpoints, extractor, matcher):
    q = extractor.extract(synthetic_image(120, 160, seed=8))
    small = SuperPointExtractor(
        {"weights": str(checkpoints["superpoint"]), "max_keypoints": 30}, device=extractor.device
    )
    refs = [
        extractor.extract(synthetic_image(120, 160, seed=9)),
        small.extract(synthetic_image(96, 128, seed=10)),  # fewer points, other size: padded
        Features(np.empty((0, 2), np.float32), np.empty((0, 256)), np.empty(0), (160, 120)),
        extractor.extract(synthetic_image(120, 160, seed=11)),
    ]
    # Maps store descriptors as float16.
    refs[3].descriptors = refs[3].descriptors.astype(np.float16)
    assert len(refs[1]) < len(refs[0])
    batched_matcher = SuperGlueMatcher({**matcher.conf, "batch_size": 3}, device=matcher.device)
    batched = batched_matcher.match_many(q, refs)
    assert len(batched) == 4 and len(batched[2]) == 0
    for ref, got in zip(refs, batched, strict=True):
        want = matcher.match(q, ref)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    assert len(batched[1]) > 0


def identity_superglue(path: Path) -> Path:
    """A hand-set checkpoint in the official format that turns SuperGlue into a plain
    descriptor matcher: no position encoding, no messages (last MLP layers zero), projection
    40 x identity (similarity = 100 x cosine) and a dustbin score of 50."""
    state = SuperGlueNet().state_dict()
    for key in state:
        if key.startswith("kenc.encoder.12.") or ".mlp.3." in key:
            state[key] = torch.zeros_like(state[key])
    state["final_proj.weight"] = 40 * torch.eye(256)[:, :, None]
    state["final_proj.bias"] = torch.zeros(256)
    state["bin_score"] = torch.tensor(50.0)
    torch.save(state, path)
    return path


def random_features(rng: np.random.Generator, n: int) -> Features:
    desc = rng.standard_normal((n, 256)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    kpts = (rng.random((n, 2)) * [640, 480]).astype(np.float32)
    return Features(kpts, desc, rng.random(n).astype(np.float32), (640, 480))


def test_identity_superglue_recovers_shared_descriptors_exactly(tmp_path):
    """Same descriptors (cosine 1, similarity 100) beat the dustbin (50); unrelated random
    256-d descriptors (cosine ~ 0 +- 0.06) lose to it. So the matches are known exactly."""
    sg = SuperGlueMatcher(
        {"weights": str(identity_superglue(tmp_path / "identity.pth")), "batch_size": 2}
    )
    rng = np.random.default_rng(13)
    query = random_features(rng, 50)
    expected, refs = [], []
    for n_shared, n_other in [(30, 10), (50, 0), (5, 40)]:
        shared = rng.choice(50, n_shared, replace=False)
        other = random_features(rng, n_other)
        desc = np.concatenate([query.descriptors[shared], other.descriptors])
        order = rng.permutation(len(desc))  # reference index of each row
        ref_desc = np.empty_like(desc)
        ref_desc[order] = desc
        kpts = (rng.random((len(desc), 2)) * [320, 240]).astype(np.float32)
        refs.append(Features(kpts, ref_desc, rng.random(len(desc)).astype(np.float32), (320, 240)))
        pairs = sorted(zip(shared.tolist(), order[:n_shared].tolist(), strict=True))
        expected.append(np.array(pairs, np.int64).reshape(-1, 2))
    for got, want in zip(sg.match_many(query, refs), expected, strict=True):
        np.testing.assert_array_equal(got.indices, want)
        assert (got.scores > 0.95).all()
