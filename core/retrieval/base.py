"""The retrieval interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from core.config import Conf
from core.types import Features

if TYPE_CHECKING:
    from core.mapstore import ReferenceMap


class Retriever(ABC):
    """Ranks a map's references for a query.

    ``fit`` runs once when a map is built (it may store state in the map); ``prepare`` once per
    loaded map in a worker; ``shortlist`` per query.
    """

    name: ClassVar[str]
    Conf: ClassVar[type[Conf]] = Conf  # options and defaults (core/config.py)

    def __init__(self, conf: dict[str, Any] | None = None) -> None:
        self.conf = self.Conf.make(conf, f"retriever {self.name!r}")

    def identity(self) -> dict[str, Any]:
        """What a map records: its retriever and options."""
        return {"name": self.name, "conf": self.conf.model_dump()}

    def fit(self, ref_map: ReferenceMap) -> None:  # noqa: B027 - optional hook
        """Build map-level state (codebooks, descriptors); default: nothing."""

    def prepare(self, ref_map: ReferenceMap) -> None:  # noqa: B027 - optional hook
        """Load map-level state into memory; default: nothing."""

    def keep_resident(self, device: str) -> None:  # noqa: B027 - optional hook
        """Hold what every query's exact pass reads in this process's memory (``device``
        "cpu") or on the device, from now on and across reloads; default: nothing."""

    def release_pages(self) -> None:  # noqa: B027 - optional hook
        """Unmap memory-mapped state read by the last queries; default: nothing."""

    @abstractmethod
    def shortlist(
        self,
        query: Features,
        ref_map: ReferenceMap,
        top_k: int | None,
        hidden: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Indices into ``ref_map.ids`` (best first) and their scores; ``top_k=None``: all.
        ``hidden`` (bool per reference) hides references, as if they were not in the map:
        how a map localises its own held-out positions (core/heldout.py)."""

    def reference_similarity(self, index: int, among: np.ndarray) -> np.ndarray | None:
        """The global similarity of the references ``among`` (map rows) to reference
        ``index``, or None when this retriever has no global descriptors. Used to pick views
        that face the same way (core.placement); only the few references near ``index`` are
        asked about, so a big map's descriptors are not all read."""
        return None
