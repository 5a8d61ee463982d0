"""Mutual nearest neighbour matching with optional ratio test and similarity threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.matching.base import Matcher
from core.types import Features, Matches


class MutualNearestNeighbour(Matcher):
    """Works on any L2-normalised descriptor.

    ``ratio``: Lowe's test on distances (1.0 disables); ``min_similarity``: cosine threshold
    (learned descriptors such as XFeat need one, see MATCHERS.md).
    """

    name = "mnn"
    default_conf = {"ratio": 0.9, "min_similarity": 0.0}

    def match(self, query: Features, reference: Features) -> Matches:
        return self.match_many(query, [reference])[0]

    def match_many(self, query: Features, references: Sequence[Features]) -> list[Matches]:
        if len(query) == 0:
            return [Matches.empty() for _ in references]
        q = torch.from_numpy(np.ascontiguousarray(query.descriptors, dtype=np.float32))
        out = []
        for ref in references:
            if len(ref) < 2:
                out.append(Matches.empty())
                continue
            r = torch.from_numpy(np.ascontiguousarray(ref.descriptors, dtype=np.float32))
            out.append(self._match_pair(q, r))
        return out

    def _match_pair(self, q: torch.Tensor, r: torch.Tensor) -> Matches:
        sim = q @ r.T  # cosine similarity of unit vectors
        top2 = sim.topk(2, dim=1)
        nn12 = top2.indices[:, 0]
        nn21 = sim.argmax(dim=0)
        ids = torch.arange(len(q))
        keep = nn21[nn12] == ids
        best = top2.values[:, 0]
        if self.conf["min_similarity"] > 0:
            keep &= best > self.conf["min_similarity"]
        if self.conf["ratio"] < 1.0:
            # Distances of unit vectors: d^2 = 2 - 2 s.
            d1 = (2 - 2 * best).clamp(min=0).sqrt()
            d2 = (2 - 2 * top2.values[:, 1]).clamp(min=0).sqrt()
            keep &= d1 < self.conf["ratio"] * d2
        qi = ids[keep]
        idx = torch.stack([qi, nn12[keep]], dim=1).numpy().astype(np.int64)
        scores = best[keep].clamp(0, 1).numpy().astype(np.float32)
        return Matches(idx, scores)
