"""Out-of-core map storage: flat parts, named feature sets, appends, old-format upgrade."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from core.errors import MapError
from core.flatfile import read_arrays, release_pages
from core.mapstore import (
    MapStore,
    Reference,
    append_features,
    existing_reference_ids,
    upgrade_map,
    write_part,
)
from core.types import Features
from tests.support.memory import mapped_kib


def _features(rng: np.random.Generator, n: int, dim: int = 8) -> Features:
    return Features(
        rng.uniform(0, 100, (n, 2)).astype(np.float32),
        rng.normal(size=(n, dim)).astype(np.float32),
        rng.uniform(0, 1, n).astype(np.float32),
        (640, 480),
    )


def _map(tmp_path, refs: int = 6):
    rng = np.random.default_rng(0)
    store = MapStore(tmp_path / "maps")
    path = store.create("m", {"name": "sift", "conf": {}}, {"name": "exhaustive", "conf": {}})
    items = [(Reference(f"r{i:02d}", i, -i), _features(rng, 5 + i)) for i in range(refs)]
    write_part(path, items[: refs // 2])
    write_part(path, items[refs // 2 :])
    return store, items


def _same(a: Features, b: Features) -> None:
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    np.testing.assert_array_equal(a.descriptors, b.descriptors.astype(np.float16))
    np.testing.assert_array_equal(a.scores, b.scores.astype(np.float16).astype(np.float32))
    assert a.image_size == b.image_size


def test_default_set_reads_back_what_was_written(tmp_path):
    store, items = _map(tmp_path)
    ref_map = store.open("m")
    assert ref_map.ids == [r.id for r, _ in items]
    np.testing.assert_array_equal(ref_map.positions, [(r.x, r.y) for r, _ in items])
    for i, (_, feats) in enumerate(items):
        _same(ref_map.features[i], feats)
        assert ref_map.features[i].descriptors.dtype == np.float16
    assert ref_map.features is ref_map.feature_set("coarse")
    assert len(list(ref_map.features)) == len(items)
    assert existing_reference_ids(store.path("m")) == {r.id for r, _ in items}


def test_a_second_feature_set_is_filled_for_some_references_and_refreshed(tmp_path):
    store, items = _map(tmp_path)
    ref_map = store.open("m")
    fine = ref_map.feature_set("fine")
    assert fine.count() == 0 and not fine.has(0)
    with pytest.raises(KeyError, match="fine"):
        fine[0]
    rng = np.random.default_rng(1)
    extra = {"r01": _features(rng, 40, 128), "r04": _features(rng, 30, 128)}
    append_features(store.path("m"), "fine", list(extra.items()))
    assert fine.refresh() == 1
    assert [fine.has(i) for i in range(len(items))] == [False, True, False, False, True, False]
    _same(fine[ref_map.index["r04"]], extra["r04"])
    # A later part for the same reference wins; other sets are untouched.
    newer = _features(rng, 12, 128)
    append_features(store.path("m"), "fine", [("r04", newer)], name="part-z-later.feat")
    fine.refresh()
    _same(fine[ref_map.index["r04"]], newer)
    assert store.open("m").feature_set("fine").count() == 2
    _same(ref_map.features[4], items[4][1])
    with pytest.raises(MapError):
        append_features(store.path("m"), "coarse", list(extra.items()))
    with pytest.raises(MapError, match="feature set name"):
        ref_map.feature_set("../escape")


def test_rewriting_a_named_part_replaces_it(tmp_path):
    store, items = _map(tmp_path)
    path = store.path("m")
    rng = np.random.default_rng(2)
    write_part(path, [(Reference("new", 1, 2), _features(rng, 3))], name="part-chunk-0.feat")
    write_part(path, [(Reference("new", 1, 2), _features(rng, 4))], name="part-chunk-0.feat")
    ref_map = store.open("m")
    assert len(ref_map) == len(items) + 1 and len(ref_map.features[ref_map.index["new"]]) == 4
    assert not list((path / "parts").glob(".*")), "no temporary files left"


def test_features_are_read_through_the_page_cache_not_loaded(tmp_path):
    """Opening a map maps its parts: a process's private memory does not grow with them."""
    rng = np.random.default_rng(3)
    store = MapStore(tmp_path / "maps")
    path = store.create("big", {"name": "sift", "conf": {}}, {"name": "exhaustive", "conf": {}})
    # 200 references x 4000 x 128 float16: 200 MiB of descriptors.
    feats = _features(rng, 4000, 128)
    write_part(path, [(Reference(f"r{i:03d}", i, 0), feats) for i in range(200)])
    probe = (
        "import sys; from core.mapstore import MapStore\n"
        "def private():\n"
        "    s = open('/proc/self/smaps_rollup').read().split()\n"
        "    return sum(int(s[i + 1]) for i, w in enumerate(s) if w.startswith('Private_'))\n"
        "before = private(); m = MapStore(sys.argv[1]).open('big')\n"
        "f = [m.features[i] for i in range(0, 200, 50)]\n"
        "print((private() - before) // 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "maps")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 40, f"private memory grew {out.stdout.strip()} MiB"


def test_feature_reads_map_nothing_and_release_unmaps_what_was_touched(tmp_path):
    """A worker reads a reference's rows with pread (core/flatfile.read_rows), so its resident
    memory does not grow with the references it has read, however the page cache holds the
    file; what was touched through a mapping is unmapped by release_pages."""
    rng = np.random.default_rng(4)
    store = MapStore(tmp_path / "maps")
    path = store.create("big", {"name": "sift", "conf": {}}, {"name": "exhaustive", "conf": {}})
    feats = _features(rng, 4000, 128)  # 1 MiB of float16 descriptors per reference
    write_part(path, [(Reference(f"r{i:02d}", i, 0), feats) for i in range(40)])
    ref_map = store.open("big")
    ref_map.features[0]
    ref_map.release_pages()  # the ids read when the map was opened
    for i in range(40):
        _same(ref_map.features[i], feats)
    assert mapped_kib(path) < 64

    part = next((path / "parts").glob("*"))
    arrays = read_arrays(part)
    assert float(np.abs(arrays["descriptors"].astype(np.float32)).sum()) > 0  # all touched
    assert mapped_kib(path) > 35 * 1024
    assert release_pages(arrays.values()) == 1
    assert mapped_kib(path) < 64
    _same(ref_map.features[7], feats)  # read again from the page cache


def test_a_format_1_map_is_refused_then_upgraded(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "maps" / "old"
    (path / "parts").mkdir(parents=True)
    manifest = {"name": "old", "format": 1, "extractor": {"name": "sift", "conf": {}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    written = {}
    with h5py.File(path / "parts" / "part-a.h5", "w") as f:  # the format 1 layout
        refs = f.create_group("refs")
        for rid in ("b", "a"):
            feats = written[rid] = _features(rng, 7)
            g = refs.create_group(rid)
            g.attrs["x"], g.attrs["y"] = 3.0, 4.0
            g.attrs["width"], g.attrs["height"] = feats.image_size
            g.create_dataset("keypoints", data=feats.keypoints)
            g.create_dataset("descriptors", data=feats.descriptors.astype(np.float16))
            g.create_dataset("scores", data=feats.scores.astype(np.float16))
    store = MapStore(tmp_path / "maps")
    with pytest.raises(MapError, match="map upgrade old"):
        store.open("old")
    with pytest.raises(MapError, match="upgrade"):
        store.create("old", manifest["extractor"], {"name": "exhaustive"})
    assert upgrade_map(path) == 1 and upgrade_map(path) == 0
    ref_map = store.open("old")
    assert ref_map.ids == ["a", "b"] and not list((path / "parts").glob("*.h5"))
    for rid, feats in written.items():
        _same(ref_map.features[ref_map.index[rid]], feats)


_FILL = """
import sys
import numpy as np
from core.mapstore import append_features
from core.types import Features

rng = np.random.default_rng(int(sys.argv[2]))
items = [
    (rid, Features(rng.uniform(0, 9, (20, 2)).astype(np.float32),
                   rng.normal(size=(20, 16)).astype(np.float32),
                   np.ones(20, np.float32), (64, 48)))
    for rid in ("r00", "r01", "r02", "r03")
]
for _ in range(20):
    append_features(sys.argv[1], "fine", items)
"""


def test_two_workers_filling_the_same_fine_features_at_once(tmp_path):
    """Two processes extract the same references' fine features when a query first needs
    them (core.localiser's _fill_fine) and store them at the same moment: every part is
    whole, each reference reads back complete features from one of them, and a reader that
    opened the map before sees them after a refresh."""
    store, _ = _map(tmp_path)
    early = store.open("m").feature_set("fine")
    procs = [
        subprocess.Popen([sys.executable, "-c", _FILL, str(store.path("m")), str(seed)])
        for seed in (1, 2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert early.refresh() == 40 and early.count() == 4
    fine = store.open("m").feature_set("fine")
    assert fine.count() == 4 and not fine.has(4)
    for i in range(4):
        f = fine[i]
        assert len(f) == 20 and f.descriptors.shape == (20, 16) and f.image_size == (64, 48)
    parts = list((store.path("m") / "sets" / "fine").iterdir())
    assert len(parts) == 40 and all(p.suffix == ".feat" for p in parts)  # no temporaries
