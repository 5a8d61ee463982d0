"""Every reference, in map order: the original method's exhaustive matching."""

from __future__ import annotations

import numpy as np

from core.retrieval.base import Retriever


class ExhaustiveRetriever(Retriever):
    """No ranking at all, so ``top_k`` is ignored: truncating an unranked list would drop
    arbitrary references (those late in id order), never the unlikely ones."""

    name = "exhaustive"

    def shortlist(self, query, ref_map, top_k, hidden=None):
        order = np.arange(len(ref_map.ids))
        if hidden is not None:
            order = order[~hidden]
        return order, np.zeros(len(order), np.float32)
