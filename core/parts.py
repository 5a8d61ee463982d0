"""A directory of flat array parts (core/flatfile.py), each listing the references it holds in
``ids``: which part and row hold each reference of a map, refreshed as parts are added.

The one index behind every per-reference store of a map: its feature sets
(core/mapstore.py ``FeatureSet``) and its geometry (core/geometry.py ``GeometrySet``). Parts
are opened in name order and then as ``refresh`` finds them; when two hold the same
reference, the part opened last wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from core.flatfile import read_arrays, release_pages

PART_SUFFIX = ".feat"
PART_RE = re.compile(r"part-[A-Za-z0-9_-]+\.feat")


def part_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).glob("part-*.feat") if PART_RE.fullmatch(p.name))


def stored_ids(directory: Path, exclude: Iterable[str] = ()) -> set[str]:
    """The reference ids held by a directory's parts, except in the part files named in
    ``exclude``; reads only each part's ``ids``."""
    skip = set(exclude)
    return {
        str(i) for part in part_files(directory) if part.name not in skip
        for i in read_arrays(part)["ids"]
    }  # fmt: skip


class PartIndex:
    """Where each reference (map row) lives among a directory's parts."""

    # Small per-reference arrays copied into memory when a part opens: reading them through
    # the mapping would map a page-cache folio per part into the process.
    in_memory: ClassVar[tuple[str, ...]] = ()

    def __init__(self, directory: Path, index: dict[str, int]) -> None:
        self.directory = Path(directory)
        self._index = index
        self._parts: list[dict[str, np.ndarray]] = []
        self._opened: set[str] = set()
        self._part = np.full(len(index), -1, np.int32)
        self._row = np.zeros(len(index), np.int64)
        self.refresh()

    def refresh(self) -> int:
        """Open parts written since the last look; returns how many were new."""
        new = [p for p in part_files(self.directory) if p.name not in self._opened]
        for path in new:
            arrays = read_arrays(path)
            for small in self.in_memory:
                if small in arrays:
                    arrays[small] = np.array(arrays[small])
            k = len(self._parts)
            self._parts.append(arrays)
            self._opened.add(path.name)
            for row, rid in enumerate(arrays["ids"]):
                i = self._index.get(str(rid))
                if i is not None:
                    self._part[i], self._row[i] = k, row
        return len(new)

    def has(self, i: int) -> bool:
        return bool(self._part[i] >= 0)

    def count(self) -> int:
        """References that have an entry here."""
        return int((self._part >= 0).sum())

    def __len__(self) -> int:
        return len(self._part)

    def locate(self, i: int) -> tuple[dict[str, np.ndarray], int] | None:
        """The arrays of the part holding reference ``i`` and its row there, or None."""
        k = int(self._part[i])
        return None if k < 0 else (self._parts[k], int(self._row[i]))

    def parts_with_rows(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Each part and the rows of it that serve a reference (not overridden by a later
        part)."""
        for k, part in enumerate(self._parts):
            yield part, self._row[self._part == k]

    def release_pages(self) -> None:
        """Unmap the pages read so far from this process (core/flatfile.release_pages)."""
        release_pages(array for part in self._parts for array in part.values())
