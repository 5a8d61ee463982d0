"""Decode and validate images from untrusted bytes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


# Formats recognised only to name them in the refusal: photos never come as these, and their
# decoders cannot be bounded from a header we check (GIF frames, animated PNG-like containers).
_REFUSED_SIGNATURES: dict[str, tuple[bytes, ...]] = {"GIF": (b"GIF87a", b"GIF89a")}

# TIFF tags that size what the decoder allocates: the image and, for tiled files, each tile.
_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 256, 257, 322, 323
_TIFF_MAX_IFDS = 64  # pages looked at; a loop of IFD offsets must not spin forever


def _u(
    data: bytes, offset: int, size: int, order: Literal["little", "big"] = "little"
) -> int | None:
    chunk = data[offset : offset + size]
    return int.from_bytes(chunk, order) if len(chunk) == size else None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
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


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size of a WebP (RIFF container; Google's "WebP Container Specification")."""
    kind = data[12:16]
    if kind == b"VP8X":  # extended: 24-bit canvas width-1 and height-1
        w, h = _u(data, 24, 3), _u(data, 27, 3)
        return None if w is None or h is None else (w + 1, h + 1)
    if kind == b"VP8L":  # lossless: signature 0x2f, then 14-bit width-1 and height-1
        bits = _u(data, 21, 4)
        if data[20:21] != b"\x2f" or bits is None:
            return None
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 ":  # lossy: key frame start code, then 14-bit width and height (RFC 6386)
        w, h = _u(data, 26, 2), _u(data, 28, 2)
        if data[23:26] != b"\x9d\x01\x2a" or w is None or h is None:
            return None
        return w & 0x3FFF, h & 0x3FFF
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    header = _u(data, 14, 4)
    if header == 12:  # BITMAPCOREHEADER: 16-bit sizes
        w, h = _u(data, 18, 2), _u(data, 20, 2)
    elif header is not None and header >= 40:  # BITMAPINFOHEADER and later: signed 32-bit
        w, h = _u(data, 18, 4), _u(data, 22, 4)
        if w is not None and h is not None:
            w, h = w if w < 2**31 else w - 2**32, h if h < 2**31 else h - 2**32
            h = abs(h)  # negative: rows stored top-down
    else:
        return None
    return None if w is None or h is None else (w, h)


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """The largest image or tile any page declares (TIFF 6.0, section 2: IFD entries).

    Every page is looked at, not only the first: a small first page must not hide a bomb.
    """
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"
    offset = _u(data, 4, 4, order)
    largest: tuple[int, int] | None = None
    seen: set[int] = set()
    while offset and offset not in seen and len(seen) < _TIFF_MAX_IFDS:
        seen.add(offset)
        count = _u(data, offset, 2, order)
        if count is None:
            return None
        tags: dict[int, int] = {}
        for e in range(offset + 2, offset + 2 + 12 * count, 12):
            tag, kind = _u(data, e, 2, order), _u(data, e + 2, 2, order)
            if tag is None or kind is None:
                return None
            if kind == 3:  # SHORT, left-justified in the 4-byte value field
                value = _u(data, e + 8, 2, order)
            elif kind == 4:  # LONG
                value = _u(data, e + 8, 4, order)
            else:
                continue
            if value is not None:
                tags[tag] = value
        if _TIFF_WIDTH not in tags or _TIFF_LENGTH not in tags:
            return None  # a page without a size cannot be bounded
        for size in (
            (tags[_TIFF_WIDTH], tags[_TIFF_LENGTH]),
            (tags.get(_TIFF_TILE_WIDTH, 0), tags.get(_TIFF_TILE_LENGTH, 0)),
        ):
            if largest is None or size[0] * size[1] > largest[0] * largest[1]:
                largest = size
        offset = _u(data, offset + 2 + 12 * count, 4, order)
    return largest


_HEADER_SIZE = {
    "png": _png_size,
    "jpeg": _jpeg_size,
    "webp": _webp_size,
    "bmp": _bmp_size,
    "tiff": _tiff_size,
}


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height from the header alone, so a decompression bomb is refused undecoded.

    None when the header does not say (then the image is refused: it cannot be bounded).
    """
    return _HEADER_SIZE[fmt](data)


def decode_image(data: bytes, limits: ImageLimits | None = None) -> np.ndarray:
    """Decode bytes into an HxWx3 uint8 BGR image, or raise ImageError saying why not."""
    limits = limits or ImageLimits()
    if not data:
        raise ImageError("empty image: 0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image too large: {len(data)} bytes > limit {limits.max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        refused = next(
            (n for n, sigs in _REFUSED_SIGNATURES.items() if data.startswith(sigs)), "unknown"
        )
        raise ImageError(
            f"not an image we accept: {refused} format (accepted: JPEG, PNG, WebP, BMP, TIFF)"
        )
    size = header_size(data, fmt)
    if size is None:
        raise ImageError(
            f"corrupt or truncated {fmt.upper()} image: its header does not give its size"
        )
    flags = cv2.IMREAD_COLOR  # applies the EXIF orientation (JPEG, PNG, WebP, TIFF)
    if size[0] * size[1] > limits.max_pixels:
        # A JPEG of up to twice the limit (a 48 or 64 MP phone photo) is decoded at half size
        # by libjpeg's DCT scaling, which never holds the full-size pixels; queries are brought
        # to the map's far smaller scale anyway (core/querysize.py). No further: a progressive
        # JPEG's coefficients are held whole, so what it claims still bounds its memory.
        if fmt != "jpeg" or size[0] * size[1] > 2 * limits.max_pixels:
            raise ImageError(
                f"image has too many pixels: {size[0]}x{size[1]} > limit {limits.max_pixels}"
            )
        flags = cv2.IMREAD_REDUCED_COLOR_2
    # libjpeg decodes a truncated file without complaint (grey bottom rows): demand the EOI marker.
    if fmt == "jpeg" and b"\xff\xd9" not in data[-4096:]:
        raise ImageError("corrupt or truncated JPEG image: no end-of-image marker")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
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
