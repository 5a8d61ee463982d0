"""Pinhole camera intrinsics of a map's photos, for the geometric placement of queries.

A map may record its camera (``manifest.json`` key ``camera``; ``featureloc map camera``), given
by its field of view or by focal lengths in pixels. Without one, localisation still works but
cannot place a query between references (see ``core.placement``).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Camera(BaseModel):
    """Pinhole intrinsics, no distortion.

    Either by field of view: ``fov_x_deg`` (and ``fov_y_deg``; without it pixels are square),
    principal point at the image centre, valid at any image size. Or by focal lengths ``fx``
    (``fy``, default ``fx``) and principal point ``cx``, ``cy`` (default the centre) in pixels
    of a ``width`` x ``height`` image; other sizes are taken as resized copies of it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fov_x_deg: float | None = Field(default=None, gt=0, lt=180)
    fov_y_deg: float | None = Field(default=None, gt=0, lt=180)
    fx: float | None = Field(default=None, gt=0)
    fy: float | None = Field(default=None, gt=0)
    cx: float | None = None
    cy: float | None = None
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_way(self) -> Camera:
        if (self.fov_x_deg is None) == (self.fx is None):
            raise ValueError("give either fov_x_deg (field of view) or fx (focal length in px)")
        if self.fov_x_deg is not None and any(
            v is not None for v in (self.fx, self.fy, self.cx, self.cy)
        ):
            raise ValueError("fy, cx and cy belong with fx, not with fov_x_deg")
        if self.fx is not None and (self.width is None or self.height is None):
            raise ValueError("fx needs the width and height of the image it was calibrated on")
        if self.fx is None and self.fov_y_deg is None and self.fov_x_deg is None:
            raise ValueError("no intrinsics given")
        if self.fx is not None and self.fov_y_deg is not None:
            raise ValueError("fov_y_deg belongs with fov_x_deg, not with fx")
        return self

    def matrix(self, size: tuple[int, int]) -> np.ndarray:
        """The 3x3 intrinsic matrix for an image of ``size`` (width, height). Pixel centres are
        at integer coordinates, as keypoints are."""
        w, h = size
        if self.fov_x_deg is not None:
            fx = (w / 2) / math.tan(math.radians(self.fov_x_deg) / 2)
            fy = (h / 2) / math.tan(math.radians(self.fov_y_deg) / 2) if self.fov_y_deg else fx
            return np.array([[fx, 0.0, (w - 1) / 2], [0.0, fy, (h - 1) / 2], [0.0, 0.0, 1.0]])
        assert self.fx is not None and self.width and self.height  # by the validator
        sx, sy = w / self.width, h / self.height
        fy = self.fy if self.fy is not None else self.fx
        cx = self.cx if self.cx is not None else (self.width - 1) / 2
        cy = self.cy if self.cy is not None else (self.height - 1) / 2
        return np.array(
            [
                [self.fx * sx, 0.0, (cx + 0.5) * sx - 0.5],
                [0.0, fy * sy, (cy + 0.5) * sy - 0.5],
                [0.0, 0.0, 1.0],
            ]
        )
