"""The localisation pipeline for one loaded map: shortlist, match, verify, estimate."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core import registry
from core.calibration import calibrate
from core.camera import Camera
from core.config import Conf, error_text
from core.defaults import DEFAULT, DEFAULT_PROFILE, Profile, fine_matcher, preset_for
from core.errors import ImageError, InputError, MapError
from core.estimation import ESTIMATORS
from core.finestage import (
    DEFAULT_ESCALATE_BELOW,
    FineConf,
    decide,
    match_places,
    place_estimate,
    place_rule,
    takes_over,
    top_places,
)
from core.geometry import PoseConfig, place_by_pose
from core.images import read_image
from core.mapstore import FINE_SET, ReferenceMap, append_features, fine_fitted
from core.pairframes import PairFrames
from core.placement import Link, PlacementConfig, place_query
from core.querysize import to_map_scale
from core.types import (
    CandidateResult,
    Estimate,
    FeatureLookup,
    Features,
    InlierMatches,
    LocalisationResult,
    Matches,
)
from core.verify import VerifyConfig, verify_many


class LocaliseOptions(BaseModel):
    """Per-job options, fully validated by :meth:`parse` (the client calls it before queueing a
    job, the worker again before running it). Unknown keys are refused at every level, the
    plug-in and estimator confs included: a typo must not silently use a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Defaults: the default preset (core/defaults.py, measured with bench/accuracy.py).
    matcher: str = DEFAULT.matcher
    matcher_conf: dict[str, Any] = Field(
        default_factory=dict,
        description="merged over the matcher settings of the preset pairing the map's extractor"
        " with this matcher (core.defaults.preset_for), then the matcher's own defaults",
    )
    top_k: int | None = Field(default=DEFAULT.top_k, ge=1, description="shortlist; None: all")
    verify: bool = Field(
        default=True,
        description="False skips geometric verification (0 inliers everywhere): only for the"
        " raw-count estimator most_matches, the original method",
    )
    verify_model: str = DEFAULT.verify.model
    verify_method: str = DEFAULT.verify.method
    verify_threshold_px: float = DEFAULT.verify.threshold_px
    estimator: str = DEFAULT.estimator
    estimator_conf: dict[str, Any] = Field(
        default_factory=dict,
        description="core.estimation's Conf fields of the estimator, merged over its defaults"
        " (and the default preset's estimator_conf when it is the default estimator)",
    )
    placement: bool = Field(
        default=True,
        description="place the query between references by two-view geometry (core.placement)"
        " when the map records its camera",
    )
    placement_conf: dict[str, Any] = Field(
        default_factory=dict, description="core.placement.PlacementConfig fields"
    )
    query_camera: Camera | None = Field(
        default=None, description="the query photo's intrinsics; default: the map's camera"
    )
    profile: Profile = Field(
        default=DEFAULT_PROFILE,
        description="fast: the coarse stage only; accurate: the fine stage (core.finestage)"
        " re-verifies the top places when the coarse answer is in doubt and the map has fine"
        " features",
    )
    fine_conf: dict[str, Any] = Field(
        default_factory=dict, description="core.finestage.FineConf fields"
    )

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        if v not in ESTIMATORS:
            raise ValueError(f"unknown estimator {v!r}; available: {', '.join(sorted(ESTIMATORS))}")
        return v

    @field_validator("matcher")
    @classmethod
    def _known_matcher(cls, v: str) -> str:
        registry.matcher_class(v)  # InputError naming the available matchers
        return v

    @model_validator(mode="after")
    def _confs_are_valid(self) -> LocaliseOptions:
        if not self.verify and self.estimator != "most_matches":
            raise ValueError(f"estimator {self.estimator!r} needs verify=true")
        # Each raises InputError (a ValueError) naming the bad key and the allowed ones.
        registry.matcher_class(self.matcher).Conf.make(
            self.matcher_conf, f"matcher_conf of matcher {self.matcher!r}"
        )
        self.estimator_config()
        self.fine_config()
        self.placement_config()
        self.verify_config()
        return self

    @classmethod
    def parse(cls, options: dict[str, Any] | None) -> LocaliseOptions:
        """The one way to validate job options: InputError saying every problem."""
        try:
            return cls.model_validate(options or {})
        except ValidationError as exc:
            raise InputError(f"bad options: {error_text(exc)}") from None

    def effective_matcher_conf(self, extractor: str) -> dict[str, Any]:
        """The job's matcher_conf over the preset's for this extractor and matcher."""
        preset = preset_for(extractor, self.matcher)
        return {**(preset.matcher_conf if preset else {}), **self.matcher_conf}

    def estimator_config(self) -> Conf:
        base = DEFAULT.estimator_conf if self.estimator == DEFAULT.estimator else {}
        conf = {**base, **self.estimator_conf}
        what = f"estimator_conf of estimator {self.estimator!r}"
        return ESTIMATORS[self.estimator].Conf.make(conf, what)

    def fine_config(self) -> FineConf:
        return FineConf.make(self.fine_conf, "fine_conf")

    def placement_config(self) -> PlacementConfig:
        return PlacementConfig.make(self.placement_conf, "placement_conf")

    def verify_config(self) -> VerifyConfig:
        return VerifyConfig.make(
            {
                "model": self.verify_model,
                "method": self.verify_method,
                "threshold_px": self.verify_threshold_px,
            },
            "verification (verify_model, verify_method, verify_threshold_px)",
        )


@dataclass(frozen=True)
class ProfileRun:
    """The profile a job ran (it may not be the one asked: ``note`` says why, or what it
    lacked), the coarse confidence below which the fine stage runs, and whether the map's fit
    measured its fine set."""

    profile: Profile
    note: str | None = None
    escalate_below: float = 0.0
    fine_fitted: bool = False


def _calibrated(estimate: Estimate, curve: dict[str, list[float]], threshold: float) -> Estimate:
    """The confidence as P(error < 5) and the localised call, by a curve fitted on the map's
    held-out positions (core/heldout.py)."""
    p = calibrate(curve, estimate.confidence)
    # A declined answer (a guess under doubt, or none) stays declined.
    localised = estimate.localised and p >= threshold
    return dataclasses.replace(estimate, confidence=p, localised=localised)


@dataclass(frozen=True)
class VerifiedMatches:
    """The query's tentative matches with one reference and which survive verification."""

    index: int  # the reference's row in the map
    matches: Matches
    inliers: np.ndarray  # (M,) bool over ``matches``
    verify_seconds: float
    reference_keypoints: int

    @property
    def inlier_indices(self) -> np.ndarray:
        """(K, 2) query and reference keypoint indices of the verified matches."""
        return self.matches.indices[self.inliers]


def require_compatible(matcher: str, extractor: str, map_name: str) -> None:
    """MapError when matcher ``matcher`` can never match the ``extractor`` features of a map:
    the rule a worker applies to a job, and the client at submission (no job is made)."""
    compatible = registry.matcher_class(matcher).compatible_extractors
    if compatible is not None and extractor not in compatible:
        raise _incompatible(matcher, extractor, map_name)


def _incompatible(matcher: str, extractor: str, map_name: str) -> MapError:
    return MapError(f"matcher {matcher!r} cannot match {extractor!r} features of map {map_name!r}")


class Localiser:
    """Holds one map's features, its retriever, the extractor that built it, and matchers."""

    def __init__(
        self,
        ref_map: ReferenceMap,
        device: str = "cpu",
        fine_source: Callable[[str], Path] | None = None,
        verify_threads: int = 1,
    ) -> None:
        """``fine_source`` (reference id -> its photo) lets the fine stage extract the fine
        features a map lacks when it first needs them, and add them to the map.
        ``verify_threads``: threads that verify a job's pairs (core.verify.verify_many)."""
        self.map = ref_map
        self.verify_threads = verify_threads
        self.fine_source = fine_source
        self.device = device
        ext = ref_map.extractor
        self.extractor = registry.create_extractor(ext["name"], ext.get("conf"), device)
        ret = ref_map.retriever
        self.retriever = registry.retriever_class(ret["name"])(ret.get("conf"))
        self.retriever.prepare(ref_map)
        self.retriever.keep_resident(device)
        self._matchers: dict[tuple[str, str], Any] = {}
        self._fine: tuple[Any, Any] | None = None

    def matcher(self, name: str, conf: dict[str, Any]):
        key = (name, repr(sorted(conf.items())))
        if key not in self._matchers:
            extractor = self.map.extractor["name"]
            # Checked on the class first: an incompatible request must say so, not fail on the
            # matcher's missing weights, which it would never have used.
            require_compatible(name, extractor, self.map.name)
            m = registry.create_matcher(name, conf, self.device)
            if not m.accepts(extractor):
                raise _incompatible(name, extractor, self.map.name)
            self._matchers[key] = m
        return self._matchers[key]

    def job_matcher(self, opts: LocaliseOptions):
        """The matcher a job's options ask for, with this map's preset settings under them."""
        return self.matcher(opts.matcher, opts.effective_matcher_conf(self.map.extractor["name"]))

    def match_and_verify(
        self,
        query: Features,
        indices: Sequence[int] | np.ndarray,
        opts: LocaliseOptions,
        features: FeatureLookup | None = None,
    ) -> tuple[list[VerifiedMatches], float]:
        """Match the query with the map's references ``indices`` and verify each pair, as a job
        does; also the seconds matching took. ``localise`` and ``core.draw`` both use this, so a
        figure shows exactly the inliers a job counted. ``features`` (default: the map's) is
        where the references' features are read."""
        matcher = self.job_matcher(opts)
        vconf = opts.verify_config()
        lookup = self.map.features if features is None else features
        refs = [lookup[int(i)] for i in indices]
        t0 = time.perf_counter()
        all_matches = matcher.match_many(query, refs)
        match_s = time.perf_counter() - t0
        if opts.verify:
            points = [
                (query.keypoints[m.indices[:, 0]], ref.keypoints[m.indices[:, 1]])
                for ref, m in zip(refs, all_matches, strict=True)
            ]
            checked = [(v.inliers, s) for v, s in verify_many(points, vconf, self.verify_threads)]
        else:
            checked = [(np.zeros(len(m), bool), 0.0) for m in all_matches]
        out = [
            VerifiedMatches(int(i), matches, inliers, seconds, len(ref))
            for i, ref, matches, (inliers, seconds) in zip(
                indices, refs, all_matches, checked, strict=True
            )
        ]
        return out, match_s

    def localise(
        self,
        image: np.ndarray,
        options: LocaliseOptions | None = None,
        hidden: np.ndarray | None = None,
        calibrated: bool = True,
    ) -> LocalisationResult:
        """Localise one BGR image. ``hidden`` (bool per reference) localises as if those
        references were not in the map, and ``calibrated=False`` keeps the raw confidence: how
        the map measures itself (core/heldout.py)."""
        try:
            return self._localise(image, options or LocaliseOptions(), hidden, calibrated)
        finally:
            # The map's pages this job read leave the process (the page cache keeps them):
            # a worker's resident memory stays at one job's reads, whatever the map's size.
            self.map.release_pages()
            self.retriever.release_pages()

    def _localise(
        self,
        image: np.ndarray,
        opts: LocaliseOptions,
        hidden: np.ndarray | None,
        calibrated: bool,
    ) -> LocalisationResult:
        pconf = opts.placement_config()
        matcher = self.job_matcher(opts)  # fails before any work when it cannot match this map
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        image, scale = self.to_map_scale(image, opts)
        query = self.extractor.extract(image)
        timings["extract"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        order, scores = self.retriever.shortlist(query, self.map, opts.top_k, hidden)
        timings["retrieve"] = time.perf_counter() - t0

        # Each reference's features are read from the map once per job: placement reuses
        # the shortlist's, and reads only the partners it adds.
        features = _ReadOnce(self.map.features)
        t0 = time.perf_counter()
        pairs, match_s = self.match_and_verify(query, order, opts, features)
        timings["match"] = match_s
        timings["verify"] = time.perf_counter() - t0 - match_s
        per_pair_match_s = match_s / max(len(pairs), 1)
        candidates = [
            _candidate(self.map, rank, float(score), query, pair, per_pair_match_s)
            for rank, (score, pair) in enumerate(zip(scores, pairs, strict=True))
        ]
        # Verified inliers per reference id, for placement.
        links = {
            self.map.ids[p.index]: Link(p.index, p.inlier_indices[:, 0], p.inlier_indices[:, 1])
            for p in pairs
        }

        t0 = time.perf_counter()
        estimate = ESTIMATORS[opts.estimator](candidates, opts.estimator_config())
        timings["estimate"] = time.perf_counter() - t0

        training, fit_id = self.map.fit  # one fit for the whole job
        run = self.profile_run(opts, training)
        fine: list[CandidateResult] = []
        fine_inliers: list[InlierMatches] = []
        if run.profile == "accurate" and estimate.confidence < run.escalate_below:
            t0 = time.perf_counter()
            estimate, fine, fine_inliers = self._refine(image, estimate, candidates, opts)
            if fine:  # else no chosen view had fine features, and the coarse answer stands
                timings["fine"] = time.perf_counter() - t0

        # Placement builds on verified inliers, so it needs verification.
        if opts.placement and opts.verify and estimate.localised and self.map.camera is not None:
            t0 = time.perf_counter()
            estimate = self._place(query, estimate, links, matcher, opts, pconf, features, hidden)
            timings["place"] = time.perf_counter() - t0
        curve = training.get("calibration", {}).get("fine" if fine else "coarse")
        if fine and not run.fine_fitted:
            curve = None  # a fit made without this fine set says nothing of its answers
        if calibrated and curve is not None:
            estimate = _calibrated(estimate, curve, training["localised_probability"])
        coarse_inliers = [
            _inliers(
                self.map.ids[p.index],
                "coarse",
                query,
                features[p.index],
                p.inlier_indices,
                len(p.matches),
            )
            for p in pairs
        ]
        return LocalisationResult(
            estimate, candidates + fine, timings, opts.model_dump(), query.image_size, scale,
            inliers=coarse_inliers + fine_inliers,
            profile_used=run.profile, profile_note=run.note,
            calibrated=calibrated and curve is not None, fit_id=fit_id,
        )  # fmt: skip

    def to_map_scale(self, image: np.ndarray, opts: LocaliseOptions) -> tuple[np.ndarray, float]:
        """The query photo at the scale of this map's references, and the factor applied: what
        every stage extracts from (core/querysize.py). A job's ``query_camera`` scales by the
        ratio of focal lengths where the map records its camera; otherwise by size."""
        camera = self.map.camera if opts.query_camera is not None else None
        return to_map_scale(image, self.map.reference_size, opts.query_camera, camera)

    def profile_run(self, opts: LocaliseOptions, training: dict[str, Any]) -> ProfileRun:
        """What the job's profile amounts to on this map: the accurate profile needs
        verification and a fine set, else it runs as fast (and says why); its escalation
        threshold is the job's, the fit's (when the fit measured this fine set) or the
        default (and says so)."""
        fine_set = self.map.fine_extractor
        if opts.profile != "accurate":
            return ProfileRun(opts.profile)
        if not opts.verify:
            return ProfileRun("fast", "the fine stage needs verify=true")
        if fine_set is None:
            return ProfileRun(
                "fast",
                f"map {self.map.name!r} has no fine set (featureloc map fine {self.map.name})",
            )
        fitted = fine_fitted(training, fine_set)
        below = opts.fine_config().escalate_below
        if below is not None:
            return ProfileRun("accurate", None, below, fitted)
        if fitted:
            return ProfileRun("accurate", None, training["escalate_below"], True)
        why = "the map is not fitted" if not training else "its fit has no fine part"
        note = (
            f"default escalation threshold and uncalibrated fine confidence: {why} "
            f"(featureloc map fit {self.map.name})"
        )
        return ProfileRun("accurate", note, DEFAULT_ESCALATE_BELOW, False)

    def fine_models(self) -> tuple[Any, Any]:
        """The fine extractor and matcher of this map (loaded on first use)."""
        if self._fine is None:
            ident = self.map.fine_extractor
            assert ident is not None
            extractor = registry.create_extractor(ident["name"], ident.get("conf"), self.device)
            matcher = registry.create_matcher(fine_matcher(ident["name"]), {}, self.device)
            if not matcher.accepts(ident["name"]):
                raise MapError(f"no fine matcher for {ident['name']!r} features")
            self._fine = (extractor, matcher)
        return self._fine

    def _fill_fine(self, indices: Sequence[int]) -> None:
        """Extract and store the fine features of ``indices`` that the map lacks, from
        ``fine_source`` (nothing without one)."""
        fine = self.map.feature_set(FINE_SET)
        todo = [i for i in dict.fromkeys(indices) if not fine.has(i)]
        if todo:
            fine.refresh()  # another worker may have added them
            todo = [i for i in todo if not fine.has(i)]
        if not todo or self.fine_source is None:
            return
        extractor, _ = self.fine_models()
        items = []
        for i in todo:
            rid = self.map.ids[i]
            try:
                items.append((rid, extractor.extract(read_image(self.fine_source(rid)))))
            except (ImageError, OSError):
                continue  # that view is skipped, as any view without fine features
        if items:
            append_features(self.map.path, FINE_SET, items)
            fine.refresh()

    def _refine(
        self,
        image: np.ndarray,
        coarse: Estimate,
        candidates: list[CandidateResult],
        opts: LocaliseOptions,
    ) -> tuple[Estimate, list[CandidateResult], list[InlierMatches]]:
        """Re-verify the strongest coarse places with the fine features; the estimate the
        fine evidence supports, one candidate row per fine-matched view, and its inliers."""
        extractor, matcher = self.fine_models()
        conf = opts.fine_config()
        radius, floor = place_rule(conf, opts.estimator_config())
        places = top_places(
            candidates, self.map.index.__getitem__, radius, floor, conf.places, conf.views
        )
        query = extractor.extract(image)
        self._fill_fine([i for p in places for i in p.views])
        fine_feats = self.map.feature_set(FINE_SET)
        vconf = VerifyConfig.make({"threshold_px": conf.verify_threshold_px})
        fine = match_places(
            query, places, lambda i: fine_feats[i] if fine_feats.has(i) else None, matcher, vconf
        )
        decision = decide(len(places), fine, conf)
        rows = [
            CandidateResult(
                reference_id=self.map.ids[m.index],
                position=(
                    float(self.map.positions[m.index, 0]),
                    float(self.map.positions[m.index, 1]),
                ),
                retrieval_rank=m.place,
                retrieval_score=places[m.place].evidence,
                query_keypoints=len(query),
                reference_keypoints=len(fine_feats[m.index]),
                tentative_matches=m.tentative,
                inliers=m.inliers,
                mean_match_score=m.mean_score,
                match_seconds=m.seconds,
                verify_seconds=0.0,
                stage="fine",
            )
            for m in fine
        ]
        inliers = [
            _inliers(
                self.map.ids[m.index],
                "fine",
                query,
                fine_feats[m.index],
                m.inlier_indices,
                m.tentative,
            )
            for m in fine
        ]
        if decision.place is None:
            return coarse, rows, inliers
        if takes_over(decision, coarse.localised):
            x, y, views = place_estimate(decision.place, fine, self.map.positions)
            support = [self.map.ids[i] for i in views]
            estimate = Estimate(x, y, decision.score, True, "fine", support)
        else:
            estimate = dataclasses.replace(
                coarse, confidence=decision.score, method=f"{coarse.method}+fine"
            )
        return estimate, rows, inliers

    def _place(
        self,
        query: Features,
        estimate: Estimate,
        links: dict[str, Link],
        matcher: Any,
        opts: LocaliseOptions,
        conf: PlacementConfig,
        feats: FeatureLookup,
        hidden: np.ndarray | None = None,
    ) -> Estimate:
        """The estimate moved to where the geometry of its supporting views puts the query."""
        ref_camera = self.map.camera
        query_camera = opts.query_camera or ref_camera
        assert ref_camera is not None and query_camera is not None
        assert estimate.x is not None and estimate.y is not None  # a localised estimate
        chosen = [links[rid] for rid in dict.fromkeys(estimate.support) if rid in links]
        if conf.method != "pairs" and self.map.geometry.count():
            posed = self._pose(
                query, query_camera.matrix(query.image_size), chosen, estimate, conf, hidden
            )
            if posed is not None or conf.method == "pose-only":
                return posed or estimate
        placed = place_query(
            query,
            query_camera.matrix(query.image_size),
            chosen,
            self.pair_frames(opts, feats),
            self.map.positions,
            (estimate.x, estimate.y),
            conf,
            similar=self.retriever.reference_similarity,
            hidden=hidden,
        )
        if placed is None:
            return estimate
        return dataclasses.replace(
            estimate,
            x=placed.x,
            y=placed.y,
            method=f"{estimate.method}+placement",
            heading=placed.heading,
        )

    def pair_frames(self, opts: LocaliseOptions, feats: FeatureLookup | None = None) -> PairFrames:
        """The pair frames (core/pairframes.py) a job with ``opts`` places with: the map's
        stored ones where they were built with the job's matcher, settings and the map's
        camera, else solved from ``feats`` (default: the map's features) as needed."""
        camera = self.map.camera
        assert camera is not None  # placement and its frames need the map's camera
        feats = self.map.features if feats is None else feats
        settings = opts.placement_config().frame_settings()
        key = settings.key(opts.matcher, opts.effective_matcher_conf(self.map.extractor["name"]))
        return PairFrames(
            feats,
            self.map.positions,
            self.map.ids,
            lambda i: camera.matrix(feats[i].image_size),
            self.job_matcher(opts).match,
            settings,
            self.map.pair_frames,
            f"{key} camera={camera.model_dump_json()}",
            self.map.index,
        )

    def _pose(
        self,
        query: Features,
        query_k: np.ndarray,
        links: list[Link],
        estimate: Estimate,
        conf: PlacementConfig,
        hidden: np.ndarray | None,
    ) -> Estimate | None:
        """The estimate moved to the query's camera centre by one PnP against the map's
        points (core/geometry.py), or None when that gives no pose."""
        assert estimate.x is not None and estimate.y is not None
        hidden_rows = np.flatnonzero(hidden) if hidden is not None else np.zeros(0, np.int64)
        pconf = PoseConfig(
            left_handed=conf.left_handed, max_shift=conf.max_shift, pnp_px=conf.pnp_px
        )
        posed = place_by_pose(
            query,
            query_k,
            links,
            self.map.geometry.__getitem__,
            (estimate.x, estimate.y),
            pconf,
            frozenset(self.map.ids[i] for i in hidden_rows),
        )
        if posed is None:
            return None
        return dataclasses.replace(
            estimate,
            x=posed.x,
            y=posed.y,
            method=f"{estimate.method}+pose",
            heading=posed.heading,
            pose_inliers=posed.inliers,
        )


class _ReadOnce:
    """A job's view of a feature set: each reference read once, then served from memory."""

    def __init__(self, source: FeatureLookup) -> None:
        self._source = source
        self._read: dict[int, Features] = {}

    def __getitem__(self, i: int) -> Features:
        if i not in self._read:
            self._read[i] = self._source[i]
        return self._read[i]


def _candidate(
    ref_map: ReferenceMap,
    rank: int,
    score: float,
    query: Features,
    pair: VerifiedMatches,
    match_s: float,
) -> CandidateResult:
    i, inl, matches = pair.index, pair.inliers, pair.matches
    return CandidateResult(
        reference_id=ref_map.ids[i],
        position=(float(ref_map.positions[i, 0]), float(ref_map.positions[i, 1])),
        retrieval_rank=rank,
        retrieval_score=score,
        query_keypoints=len(query),
        reference_keypoints=pair.reference_keypoints,
        tentative_matches=len(matches),
        inliers=int(inl.sum()),
        mean_match_score=float(matches.scores[inl].mean()) if inl.any() else 0.0,
        match_seconds=match_s,
        verify_seconds=pair.verify_seconds,
    )


def _inliers(
    reference_id: str,
    stage: str,
    query: Features,
    reference: Features,
    rows: np.ndarray | None,
    tentative: int,
) -> InlierMatches:
    """The inlier keypoints of a verified pair (``rows``: (K, 2) query and reference keypoint
    rows) in the frames they were extracted in."""
    rows = np.empty((0, 2), np.int64) if rows is None else rows
    return InlierMatches(
        reference_id,
        stage,
        query.keypoints[rows[:, 0]].astype(np.float32),
        reference.keypoints[rows[:, 1]].astype(np.float32),
        reference.image_size,
        tentative,
    )
