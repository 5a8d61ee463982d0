"""Every reference, in map order: the original method's exhaustive matching."""

from __future__ import annotations

import numpy as np

from core.retrieval.base import Retriever


class ExhaustiveRetriever(Retriever):
    name = "exhaustive"

    def shortlist(self, query, ref_map, top_k):
        n = len(ref_map.ids)
        k = n if top_k is None else min(top_k, n)
        return np.arange(k), np.zeros(k, np.float32)
