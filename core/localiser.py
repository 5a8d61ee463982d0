"""The localisation pipeline for one loaded map: shortlist, match, verify, estimate."""

from __future__ import annotations

import dataclasses
import time
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

from core import defaults, registry
from core.camera import Camera
from core.errors import InputError, MapError
from core.estimation import ESTIMATORS
from core.mapstore import ReferenceMap
from core.placement import Link, PlacementConfig, place_query
from core.types import CandidateResult, Estimate, Features, LocalisationResult, Verification
from core.verify import VerifyConfig, verify


class LocaliseOptions(BaseModel):
    """Per-job options. Unknown keys are refused: a typo must not silently use a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Defaults: core/defaults.py (measured with bench/accuracy.py).
    matcher: str = defaults.MATCHER
    matcher_conf: dict[str, Any] = Field(
        default_factory=dict,
        description="merged over core.defaults.MATCHER_CONF for the matcher and map extractor",
    )
    top_k: int | None = Field(default=defaults.TOP_K, ge=1, description="shortlist; None: all")
    verify: bool = Field(
        default=True,
        description="False skips geometric verification (0 inliers everywhere): only for the"
        " raw-count estimator most_matches, the original method",
    )
    verify_model: str = "fundamental"
    verify_method: str = "magsac"
    verify_threshold_px: float = Field(default=defaults.VERIFY_THRESHOLD_PX, gt=0, le=50)
    estimator: str = defaults.ESTIMATOR
    estimator_conf: dict[str, Any] = Field(
        default_factory=dict,
        description="merged over core.defaults.ESTIMATOR_CONF for the default estimator",
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

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        if v not in ESTIMATORS:
            raise ValueError(f"unknown estimator {v!r}; available: {', '.join(sorted(ESTIMATORS))}")
        return v

    @model_validator(mode="after")
    def _verification_needed(self) -> LocaliseOptions:
        if not self.verify and self.estimator != "most_matches":
            raise ValueError(f"estimator {self.estimator!r} needs verify=true")
        return self

    @field_validator("placement_conf")
    @classmethod
    def _known_placement_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            PlacementConfig(**v)
        except TypeError as exc:
            raise ValueError(str(exc).replace("PlacementConfig.__init__()", "")) from None
        return v

    @classmethod
    def parse(cls, options: dict[str, Any] | None) -> LocaliseOptions:
        try:
            return cls.model_validate(options or {})
        except ValidationError as exc:
            msgs = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors()
            )
            raise InputError(f"bad options: {msgs}") from None

    def effective_matcher_conf(self, extractor: str) -> dict[str, Any]:
        """The job's matcher_conf over the measured defaults for this matcher and extractor."""
        return {**defaults.MATCHER_CONF.get((self.matcher, extractor), {}), **self.matcher_conf}

    def effective_estimator_conf(self) -> dict[str, Any]:
        base = defaults.ESTIMATOR_CONF if self.estimator == defaults.ESTIMATOR else {}
        return {**base, **self.estimator_conf}

    def placement_config(self) -> PlacementConfig:
        return PlacementConfig(**self.placement_conf)  # fields checked at validation

    def verify_config(self) -> VerifyConfig:
        try:
            return VerifyConfig(
                model=self.verify_model,
                method=self.verify_method,
                threshold_px=self.verify_threshold_px,
            )
        except ValueError as exc:
            raise InputError(f"bad options: {exc}") from None


class Localiser:
    """Holds one map's features, its retriever, the extractor that built it, and matchers."""

    def __init__(self, ref_map: ReferenceMap, device: str = "cpu") -> None:
        self.map = ref_map
        self.device = device
        ext = ref_map.extractor
        self.extractor = registry.create_extractor(ext["name"], ext.get("conf"), device)
        ret = ref_map.retriever
        self.retriever = registry.retriever_class(ret["name"])(ret.get("conf"))
        self.retriever.prepare(ref_map)
        self._matchers: dict[tuple[str, str], Any] = {}

    def matcher(self, name: str, conf: dict[str, Any]):
        key = (name, repr(sorted(conf.items())))
        if key not in self._matchers:
            m = registry.create_matcher(name, conf, self.device)
            if not m.accepts(self.map.extractor["name"]):
                raise MapError(
                    f"matcher {name!r} cannot match {self.map.extractor['name']!r} features "
                    f"of map {self.map.name!r}"
                )
            self._matchers[key] = m
        return self._matchers[key]

    def localise(
        self, image: np.ndarray, options: LocaliseOptions | None = None
    ) -> LocalisationResult:
        opts = options or LocaliseOptions()
        vconf = opts.verify_config()
        pconf = opts.placement_config()
        mconf = opts.effective_matcher_conf(self.map.extractor["name"])
        matcher = self.matcher(opts.matcher, mconf)
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        query = self.extractor.extract(image)
        timings["extract"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        order, scores = self.retriever.shortlist(query, self.map, opts.top_k)
        timings["retrieve"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        refs = [self.map.features[i] for i in order]
        all_matches = matcher.match_many(query, refs)
        match_s = time.perf_counter() - t0
        timings["match"] = match_s

        t0 = time.perf_counter()
        candidates = []
        links: dict[str, Link] = {}  # verified inliers per reference id, for placement
        for rank, (i, score, ref, matches) in enumerate(
            zip(order, scores, refs, all_matches, strict=True)
        ):
            tv = time.perf_counter()
            ver = (
                verify(
                    query.keypoints[matches.indices[:, 0]],
                    ref.keypoints[matches.indices[:, 1]],
                    vconf,
                )
                if opts.verify
                else Verification(np.zeros(len(matches), bool))
            )
            inl = matches.indices[ver.inliers]
            links[self.map.ids[i]] = Link(int(i), inl[:, 0], inl[:, 1])
            candidates.append(
                _candidate(
                    self.map,
                    int(i),
                    rank,
                    float(score),
                    query,
                    ref,
                    matches,
                    ver,
                    match_s / max(len(refs), 1),
                    time.perf_counter() - tv,
                )
            )
        timings["verify"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        estimate = ESTIMATORS[opts.estimator](candidates, opts.effective_estimator_conf())
        timings["estimate"] = time.perf_counter() - t0

        # Placement builds on verified inliers, so it needs verification.
        if opts.placement and opts.verify and estimate.localised and self.map.camera is not None:
            t0 = time.perf_counter()
            estimate = self._place(query, estimate, links, matcher, opts, pconf)
            timings["place"] = time.perf_counter() - t0
        return LocalisationResult(estimate, candidates, timings, opts.model_dump())

    def _place(
        self,
        query: Features,
        estimate: Estimate,
        links: dict[str, Link],
        matcher: Any,
        opts: LocaliseOptions,
        conf: PlacementConfig,
    ) -> Estimate:
        """The estimate moved to where the geometry of its supporting views puts the query."""
        ref_camera = self.map.camera
        query_camera = opts.query_camera or ref_camera
        assert ref_camera is not None and query_camera is not None and estimate.x is not None
        feats = self.map.features
        placed = place_query(
            query,
            query_camera.matrix(query.image_size),
            [links[rid] for rid in dict.fromkeys(estimate.support) if rid in links],
            feats,
            self.map.positions,
            lambda i: ref_camera.matrix(feats[i].image_size),
            matcher.match,
            (estimate.x, estimate.y),
            conf,
            similar=self.retriever.reference_similarity,
        )
        if placed is None:
            return estimate
        return dataclasses.replace(
            estimate, x=placed.x, y=placed.y, method=f"{estimate.method}+placement"
        )


def _candidate(
    ref_map, i, rank, score, query: Features, ref: Features, matches, ver, match_s, verify_s
):
    inl = ver.inliers
    return CandidateResult(
        reference_id=ref_map.ids[i],
        position=(float(ref_map.positions[i, 0]), float(ref_map.positions[i, 1])),
        retrieval_rank=rank,
        retrieval_score=score,
        query_keypoints=len(query),
        reference_keypoints=len(ref),
        tentative_matches=len(matches),
        inliers=int(inl.sum()),
        mean_match_score=float(matches.scores[inl].mean()) if inl.any() else 0.0,
        match_seconds=match_s,
        verify_seconds=verify_s,
    )
