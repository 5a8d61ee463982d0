"""The matcher interface every matching plug-in implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from core.config import Conf
from core.types import Features, Matches


class Matcher(ABC):
    name: ClassVar[str]
    Conf: ClassVar[type[Conf]] = Conf  # options and defaults (core/config.py)
    # Extractor names whose features this matcher understands; None means any descriptor.
    compatible_extractors: ClassVar[frozenset[str] | None] = None

    def __init__(self, conf: dict[str, Any] | None = None, device: str = "cpu") -> None:
        self.conf = self.Conf.make(conf, f"matcher {self.name!r}")
        self.device = device

    def accepts(self, extractor_name: str) -> bool:
        return self.compatible_extractors is None or extractor_name in self.compatible_extractors

    @abstractmethod
    def match(self, query: Features, reference: Features) -> Matches: ...

    def match_many(self, query: Features, references: Sequence[Features]) -> list[Matches]:
        """Match one query against several references; learned matchers override to batch."""
        return [self.match(query, ref) for ref in references]
