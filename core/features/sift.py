"""SIFT (OpenCV): no weights, the baseline extractor."""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field

from core import config
from core.features.base import Extractor
from core.types import Features


class SiftExtractor(Extractor):
    name = "sift"

    class Conf(config.Conf):
        max_keypoints: int = Field(2048, ge=1)
        contrast_threshold: float = 0.02
        root_sift: bool = True

    conf: Conf  # this plug-in's options, merged over the defaults above

    descriptor_dim = 128

    def __init__(self, conf=None, device: str = "cpu") -> None:
        super().__init__(conf, device)
        self._sift = cv2.SIFT.create(
            nfeatures=int(self.conf.max_keypoints),
            contrastThreshold=float(self.conf.contrast_threshold),
        )

    def extract(self, image: np.ndarray) -> Features:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        kps, desc = self._sift.detectAndCompute(gray, None)
        h, w = gray.shape[:2]
        if desc is None or not kps:
            return Features(
                np.empty((0, 2), np.float32),
                np.empty((0, 128), np.float32),
                np.empty((0,), np.float32),
                (w, h),
            )
        # OpenCV may return a few more than nfeatures (ties): keep the strongest.
        order = np.argsort([-k.response for k in kps])[: int(self.conf.max_keypoints)]
        pts = np.array([kps[i].pt for i in order], np.float32)
        scores = np.array([kps[i].response for i in order], np.float32)
        desc = desc[order].astype(np.float32)
        if self.conf.root_sift:
            # RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise then sqrt, so that the dot
            # product compares like the Hellinger kernel; unit L2 norm follows.
            desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-8)
            desc = np.sqrt(desc)
        else:
            desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-8)
        return Features(pts, desc, scores, (w, h))
