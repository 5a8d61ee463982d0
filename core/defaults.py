"""Default settings in one place: map builds (CLI, workers) and per-job localisation options.

Chosen on the Getty set (3000 references, 150 queries) with ``bench/accuracy.py``; see the
numbers there before changing them.
"""

from __future__ import annotations

from typing import Any

# Map building.
EXTRACTOR = "xfeat"
EXTRACTOR_CONF: dict[str, Any] = {}  # XFeat's own defaults: 1024 keypoints (2048 was no better)
RETRIEVER = "vlad"
RETRIEVER_CONF: dict[str, Any] = {}  # k = 256 words, single assignment (multi-assign no better)

# Localisation (LocaliseOptions defaults).
MATCHER = "mnn"
# Per (matcher, map extractor), applied under a job's own matcher_conf: XFeat descriptors need a
# cosine threshold with mutual NN (without it, wrong matches swamp the count; see MATCHERS.md).
MATCHER_CONF: dict[tuple[str, str], dict[str, Any]] = {("mnn", "xfeat"): {"min_similarity": 0.82}}
TOP_K = 50
VERIFY_THRESHOLD_PX = 2.0
ESTIMATOR = "cluster"
ESTIMATOR_CONF: dict[str, Any] = {
    "radius": 9.0,
    "inlier_floor": 20.0,
    "weight_power": 2.0,
    "min_evidence": 10.0,
    "confidence_scale": 60.0,
}
