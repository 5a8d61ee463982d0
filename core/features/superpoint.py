"""SuperPoint (DeTone, Malisiewicz & Rabinovich, CVPRW 2018), loading Magic Leap's checkpoint.

The network is written here from the paper; its module names follow the official release so
that ``superpoint_v1.pth`` loads with every key accounted for. Magic Leap's licence does not let
featureloc ship that file: the user supplies it (``weights`` option or the environment variable
``FEATURELOC_SUPERPOINT_WEIGHTS`` in the environment or ``.env``, workers/settings.py).

Post-processing follows the official release so that results match it: softmax over 65 channels
(64 cell positions + "no point"), iterated max-pool NMS, score threshold, border removal, top-k,
and bilinear sampling of the coarse descriptor map with the official coordinate convention.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import config
from core.errors import InputError
from core.features.base import Extractor
from core.types import Features
from core.weights import file_sha256, load_official_checkpoint, resolve_user_weights

OFFICIAL_WEIGHTS_URL = "https://github.com/magicleap/SuperGluePretrainedNetwork"


def where_from(filename: str) -> str:
    """How a user obtains the official file (we may not ship it)."""
    return (
        f"download {filename} from {OFFICIAL_WEIGHTS_URL} (models/weights/); Magic Leap's "
        "licence (non-commercial use) does not allow featureloc to ship it"
    )


CELL = 8  # the encoder downsamples by 2**3


class SuperPointNet(nn.Module):
    """Shared VGG-style encoder, a detector head and a descriptor head (paper, section 3)."""

    def __init__(self, descriptor_dim: int = 256) -> None:
        super().__init__()
        # Encoder: four stages of two 3x3 convolutions, max-pooled between stages.
        self.conv1a = nn.Conv2d(1, 64, 3, padding=1)
        self.conv1b = nn.Conv2d(64, 64, 3, padding=1)
        self.conv2a = nn.Conv2d(64, 64, 3, padding=1)
        self.conv2b = nn.Conv2d(64, 64, 3, padding=1)
        self.conv3a = nn.Conv2d(64, 128, 3, padding=1)
        self.conv3b = nn.Conv2d(128, 128, 3, padding=1)
        self.conv4a = nn.Conv2d(128, 128, 3, padding=1)
        self.conv4b = nn.Conv2d(128, 128, 3, padding=1)
        # Detector head: 64 positions of an 8x8 cell plus a "no interest point" dustbin.
        self.convPa = nn.Conv2d(128, 256, 3, padding=1)
        self.convPb = nn.Conv2d(256, CELL * CELL + 1, 1)
        # Descriptor head: one coarse descriptor per cell, interpolated at keypoints later.
        self.convDa = nn.Conv2d(128, 256, 3, padding=1)
        self.convDb = nn.Conv2d(256, descriptor_dim, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) in [0, 1], H and W multiples of 8 -> heatmap (B, H, W), descriptors
        (B, D, H/8, W/8) of unit length."""
        x = image
        stages = [
            (self.conv1a, self.conv1b),
            (self.conv2a, self.conv2b),
            (self.conv3a, self.conv3b),
            (self.conv4a, self.conv4b),
        ]
        for i, (conv_a, conv_b) in enumerate(stages):
            x = F.relu(conv_b(F.relu(conv_a(x))))
            if i < len(stages) - 1:
                x = F.max_pool2d(x, 2, 2)

        logits = self.convPb(F.relu(self.convPa(x)))
        prob = logits.softmax(dim=1)[:, :-1]  # drop the dustbin
        # Channel k of a cell is pixel (k // 8, k % 8) inside it: unfold to full resolution.
        heatmap = F.pixel_shuffle(prob, CELL)[:, 0]

        desc = self.convDb(F.relu(self.convDa(x)))
        return heatmap, F.normalize(desc, p=2, dim=1)


def nms(heatmap: torch.Tensor, radius: int) -> torch.Tensor:
    """Keep local maxima in a (2r+1)^2 window, zero elsewhere.

    Like the official code, two extra rounds recover maxima that were only suppressed by a
    neighbour which was itself suppressed, so dense textures keep more than one point per window.
    """

    def window_max(t: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(t, 2 * radius + 1, stride=1, padding=radius)

    h = heatmap[:, None]
    is_max = h == window_max(h)
    for _ in range(2):
        suppressed = window_max(is_max.float()) > 0
        remaining = torch.where(suppressed, torch.zeros_like(h), h)
        new_max = (remaining == window_max(remaining)) & ~suppressed
        is_max = is_max | new_max
    return torch.where(is_max, h, torch.zeros_like(h))[:, 0]


def sample_descriptors(keypoints: torch.Tensor, desc_map: torch.Tensor) -> torch.Tensor:
    """Bilinear descriptors at pixel ``keypoints`` (N, 2) x,y from one (D, h, w) map -> (N, D).

    The pixel-to-grid mapping is the official one (cell centres at 8k + 3.5, normalised by
    8w - 4.5): the released weights were trained and evaluated with it.
    """
    _, h, w = desc_map.shape
    scale = keypoints.new_tensor([CELL * w - CELL / 2 - 0.5, CELL * h - CELL / 2 - 0.5])
    grid = (keypoints - CELL / 2 + 0.5) / scale * 2 - 1
    sampled = F.grid_sample(
        desc_map[None], grid[None, None], mode="bilinear", align_corners=True
    )  # (1, D, 1, N)
    return F.normalize(sampled[0, :, 0].T, p=2, dim=1)


# --- the plug-in ------------------------------------------------------------------------------


class SuperPointExtractor(Extractor):
    """SuperPoint keypoints and 256-d unit descriptors on the grayscale image in [0, 1].

    ``weights``: path to ``superpoint_v1.pth`` (default: ``FEATURELOC_SUPERPOINT_WEIGHTS``,
    environment or .env).
    ``weights_sha256``: when set (maps record it), the file must have this digest, so a map is
    never queried with descriptors from another checkpoint.
    """

    name = "superpoint"
    descriptor_dim = 256

    class Conf(config.Conf):
        weights: str | None = None
        weights_sha256: str | None = None
        nms_radius: int = 4
        keypoint_threshold: float = 0.005
        max_keypoints: int = 1024  # -1 keeps all
        remove_borders: int = 4

    conf: Conf  # this plug-in's options, merged over the defaults above

    def __init__(self, conf: dict[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__(conf, device)
        mk = int(self.conf.max_keypoints)
        if mk == 0 or mk < -1:
            raise InputError("superpoint max_keypoints must be positive or -1 (all)")
        filename = "superpoint_v1.pth"
        path = resolve_user_weights(
            self.conf.weights, "superpoint_weights", filename, where_from(filename)
        )
        self.weights_sha256 = file_sha256(path)
        pinned = self.conf.weights_sha256
        if pinned and pinned != self.weights_sha256:
            raise InputError(
                f"{str(path)!r} is not the SuperPoint checkpoint these features were made with "
                f"(sha256 {self.weights_sha256[:12]}..., expected {pinned[:12]}...)"
            )
        self.net = SuperPointNet(self.descriptor_dim)
        load_official_checkpoint(self.net, path, "SuperPoint")
        self.net.eval().to(device)

    def identity(self) -> dict[str, Any]:
        # The digest, not the path, is what makes two maps' descriptors comparable.
        conf = {**self.conf.model_dump(), "weights_sha256": self.weights_sha256}
        return {"name": self.name, "conf": conf}

    @torch.inference_mode()
    def extract(self, image: np.ndarray) -> Features:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        h, w = gray.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32) / 255.0)
        # Pad right/bottom to whole cells; points in the padding are removed with the borders.
        x = F.pad(x[None, None], (0, -w % CELL, 0, -h % CELL)).to(self.device)
        heatmap, desc_map = self.net(x)
        heatmap = nms(heatmap, int(self.conf.nms_radius))[0]

        ys, xs = torch.nonzero(heatmap > float(self.conf.keypoint_threshold), as_tuple=True)
        scores = heatmap[ys, xs]
        b = int(self.conf.remove_borders)
        inside = (xs >= b) & (xs < w - b) & (ys >= b) & (ys < h - b)
        xs, ys, scores = xs[inside], ys[inside], scores[inside]
        mk = int(self.conf.max_keypoints)
        if 0 < mk < len(scores):
            scores, top = scores.topk(mk)
            xs, ys = xs[top], ys[top]

        keypoints = torch.stack([xs, ys], dim=1).float()
        if len(keypoints):
            descriptors = sample_descriptors(keypoints, desc_map[0])
        else:
            descriptors = keypoints.new_zeros((0, self.descriptor_dim))
        return Features(
            keypoints.cpu().numpy().astype(np.float32),
            descriptors.cpu().numpy().astype(np.float32),
            scores.cpu().numpy().astype(np.float32),
            (w, h),
        )
