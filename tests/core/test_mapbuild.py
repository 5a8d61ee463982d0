"""Maps on disk: CSV validation, incremental builds, and localising against a built map."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError, MapError
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser
from core.mapbuild import build_map, read_positions_csv
from core.mapstore import MapStore, validate_map_name


def _write_csv(path: Path, rows: list[tuple]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "x", "y"])
        w.writerows(rows)
    return path


def _ref_rows(scene: Path) -> list[dict]:
    with (scene / "references.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def images(scene, tmp_path) -> Path:
    """A folder with the first 12 reference images of the scene."""
    out = tmp_path / "images"
    out.mkdir()
    for r in _ref_rows(scene)[:12]:
        shutil.copy(scene / "images" / f"{r['id']}.jpg", out)
    return out


def test_positions_csv_reports_every_bad_row(images, tmp_path):
    ids = sorted(p.stem for p in images.iterdir())
    bad = _write_csv(
        tmp_path / "bad.csv",
        [(ids[0], 1, 2), (ids[0], 3, 4), (ids[1], "nan", 2), (ids[2], "", 5), ("ghost", 1, 1)],
    )
    with pytest.raises(InputError) as exc:
        read_positions_csv(bad, images)
    msg = str(exc.value)
    assert "4 bad row(s)" in msg
    assert "duplicate id" in msg and "non-finite" in msg and "non-numeric" in msg
    assert "no image for id 'ghost'" in msg


def test_positions_csv_needs_its_columns(images, tmp_path):
    p = tmp_path / "cols.csv"
    p.write_text("name,x\nfoo,1\n")
    with pytest.raises(InputError, match="missing column"):
        read_positions_csv(p, images)


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "x" * 65, "a..b"])
def test_map_names_cannot_escape_the_maps_directory(name):
    with pytest.raises(MapError):
        validate_map_name(name)


def test_build_is_resumable_and_incremental(images, scene, tmp_path):
    rows = [(p.stem, i, 2 * i) for i, p in enumerate(sorted(images.iterdir()))]
    store = MapStore(tmp_path / "maps")
    first = _write_csv(tmp_path / "first.csv", rows[:8])
    report = build_map(store, "m", read_positions_csv(first, images), "sift")
    assert len(report.added) == 8 and not report.skipped and not report.failed

    again = build_map(store, "m", read_positions_csv(first, images), "sift")
    assert again.added == [] and len(again.skipped) == 8  # nothing extracted twice

    everything = _write_csv(tmp_path / "all.csv", rows)
    more = build_map(store, "m", read_positions_csv(everything, images), "sift")
    assert len(more.added) == 4 and len(more.skipped) == 8
    ref_map = store.open("m")
    assert len(ref_map) == 12 and ref_map.ids == sorted(r[0] for r in rows)
    assert ref_map.features[0].descriptors.dtype == np.float16  # stored compactly
    np.testing.assert_allclose(ref_map.positions[ref_map.index[rows[3][0]]], (3, 6))
    assert not list((store.path("m") / "parts").glob(".*.tmp")), "no temporary files left"


def test_a_corrupt_reference_image_is_reported_and_the_rest_is_built(images, tmp_path):
    victim = sorted(images.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:500])
    rows = [(p.stem, 0, 0) for p in sorted(images.iterdir())]
    store = MapStore(tmp_path / "maps")
    report = build_map(
        store, "m", read_positions_csv(_write_csv(tmp_path / "r.csv", rows), images), "sift"
    )
    assert set(report.failed) == {victim.stem} and "truncated" in report.failed[victim.stem]
    assert len(store.open("m")) == len(rows) - 1


def test_a_map_refuses_a_different_extractor(images, tmp_path):
    rows = [(p.stem, 0, 0) for p in sorted(images.iterdir())[:2]]
    entries = read_positions_csv(_write_csv(tmp_path / "r.csv", rows), images)
    store = MapStore(tmp_path / "maps")
    build_map(store, "m", entries, "sift")
    with pytest.raises(MapError, match="was built with extractor"):
        build_map(store, "m", entries, "sift", {"max_keypoints": 100})


def test_localiser_finds_a_view_of_the_same_place(images, scene, tmp_path):
    rows = _ref_rows(scene)[:12]
    entries = read_positions_csv(
        _write_csv(tmp_path / "r.csv", [(r["id"], r["x"], r["y"]) for r in rows]), images
    )
    store = MapStore(tmp_path / "maps")
    build_map(store, "m", entries, "sift")
    loc = Localiser(store.open("m"))
    target = rows[5]
    # A mildly altered copy of a reference view must come back to that view's position.
    image = read_image(images / f"{target['id']}.jpg")
    image = np.clip(image.astype(np.int16) + 12, 0, 255).astype(np.uint8)
    result = loc.localise(image)
    assert result.estimate.localised
    assert (result.estimate.x, result.estimate.y) == (float(target["x"]), float(target["y"]))
    assert len(result.candidates) == 12
    best = max(result.candidates, key=lambda c: c.inliers)
    others = sorted((c.inliers for c in result.candidates), reverse=True)[1]
    assert best.reference_id == target["id"] and best.inliers > 2 * others


def test_options_are_validated():
    with pytest.raises(InputError, match="bad options"):
        LocaliseOptions.parse({"top_k": 0})
    with pytest.raises(InputError, match="Extra inputs"):
        LocaliseOptions.parse({"topk": 3})
    with pytest.raises(InputError, match="unknown estimator"):
        LocaliseOptions.parse({"estimator": "magic"})
    assert LocaliseOptions.parse({"top_k": 3}).top_k == 3
    with pytest.raises(InputError, match="needs verify=true"):
        LocaliseOptions.parse({"verify": False})
    assert not LocaliseOptions.parse({"verify": False, "estimator": "most_matches"}).verify
