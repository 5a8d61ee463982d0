"""Mutual nearest neighbour matching with optional ratio test and similarity threshold.

``match_many`` works on the matcher's device: the query's descriptors and the shortlisted
references', zero-padded to one (K, N, D) batch, go to the device in one copy; each block of
references is one masked batched product, with the mutual check and the thresholds computed
there too; the per-query-descriptor outcome (kept, partner, similarity) comes back in one copy
and is split per reference on the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core import config
from core.matching.base import Matcher
from core.types import Features, Matches

# References per batched similarity product on the CPU: a few 1024x1024 blocks stay in the
# CPU's cache, which measured faster per pair than 16 or more at a time (bench/accuracy.py).
# A GPU takes a query's whole shortlist in one product (50 x 1024 x 1024 floats: 200 MB).
CPU_BLOCK = 4
DEVICE_BLOCK = 64


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
        todo = [i for i, ref in enumerate(references) if len(ref) >= 2]
        if len(query) == 0 or not todo:
            return out
        device = torch.device(self.device)
        on_cpu = device.type == "cpu"
        q = torch.from_numpy(np.ascontiguousarray(query.descriptors, dtype=np.float32)).to(device)
        block = CPU_BLOCK if on_cpu else DEVICE_BLOCK
        parts = []
        for start in range(0, len(todo), block):
            group = [references[i] for i in todo[start : start + block]]
            lengths = [len(ref) for ref in group]
            refs = torch.zeros(len(group), max(lengths), q.shape[1], pin_memory=not on_cpu)
            for row, ref in enumerate(group):
                # torch converts the map's float16 to float32 much faster than numpy does.
                refs[row, : lengths[row]] = torch.from_numpy(np.ascontiguousarray(ref.descriptors))
            parts.append(self._mutual(q, refs.to(device, non_blocking=True), lengths))
        # One copy back: per reference and query descriptor its mutual partner (-1: none) and
        # their similarity, the float32 bits carried as int32 beside it.
        packed = torch.cat(parts, dim=1).cpu().numpy()
        partners, sims = packed[0], packed[1].view(np.float32)
        for row, i in enumerate(todo):
            qi = np.flatnonzero(partners[row] >= 0)
            idx = np.stack([qi, partners[row, qi]], axis=1).astype(np.int64)
            out[i] = Matches(idx, np.clip(sims[row, qi], 0, 1).astype(np.float32))
        return out

    def _mutual(self, q: torch.Tensor, refs: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """(2, G, Nq) int32: for each reference of ``refs`` (G, N, D, zero-padded to the
        longest of ``lengths``) and query descriptor, its mutual partner passing the thresholds
        (-1: none) and the bits of their float32 similarity."""
        sim = torch.matmul(q, refs.transpose(1, 2))  # (G, Nq, Nr) cosine similarities
        for row, n in enumerate(lengths):
            sim[row, :, n:] = -torch.inf  # padding is no neighbour (only its columns written)
        top2 = sim.topk(2, dim=2)
        # Each reference descriptor's best similarity to the query. amax over this axis is
        # far faster than argmax, and the value identifies the mutual pair just as well.
        ref_best = sim.amax(dim=1)  # (G, Nr)
        best, second = top2.values[..., 0], top2.values[..., 1]
        partner = top2.indices[..., 0]
        keep = best == ref_best.gather(1, partner)  # the query is its partner's nearest too
        if self.conf.min_similarity > 0:
            keep &= best > self.conf.min_similarity
        if self.conf.ratio < 1.0:
            # Distances of unit vectors: d^2 = 2 - 2 s.
            d1 = (2 - 2 * best).clamp(min=0).sqrt()
            d2 = (2 - 2 * second).clamp(min=0).sqrt()
            keep &= d1 < self.conf.ratio * d2
        partner = torch.where(keep, partner, -1).to(torch.int32)
        return torch.stack([partner, best.contiguous().view(torch.int32)])
