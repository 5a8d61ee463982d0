"""Mutual nearest neighbour matching with optional ratio test and similarity threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core import config
from core.matching.base import Matcher
from core.types import Features, Matches

# References per batched similarity product: a few 1024x1024 blocks stay in the CPU's cache,
# which measured faster per pair than 16 or more at a time (bench/accuracy.py).
BATCH = 4


class MutualNearestNeighbour(Matcher):
    """Works on any L2-normalised descriptor.

    ``ratio``: Lowe's test on distances (1.0 disables); ``min_similarity``: cosine threshold
    (learned descriptors such as XFeat need one).
    """

    name = "mnn"

    class Conf(config.Conf):
        ratio: float = 0.9
        min_similarity: float = 0.0

    conf: Conf  # this plug-in's options, merged over the defaults above

    def match(self, query: Features, reference: Features) -> Matches:
        return self.match_many(query, [reference])[0]

    def match_many(self, query: Features, references: Sequence[Features]) -> list[Matches]:
        out = [Matches.empty() for _ in references]
        if len(query) == 0:
            return out
        q = torch.from_numpy(np.ascontiguousarray(query.descriptors, dtype=np.float32))
        todo = [i for i, ref in enumerate(references) if len(ref) >= 2]
        for start in range(0, len(todo), BATCH):
            group = todo[start : start + BATCH]
            lengths = [len(references[i]) for i in group]
            refs = torch.zeros(len(group), max(lengths), q.shape[1])
            for row, (i, n) in enumerate(zip(group, lengths, strict=True)):
                # torch converts the map's float16 to float32 much faster than numpy does.
                refs[row, :n] = torch.from_numpy(np.ascontiguousarray(references[i].descriptors))
            sim = torch.matmul(q, refs.transpose(1, 2))  # (G, Nq, Nr) cosine similarities
            for row, n in enumerate(lengths):
                sim[row, :, n:] = -torch.inf  # padding is no neighbour
            top2 = sim.topk(2, dim=2)
            # Each reference descriptor's best similarity to the query. amax over this axis is
            # far faster than argmax, and the value identifies the mutual pair just as well.
            ref_best = sim.amax(dim=1)
            for row, i in enumerate(group):
                out[i] = self._select(top2.values[row], top2.indices[row, :, 0], ref_best[row])
        return out

    def _select(self, top2: torch.Tensor, nn12: torch.Tensor, ref_best: torch.Tensor) -> Matches:
        """Mutual nearest neighbours from each query descriptor's two best similarities
        ``top2`` (Nq, 2) and best reference ``nn12``, and each reference's best similarity."""
        ids = torch.arange(len(nn12))
        best = top2[:, 0]
        keep = best == ref_best[nn12]  # the query is its reference's nearest neighbour too
        if self.conf.min_similarity > 0:
            keep &= best > self.conf.min_similarity
        if self.conf.ratio < 1.0:
            # Distances of unit vectors: d^2 = 2 - 2 s.
            d1 = (2 - 2 * best).clamp(min=0).sqrt()
            d2 = (2 - 2 * top2[:, 1]).clamp(min=0).sqrt()
            keep &= d1 < self.conf.ratio * d2
        qi = ids[keep]
        idx = torch.stack([qi, nn12[keep]], dim=1).numpy().astype(np.int64)
        scores = best[keep].clamp(0, 1).numpy().astype(np.float32)
        return Matches(idx, scores)
