"""Decoding untrusted bytes: every bad input gets a clear ImageError, good ones decode."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from core.errors import ImageError
from core.images import ImageLimits, decode_image, sniff_format


def _encode(ext: str, h: int = 48, w: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(ext, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".tiff"])
def test_accepted_formats_decode(ext):
    img = decode_image(_encode(ext))
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image"),
        (b"hello, I am text pretending to be a JPEG\n" * 5, "not an image"),
        (b"GIF89a" + b"\x00" * 100, "not an image"),
    ],
)
def test_non_images_are_refused(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_files_are_refused(ext):
    data = _encode(ext, 200, 200)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_too_many_bytes_is_refused_before_decoding():
    data = _encode(".png")
    with pytest.raises(ImageError, match="too large"):
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))


def test_decompression_bomb_is_refused_from_the_header():
    # A 20000x20000 PNG that compresses to a few hundred kB: refused without decoding it.
    big = np.zeros((20000, 20000), np.uint8)
    ok, buf = cv2.imencode(".png", big, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok and len(buf) < 2_000_000
    with pytest.raises(ImageError, match="too many pixels: 20000x20000"):
        decode_image(buf.tobytes())


def test_jpeg_header_size_is_read_for_bombs():
    data = _encode(".jpg", 300, 400)
    with pytest.raises(ImageError, match="400x300"):
        decode_image(data, ImageLimits(max_pixels=400 * 300 // 2 - 1))


def test_tiny_images_are_refused():
    with pytest.raises(ImageError, match="too small: 1x1"):
        decode_image(_encode(".png", 1, 1))


def test_grayscale_images_come_back_as_three_channels():
    ok, buf = cv2.imencode(".png", np.full((32, 40), 128, np.uint8))
    assert decode_image(buf.tobytes()).shape == (32, 40, 3)


def test_sniff_format():
    assert sniff_format(_encode(".jpg")) == "jpeg"
    assert sniff_format(_encode(".png")) == "png"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVE") is None


def test_a_jpeg_over_the_pixel_limit_is_decoded_at_half_size_upright():
    """A 48 MP phone photo against a 40 MP limit: decoded at half size (libjpeg's DCT
    scaling), its EXIF orientation applied; twice the limit and more is still refused."""
    from PIL import Image

    stored = np.zeros((400, 300, 3), np.uint8)  # a sideways photo: 300 wide, 400 high
    stored[:40] = 255  # its top rows are the upright photo's right-hand columns
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = io.BytesIO()
    Image.fromarray(stored).save(out, "JPEG", quality=95, exif=exif.tobytes())
    data = out.getvalue()
    image = decode_image(data, ImageLimits(max_pixels=400 * 300 // 2 + 100))
    assert image.shape == (150, 200, 3)
    assert image[:, -18:].mean() > 200 and image[:, :150].mean() < 30
    with pytest.raises(ImageError, match="too many pixels: 300x400"):
        decode_image(data, ImageLimits(max_pixels=400 * 300 // 2 - 100))
