"""Decompression bombs in every accepted format are refused from the header, undecoded.

Each bomb is a real, valid file made here with Pillow (a few KB that would decode to tens of
megapixels). Each is also refused with its body destroyed: the size came from the header, since
the decoder would have failed on that body with another message.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from core.errors import ImageError
from core.images import ImageLimits, decode_image, header_size, sniff_format

SIDE = 7000  # 49 MP: over the default 40 MP limit


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _tiff_bomb() -> bytes:
    """The reviewer's case: a 1-bit deflate TIFF, ~9 KB for 7000x7000."""
    return _save(Image.new("1", (SIDE, SIDE)), "TIFF", compression="tiff_deflate")


def _tiff_ifd_offset(data: bytes) -> int:
    return int.from_bytes(data[4:8], "little")


def _without_body(fmt: str, data: bytes) -> bytes:
    """The same header, the pixel data zeroed: undecodable."""
    if fmt == "tiff":  # Pillow writes the strips between the 8-byte header and the IFD
        end = _tiff_ifd_offset(data)
        return data[:8] + bytes(end - 8) + data[end:]
    return data[:40] + bytes(max(len(data) - 40, 64))


def test_tiff_bomb_is_refused_from_the_header():
    data = _tiff_bomb()
    assert len(data) < 50_000 and sniff_format(data) == "tiff"
    for variant in (data, _without_body("tiff", data)):
        with pytest.raises(ImageError, match=f"too many pixels: {SIDE}x{SIDE}"):
            decode_image(variant)


def test_tiff_bomb_on_a_later_page_is_refused():
    """cv2 may read any page; a small first page must not hide a huge second one."""
    small = Image.new("1", (64, 64))
    data = _save(
        small,
        "TIFF",
        compression="tiff_deflate",
        save_all=True,
        append_images=[Image.new("1", (SIDE, SIDE))],
    )
    assert header_size(data, "tiff") == (SIDE, SIDE)
    with pytest.raises(ImageError, match=f"too many pixels: {SIDE}x{SIDE}"):
        decode_image(data)


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("VP8L", {"lossless": True, "method": 0}),  # 34 bytes for 49 MP
        ("VP8 ", {"quality": 1, "method": 0}),
        ("VP8X", {"lossless": True, "method": 0, "exif": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08"}),
    ],
)
def test_webp_bombs_are_refused_from_the_header(kind, kwargs):
    side = 3000  # lossy encoding of 49 MP takes a second; a low limit makes the same point
    limits = ImageLimits(max_pixels=side * side - 1)
    data = _save(Image.new("L", (side, side)), "WEBP", **kwargs)
    assert data[12:16] == kind.encode() and len(data) < 200_000
    for variant in (data, _without_body("webp", data)):
        with pytest.raises(ImageError, match=f"too many pixels: {side}x{side}"):
            decode_image(variant, limits)


def test_gif_bomb_is_refused_before_decoding():
    """GIF is not an accepted format (photos are not GIFs); OpenCV 5 would decode it."""
    data = _save(Image.new("P", (SIDE, SIDE)), "GIF")
    assert len(data) < 100_000
    with pytest.raises(ImageError, match="not an image we accept: GIF format"):
        decode_image(data)


def test_bmp_size_is_read_from_the_header():
    ok, buf = cv2.imencode(".bmp", np.zeros((300, 400, 3), np.uint8))
    assert ok
    data = buf.tobytes()
    assert header_size(data, "bmp") == (400, 300)
    with pytest.raises(ImageError, match="too many pixels: 400x300"):
        decode_image(data[:54] + bytes(100), ImageLimits(max_pixels=400 * 300 - 1))


@pytest.mark.parametrize("ext", [".tiff", ".webp", ".bmp"])
def test_sizes_from_the_header_match_the_decoded_image(ext):
    ok, buf = cv2.imencode(ext, np.full((123, 321, 3), 90, np.uint8))
    assert ok
    fmt = sniff_format(buf.tobytes())
    assert header_size(buf.tobytes(), fmt) == (321, 123)
    assert decode_image(buf.tobytes()).shape == (123, 321, 3)


def test_a_header_without_a_size_is_refused():
    data = bytearray(_tiff_bomb())
    ifd = _tiff_ifd_offset(bytes(data))
    count = int.from_bytes(data[ifd : ifd + 2], "little")
    for e in range(ifd + 2, ifd + 2 + 12 * count, 12):  # rename the width tag (256) away
        if int.from_bytes(data[e : e + 2], "little") == 256:
            data[e : e + 2] = (65000).to_bytes(2, "little")
    with pytest.raises(ImageError, match="header does not give its size"):
        decode_image(bytes(data))
