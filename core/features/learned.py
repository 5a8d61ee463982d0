"""Shared plumbing for learned (torch) extractors: image to tensor, resizing, weights, output.

A subclass names its weight file, builds its kornia model from the loaded checkpoint and turns
one RGB tensor into keypoints, descriptors and scores; everything else lives here.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from pydantic import Field

from core.config import Conf
from core.features.base import Extractor
from core.types import Features
from core.weights import WeightFile, load_checkpoint, locate


class LearnedConf(Conf):
    """Options every learned extractor understands (subclasses add their own)."""

    max_keypoints: int = Field(1024, ge=1)
    # Longest side in pixels before extraction; None keeps the image size.
    resize_max: int | None = Field(None, ge=32)
    weights: str | None = None  # a user path overriding the packaged weight file


class LearnedExtractor(Extractor):
    weight_file: ClassVar[WeightFile]
    Conf: ClassVar[type[LearnedConf]] = LearnedConf
    conf: LearnedConf

    def __init__(self, conf: dict[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__(conf, device)
        self.torch_device = torch.device(device)
        checkpoint = load_checkpoint(locate(self.weight_file, self.conf.weights))
        # Any: each subclass calls its own model's methods (e.g. XFeat's detectAndCompute).
        self.model: Any = self.build_model(checkpoint).to(self.torch_device).eval()

    @abstractmethod
    def build_model(self, checkpoint: dict) -> torch.nn.Module:
        """The kornia model with the checkpoint loaded strictly (see core.weights.load_strict)."""

    @abstractmethod
    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(1, 3, H, W) RGB in [0, 1] -> keypoints (N, 2) x,y px, descriptors (N, D), scores (N)."""

    def extract(self, image: np.ndarray) -> Features:
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        h, w = image.shape[:2]
        small, sx, sy = self._resize(image)
        rgb = np.ascontiguousarray(small[:, :, ::-1])
        tensor = torch.from_numpy(rgb).to(self.torch_device).permute(2, 0, 1)[None].float() / 255.0
        with torch.inference_mode():
            kpts, desc, scores = self.detect(tensor)
            desc = torch.nn.functional.normalize(desc.float(), dim=-1)
            order = torch.argsort(scores.float(), descending=True)[: self.conf.max_keypoints]
            kpts, desc, scores = kpts[order].float(), desc[order], scores[order].float()
        points = kpts.cpu().numpy()
        if sx != 1.0 or sy != 1.0:
            # Pixel centres: x_orig + 0.5 = (x_small + 0.5) * scale.
            points = (points + 0.5) * np.array([sx, sy], np.float32) - 0.5
        points = np.clip(points, 0, [w - 1, h - 1]).astype(np.float32)
        return Features(
            points,
            desc.cpu().numpy().astype(np.float32),
            scores.cpu().numpy().astype(np.float32),
            (w, h),
        )

    def _resize(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        resize_max = self.conf.resize_max
        h, w = image.shape[:2]
        if resize_max is None or max(h, w) <= resize_max:
            return image, 1.0, 1.0
        factor = resize_max / max(h, w)
        nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
        small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        return small, w / nw, h / nh
