"""The extractor interface every feature plug-in implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from core.config import Conf
from core.types import Features


class Extractor(ABC):
    """Turns a BGR uint8 image into local features.

    ``Conf`` declares the options and their defaults (core/config.py): the caller's conf is
    merged over them and unknown keys are refused, so a typo in a map's configuration fails
    loudly instead of silently using a default.
    """

    name: ClassVar[str]
    Conf: ClassVar[type[Conf]] = Conf
    descriptor_dim: ClassVar[int | None] = None

    def __init__(self, conf: dict[str, Any] | None = None, device: str = "cpu") -> None:
        self.conf = self.Conf.make(conf, f"extractor {self.name!r}")
        self.device = device

    @abstractmethod
    def extract(self, image: np.ndarray) -> Features: ...

    def identity(self) -> dict[str, Any]:
        """What a map records: features from a different identity are not comparable."""
        return {"name": self.name, "conf": self.conf.model_dump()}
