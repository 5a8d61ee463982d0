"""Queries at any resolution: a photo is brought to the scale of the map's references before
extraction (core/querysize.py), and its EXIF orientation is applied when it is decoded."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli.synthetic import make_world, render_view
from core.camera import Camera
from core.images import decode_image
from core.localiser import LocaliseOptions, Localiser
from core.mapbuild import RefEntry, build_map, read_positions_csv
from core.mapstore import MapStore
from core.querysize import MAX_UPSCALE, resize_by, scale_factor

# The scene's references are 480x360 (cli.synthetic.generate_dataset's default size).
REF_SIZE = (480, 360)


def test_size_rule_brings_the_longest_side_to_the_references() -> None:
    assert scale_factor((1920, 1440), REF_SIZE) == pytest.approx(0.25)
    assert scale_factor((1440, 1920), REF_SIZE) == pytest.approx(0.25)  # portrait: its height
    assert scale_factor((4032, 3024), (680, 490)) == pytest.approx(680 / 4032)
    # Within the tolerance the photo is left alone; enlargement is capped.
    assert scale_factor((500, 375), REF_SIZE) == 1.0
    assert scale_factor((480, 360), REF_SIZE) == 1.0
    assert scale_factor((120, 90), REF_SIZE) == MAX_UPSCALE


def test_camera_rule_uses_the_ratio_of_focal_lengths() -> None:
    ref = Camera(fov_x_deg=74.0)
    # A 2x telephoto photo at the references' size: each pixel covers half the angle, so the
    # photo is halved to the references' scale (the size rule would keep it).
    tele = Camera(fx=2 * ref.matrix(REF_SIZE)[0, 0], width=480, height=360)
    assert scale_factor(REF_SIZE, REF_SIZE, tele, ref) == pytest.approx(0.5)
    assert scale_factor(REF_SIZE, REF_SIZE) == 1.0
    # The same camera at 4x the pixels: a quarter, as by size.
    assert scale_factor((1920, 1440), REF_SIZE, ref, ref) == pytest.approx(0.25)


def test_resize_keeps_the_aspect_ratio() -> None:
    image = np.zeros((1440, 1920, 3), np.uint8)
    assert resize_by(image, 0.25).shape == (360, 480, 3)
    assert resize_by(image, 1.0) is image


def _exif_rotated_jpeg(upright: np.ndarray) -> bytes:
    """The photo as a phone held sideways stores it: pixels turned a quarter anticlockwise,
    EXIF orientation 6 ("rotate 90 degrees clockwise to display")."""
    from PIL import Image

    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright)[:, :, ::-1]))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def test_exif_orientation_is_applied_on_decode() -> None:
    upright = np.zeros((120, 200, 3), np.uint8)
    upright[:, :40] = 255  # a bright band on the left
    decoded = decode_image(_exif_rotated_jpeg(upright))
    assert decoded.shape == upright.shape
    assert decoded[:, :40].mean() > 200 and decoded[:, 60:].mean() < 30


def _poses(scene: Path, n: int) -> list[tuple[float, float, float]]:
    """Query positions of the scene (free space inside the grid), looking 20 degrees off the
    references' view directions."""
    with (scene / "queries.csv").open() as f:
        rows = list(csv.DictReader(f))[:n]
    return [(float(r["x"]), float(r["y"]), 20.0 + 90.0 * k) for k, r in enumerate(rows)]


def _l1(a, b) -> float:
    return abs(a.x - b.x) + abs(a.y - b.y)


@pytest.mark.integration  # renders photos up to 2880x2160 and localises them (~30 s)
def test_a_photo_at_any_resolution_localises_as_at_the_references_size(
    scene: Path, scene_xfeat_map: Path
) -> None:
    """The same view rendered at 1x, 2x, 4x and 6x the references' size (real detail, as a
    phone's sensor has, not an enlarged copy), and at 4x stored sideways with an EXIF
    orientation: every one is extracted at the references' size and answers within 1.5 units
    of the 1x answer (references stand on a ~10-unit grid)."""
    loc = Localiser(MapStore(scene_xfeat_map).open("scene"))
    assert loc.map.reference_size == REF_SIZE
    world = make_world(0)
    compared = 0
    for x, y, yaw in _poses(scene, 3):
        base = loc.localise(render_view(world, x, y, yaw, REF_SIZE))
        assert base.query_size == REF_SIZE and base.query_scale == 1.0
        if not base.estimate.localised:
            continue
        compared += 1
        photos = {f"{k}x": render_view(world, x, y, yaw, (480 * k, 360 * k)) for k in (2, 4, 6)}
        photos["4x exif"] = decode_image(_exif_rotated_jpeg(photos["4x"]))
        for label, photo in photos.items():
            res = loc.localise(photo)
            assert res.query_size == REF_SIZE, label
            assert res.estimate.localised, (label, (x, y, yaw), res.estimate)
            assert _l1(res.estimate, base.estimate) <= 1.5, (label, res.estimate, base.estimate)
    assert compared >= 2


@pytest.mark.usefixtures("getty")
def test_getty_photos_upscaled_4x_answer_as_at_their_own_size(tmp_path: Path, getty: Path):
    """Real photos: the first 6 of queries.csv against every view of the 6 reference positions
    nearest each of them (a 180-photo map), at their own 680x490 and enlarged 4x (2720x1960,
    what an over-sized upload looks like): at least 5 of the 6 answers agree within 2 units."""
    entries = read_positions_csv(getty / "references.csv", getty / "images")
    with (getty / "queries.csv").open() as f:
        queries = list(csv.DictReader(f))[:6]
    spots = np.unique([[e.reference.x, e.reference.y] for e in entries], axis=0)
    keep: set[tuple[float, float]] = set()
    for q in queries:
        d = np.abs(spots - [float(q["x"]), float(q["y"])]).sum(1)
        keep |= {tuple(p) for p in spots[np.argsort(d)[:6]]}
    chosen: list[RefEntry] = [e for e in entries if (e.reference.x, e.reference.y) in keep]
    store = MapStore(tmp_path)
    build_map(store, "getty", chosen, "xfeat", retriever_name="exhaustive")
    loc = Localiser(store.open("getty"))
    opts = LocaliseOptions(top_k=30)
    agree = 0
    for q in queries:
        image = cv2.imread(str(getty / "images" / f"{q['id']}.jpg"))
        base = loc.localise(image, opts).estimate
        big = loc.localise(cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC), opts)
        assert big.query_size == (680, 490)
        if base.x is not None and big.estimate.x is not None:
            agree += _l1(big.estimate, base) <= 2.0
    assert agree >= 5
