"""Flat array files (core/flatfile.py): round trip, atomic replacement, rows read with pread,
and the refusals of files that are not whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.flatfile import (
    FlatFileError,
    read_arrays,
    read_rows,
    release_pages,
    take_rows,
    write_arrays,
)


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "ids": np.array(["a", "bb", "ccc"]),
        "descriptors": rng.normal(size=(7, 5)).astype(np.float16),
        "offsets": np.array([0, 3, 5, 7], np.int64),
        "empty": np.zeros((0, 2), np.float32),
        "scalar": np.array(3.5),
    }


def test_round_trip_keeps_every_dtype_and_shape(tmp_path: Path) -> None:
    arrays = _arrays(np.random.default_rng(0))
    path = write_arrays(tmp_path / "x.feat", arrays)
    back = read_arrays(path)
    assert list(back) == list(arrays)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape, name
        np.testing.assert_array_equal(back[name], a)
        assert not back[name].flags.writeable  # read-only views of the mapping


def test_a_rewrite_replaces_the_file_whole_and_keeps_old_readers(tmp_path: Path) -> None:
    path = tmp_path / "p.feat"
    old = read_arrays(write_arrays(path, {"v": np.arange(10)}))["v"]
    write_arrays(path, {"v": np.arange(100, 120)})
    np.testing.assert_array_equal(old, np.arange(10))  # the old inode, still mapped
    np.testing.assert_array_equal(read_arrays(path)["v"], np.arange(100, 120))
    assert [p.name for p in tmp_path.iterdir()] == ["p.feat"]  # no temporary left behind


def test_object_arrays_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="object arrays"):
        write_arrays(tmp_path / "o.feat", {"o": np.array([{"a": 1}], dtype=object)})
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_part_is_refused(tmp_path):
    good = write_arrays(tmp_path / "a.arr", {"x": np.arange(1000, dtype=np.float32)})
    data = good.read_bytes()
    (tmp_path / "cut.arr").write_bytes(data[: len(data) // 2])
    with pytest.raises(FlatFileError, match="truncated"):
        read_arrays(tmp_path / "cut.arr")
    (tmp_path / "junk.arr").write_bytes(b"not a part")
    with pytest.raises(FlatFileError, match="not a flat array file"):
        read_arrays(tmp_path / "junk.arr")


def test_rows_read_with_pread_equal_the_mapped_rows(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.normal(size=(100, 7)).astype(np.float16)
    c = rng.normal(size=(30, 4, 3)).astype(np.float32)
    write_arrays(tmp_path / "x.arr", {"a": a, "b": np.arange(50), "c": c})
    r = read_arrays(tmp_path / "x.arr")
    np.testing.assert_array_equal(read_rows(r["a"], 10, 20), a[10:20])
    np.testing.assert_array_equal(read_rows(r["b"], 3), [3])
    np.testing.assert_array_equal(read_rows(r["c"], 28, 40), c[28:])  # clipped at the end
    assert read_rows(r["a"], 5, 5).shape == (0, 7)
    rows = np.array([5, 3, 4, 99, 0, 3])  # unsorted, repeated
    np.testing.assert_array_equal(take_rows(r["a"], rows), a[rows])
    np.testing.assert_array_equal(take_rows(r["a"][10:], np.array([0, 5])), a[[10, 15]])
    np.testing.assert_array_equal(take_rows(a, np.array([1, 2])), a[[1, 2]])  # in memory
    with pytest.raises(IndexError):
        take_rows(r["a"], np.array([100]))


def test_release_leaves_the_arrays_readable(tmp_path: Path) -> None:
    desc = np.arange(64, dtype=np.float16).reshape(8, 8)
    mapped = read_arrays(write_arrays(tmp_path / "d.feat", {"d": desc}))["d"]
    assert float(mapped.astype(np.float32).sum()) > 0  # touched through the mapping
    assert release_pages([mapped, mapped[2:]]) == 1  # one file, however many views
    np.testing.assert_array_equal(mapped[3], desc[3])
    assert release_pages([desc]) == 0  # not backed by a file
