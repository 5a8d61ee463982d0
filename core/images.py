"""Decode and validate images from untrusted bytes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import ImageError

# Magic numbers of the formats we accept; anything else is refused before OpenCV sees it.
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "webp": (b"RIFF",),
    "bmp": (b"BM",),
    "tiff": (b"II*\x00", b"MM\x00*"),
}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 16


def sniff_format(data: bytes) -> str | None:
    for name, sigs in _SIGNATURES.items():
        if any(data.startswith(s) for s in sigs):
            if name == "webp" and data[8:12] != b"WEBP":
                continue
            return name
    return None


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header alone, so a decompression bomb is refused undecoded."""
    if data.startswith(b"\x89PNG") and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE):
                h = int.from_bytes(data[i + 5 : i + 7], "big")
                w = int.from_bytes(data[i + 7 : i + 9], "big")
                return w, h
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            seg = int.from_bytes(data[i + 2 : i + 4], "big")
            i += 2 + seg
        return None
    return None


def decode_image(data: bytes, limits: ImageLimits | None = None) -> np.ndarray:
    """Decode bytes into an HxWx3 uint8 BGR image, or raise ImageError saying why not."""
    limits = limits or ImageLimits()
    if not data:
        raise ImageError("empty image: 0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image too large: {len(data)} bytes > limit {limits.max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError("not an image: unknown format (accepted: JPEG, PNG, WebP, BMP, TIFF)")
    size = _header_size(data)
    if size is not None and size[0] * size[1] > limits.max_pixels:
        raise ImageError(
            f"image has too many pixels: {size[0]}x{size[1]} > limit {limits.max_pixels}"
        )
    # libjpeg decodes a truncated file without complaint (grey bottom rows): demand the EOI marker.
    if fmt == "jpeg" and b"\xff\xd9" not in data[-4096:]:
        raise ImageError("corrupt or truncated JPEG image: no end-of-image marker")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"corrupt or truncated {fmt.upper()} image: it could not be decoded")
    h, w = image.shape[:2]
    if h * w > limits.max_pixels:
        raise ImageError(f"image has too many pixels: {w}x{h} > limit {limits.max_pixels}")
    if min(h, w) < limits.min_side:
        raise ImageError(f"image too small: {w}x{h}, each side must be >= {limits.min_side} px")
    return image


def read_image(path: Path, limits: ImageLimits | None = None) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror}") from exc
    try:
        return decode_image(data, limits)
    except ImageError as exc:
        raise ImageError(f"{Path(path).name}: {exc}") from exc
