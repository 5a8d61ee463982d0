"""Named presets in one table: which plug-ins build a map and how jobs query it.

As hloc's named confs (hloc/extract_features.py, hloc/match_features.py) each preset carries
the extractor, retriever, matcher, verification and estimator settings that go together. A
preset states only what differs from the plug-ins' own defaults, which live in their ``Conf``
classes (core/config.py), so every number has one home.

``xfeat+mnn`` is the default: chosen on the Getty set (3000 references, 150 queries) with
``bench/accuracy.py``; see BENCHMARKS.md before changing it. The other presets pair each
extractor with the matcher its weights were trained for, with the plug-ins' own settings
(untuned on Getty).

A job (core/localiser.py ``LocaliseOptions``) takes its defaults from the default preset. A map
built with extractor E and queried with matcher M gets the matcher settings of preset "E+M"
under the job's own ``matcher_conf``: XFeat descriptors need a cosine threshold with mutual NN
(without it, wrong matches swamp the count).
"""

from __future__ import annotations

from typing import Any, Literal

from core.config import Conf
from core.errors import InputError
from core.verify import VerifyConfig


class Preset(Conf):
    """One named configuration; every field is stated, so a preset reads as a whole."""

    extractor: str
    extractor_conf: dict[str, Any]
    retriever: str
    retriever_conf: dict[str, Any]
    matcher: str
    matcher_conf: dict[str, Any]
    top_k: int | None  # shortlist; None: every reference
    verify: VerifyConfig
    estimator: str
    estimator_conf: dict[str, Any]


DEFAULT_PRESET = "xfeat+mnn"

_DEFAULT = Preset(
    extractor="xfeat",
    extractor_conf={},  # XFeat's own: 1024 keypoints (2048 was no better)
    retriever="vlad",
    retriever_conf={},  # k = 256 words, single assignment (multi-assign no better)
    matcher="mnn",
    matcher_conf={"min_similarity": 0.82},
    top_k=50,
    verify=VerifyConfig(),  # MAGSAC++ fundamental matrix, 2 px
    estimator="cluster",
    estimator_conf={},  # core/estimation.py ClusterConf: radius 9, inlier floor 20, ...
)


def _pairing(extractor: str, matcher: str) -> Preset:
    """The default's retrieval, verification and estimation with another extractor and matcher,
    each with its own default settings."""
    update = {"extractor": extractor, "extractor_conf": {}, "matcher": matcher, "matcher_conf": {}}
    return _DEFAULT.model_copy(update=update)


# Named "extractor+matcher": preset_for() finds a preset by that name.
PRESETS: dict[str, Preset] = {
    DEFAULT_PRESET: _DEFAULT,
    "xfeat+lighterglue": _pairing("xfeat", "lighterglue"),
    "aliked+lightglue": _pairing("aliked", "lightglue"),
    "disk+lightglue": _pairing("disk", "lightglue"),
    "superpoint+superglue": _pairing("superpoint", "superglue"),
    "sift+mnn": _pairing("sift", "mnn"),
}
DEFAULT = PRESETS[DEFAULT_PRESET]

# The default map build, as the CLI and benchmarks name it.
EXTRACTOR = DEFAULT.extractor
EXTRACTOR_CONF = DEFAULT.extractor_conf
RETRIEVER = DEFAULT.retriever
RETRIEVER_CONF = DEFAULT.retriever_conf
TOP_K = DEFAULT.top_k


def preset_for(extractor: str, matcher: str) -> Preset | None:
    """The preset pairing this extractor with this matcher, if there is one."""
    return PRESETS.get(f"{extractor}+{matcher}")


def fine_matcher(extractor: str) -> str:
    """The matcher of a fine feature set of ``extractor`` (core/finestage.py): the one its
    presets pair it with beyond the default's mutual NN, the learned matcher trained for it."""
    paired = [p.matcher for p in PRESETS.values() if p.extractor == extractor]
    learned = [m for m in paired if m != DEFAULT.matcher]
    if not paired:
        raise InputError(
            f"no matcher is paired with {extractor!r} features; "
            f"extractors with one: {', '.join(sorted({p.extractor for p in PRESETS.values()}))}"
        )
    return (learned or paired)[0]


# "fast" (the coarse stage alone) or "accurate" (the coarse-to-fine cascade, core/finestage.py)
# for jobs that do not choose; workers can set their own (FEATURELOC_PROFILE). See README.
Profile = Literal["fast", "accurate"]
DEFAULT_PROFILE: Profile = "fast"

# The fine stage (core/finestage.py): the map's second feature set. 512 ALIKED keypoints: on a
# CPU LightGlue costs about a third of what 1024 cost, and a place is told apart by a few dozen
# inliers (BENCHMARKS.md).
FINE_EXTRACTOR = "aliked"
FINE_EXTRACTOR_CONF: dict[str, Any] = {"max_keypoints": 512}
# The map's self-measurement (core/heldout.py): held-out positions, and the coarse confidence
# below which the fit also runs the fine stage (escalation is never fitted above it).
HELDOUT_QUERIES = 200
HELDOUT_FINE_BELOW = 0.6
# Once the map has grown, measured positions this many position spacings (core/positions.py)
# from a new reference are measured again: a new photo there may now be what they match.
HELDOUT_REMEASURE_SPACINGS = 3.0
