"""The extractor interface every feature plug-in implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from core.types import Features


class Extractor(ABC):
    """Turns a BGR uint8 image into local features.

    ``default_conf`` is merged with the caller's conf; unknown keys are refused so a typo in a
    map's configuration fails loudly instead of silently using a default.
    """

    name: ClassVar[str]
    default_conf: ClassVar[dict[str, Any]] = {}
    descriptor_dim: ClassVar[int | None] = None

    def __init__(self, conf: dict[str, Any] | None = None, device: str = "cpu") -> None:
        self.conf = merge_conf(self.default_conf, conf or {}, what=f"extractor {self.name!r}")
        self.device = device

    @abstractmethod
    def extract(self, image: np.ndarray) -> Features: ...

    def identity(self) -> dict[str, Any]:
        """What a map records: features from a different identity are not comparable."""
        return {"name": self.name, "conf": dict(self.conf)}


def merge_conf(default: dict[str, Any], conf: dict[str, Any], what: str) -> dict[str, Any]:
    unknown = sorted(set(conf) - set(default))
    if unknown:
        raise ValueError(f"unknown option(s) for {what}: {', '.join(unknown)}")
    return {**default, **conf}
