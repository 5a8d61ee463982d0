"""Bring a query photo to the scale of the map's references before extraction.

Local features are detected at a scale: a 12 MP phone photo matched against a map of 680 px
references sees every structure several times larger than the references do, so the detector
finds other keypoints (and takes tens of seconds). A query is therefore resized so that one of
its pixels covers about the same angle as one reference pixel:

- where the job gives the query's camera (``query_camera``) and the map records its own, by the
  ratio of their focal lengths in pixels (a wide-angle and a telephoto photo of one size are
  different scales);
- otherwise by size: the query's longest side to the references' (the same camera is assumed,
  at whatever resolution it saved; a portrait photo's longest side is its height).

Ratios within ``TOLERANCE`` of 1 keep the photo as it is (resampling a photo that is already
at the map's scale only blurs it); enlargement is capped at ``MAX_UPSCALE`` (an enlarged photo
gains no detail, only the detector's scale).
"""

from __future__ import annotations

import cv2
import numpy as np

from core.camera import Camera

TOLERANCE = 0.1  # |factor - 1| at or below this: no resampling
MAX_UPSCALE = 2.0


def scale_factor(
    query_size: tuple[int, int],
    reference_size: tuple[int, int],
    query_camera: Camera | None = None,
    reference_camera: Camera | None = None,
) -> float:
    """The factor (new / old side) that brings a query of ``query_size`` (width, height) to
    the scale of references of ``reference_size``; 1.0 when no resampling is needed."""
    if query_camera is not None and reference_camera is not None:
        f_query = float(query_camera.matrix(query_size)[0, 0])
        f_ref = float(reference_camera.matrix(reference_size)[0, 0])
        factor = f_ref / f_query
    else:
        factor = max(reference_size) / max(query_size)
    factor = min(factor, MAX_UPSCALE)
    return 1.0 if abs(factor - 1.0) <= TOLERANCE else factor


def resize_by(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` scaled by ``factor`` (area averaging when shrinking, so nothing aliases)."""
    if factor == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interpolation = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def to_map_scale(
    image: np.ndarray,
    reference_size: tuple[int, int] | None,
    query_camera: Camera | None = None,
    reference_camera: Camera | None = None,
) -> tuple[np.ndarray, float]:
    """The query at the map's scale and the factor applied (1.0 for a map that records no
    reference size: an empty map)."""
    if reference_size is None:
        return image, 1.0
    h, w = image.shape[:2]
    factor = scale_factor((w, h), reference_size, query_camera, reference_camera)
    return resize_by(image, factor), factor
