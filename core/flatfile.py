"""Named arrays in one flat file, memory-mapped on read: the storage of map parts.

Layout: the 8-byte magic ``FLARR001``, a little-endian uint64 header length, a JSON header
``{"arrays": {name: {"dtype", "shape", "offset"}}}``, then each array's raw C-order bytes at
its offset (aligned to 64 bytes). Readers map the file once (``numpy.memmap``, read-only), so
every process on a host reading the same file shares one copy in the OS page cache, and only
the pages of the rows actually read are ever loaded.

Rows that a long-lived reader picks here and there (a job's shortlisted references) are read
with ``read_rows``, which copies them with ``pread`` instead of touching the mapping: the page
cache may hold a file in huge (2 MiB) folios, and touching one 32 KiB row through a mapping maps
its whole folio into the process (2000 scattered rows mapped 2.2 GiB at 100,000 references,
BENCHMARKS.md). ``release_pages`` unmaps what a process did read through its mappings (the page
cache keeps it), so its resident memory does not grow towards the files' size.

Writes go to a temporary name in the same directory, are fsynced, then renamed into place:
a reader sees the old file or the new one, never half of one. A file replaced while mapped
keeps its old inode alive for the processes that mapped it.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

MAGIC = b"FLARR001"
_ALIGN = 64


class FlatFileError(ValueError):
    """A file that is not a complete flat array file (truncated, foreign, corrupt header)."""


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    header: dict[str, dict] = {}
    offset = 0
    prepared = {}
    for name, arr in arrays.items():
        a = np.require(arr, requirements="C")  # ascontiguousarray would make 0-d arrays 1-d
        if a.dtype.hasobject:
            raise TypeError(f"array {name!r}: object arrays cannot be stored flat")
        offset = -(-offset // _ALIGN) * _ALIGN
        header[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        prepared[name] = a
        offset += a.nbytes
    head = json.dumps({"arrays": header}).encode()
    start = -(-(len(MAGIC) + 8 + len(head)) // _ALIGN) * _ALIGN
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head)
            for name, a in prepared.items():
                f.seek(start + header[name]["offset"])
                f.write(a.tobytes())  # a copy per array; parts are chunk-sized
            f.truncate(start + offset)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``path`` as read-only views of one memory map (nothing is read yet)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(len(MAGIC) + 8)
        if len(prefix) < len(MAGIC) + 8 or prefix[: len(MAGIC)] != MAGIC:
            raise FlatFileError(f"{path.name}: not a flat array file")
        (head_len,) = struct.unpack("<Q", prefix[len(MAGIC) :])
        try:
            header = json.loads(f.read(head_len))["arrays"]
        except (ValueError, KeyError) as exc:
            raise FlatFileError(f"{path.name}: corrupt header") from exc
    start = -(-(len(MAGIC) + 8 + head_len) // _ALIGN) * _ALIGN
    if size == 0 or not header:
        return {}
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        dtype = np.dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        begin = start + int(spec["offset"])
        if begin + nbytes > size:
            raise FlatFileError(f"{path.name}: truncated (array {name!r})")
        out[name] = buf[begin : begin + nbytes].view(dtype).reshape(shape)
    return out


def _file_of(array: np.ndarray) -> tuple[str, int] | None:
    """(path, byte offset) of a C-contiguous view returned by ``read_arrays``; None for an
    array that is not a view of a whole-file memory map."""
    root: object = array
    while isinstance(root, np.ndarray) and not isinstance(root.base, mmap.mmap):
        root = root.base
    if not isinstance(root, np.memmap) or not array.flags.c_contiguous or root.filename is None:
        return None
    return root.filename, int(root.offset) + array.ctypes.data - root.ctypes.data


def read_rows(array: np.ndarray, start: int, stop: int | None = None) -> np.ndarray:
    """A copy of ``array[start:stop]`` (default: the one row ``start``, kept as a leading axis
    of 1), read from its file with ``pread``, not through the mapping (see the module's notes);
    arrays not read from a file are sliced and copied."""
    stop = start + 1 if stop is None else stop
    return take_rows(array, np.arange(start, min(max(stop, start), len(array)), dtype=np.int64))


def take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A copy of ``array[rows]``, read from its file with ``pread`` (one call per run of
    consecutive rows), not through the mapping; arrays not read from a file are indexed."""
    rows = np.asarray(rows, np.int64)
    where = _file_of(array) if array.ndim else None
    if where is None:
        return np.array(array[rows])
    if len(rows) and (rows.min() < 0 or rows.max() >= len(array)):
        raise IndexError(f"rows outside 0..{len(array) - 1}")
    path, offset = where
    row_bytes = array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    out = np.empty((len(rows), *array.shape[1:]), array.dtype)
    if out.nbytes == 0:
        return out
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    runs = np.split(sorted_rows, np.flatnonzero(np.diff(sorted_rows) != 1) + 1)
    fd = os.open(path, os.O_RDONLY)
    try:
        at = 0
        for run in runs:
            block = np.empty((len(run), *array.shape[1:]), array.dtype)
            want = block.nbytes
            got = os.preadv(fd, [block.data.cast("B")], offset + int(run[0]) * row_bytes)
            if got != want:
                raise FlatFileError(f"{Path(path).name}: short read ({got} of {want} bytes)")
            out[order[at : at + len(run)]] = block
            at += len(run)
    finally:
        os.close(fd)
    return out


def release_pages(arrays: Iterable[np.ndarray]) -> int:
    """Drop this process's mappings of the file pages behind ``arrays`` (views returned by
    ``read_arrays``); returns how many files were released. Pages stay in the OS page cache,
    so the next read is a cheap minor fault; arrays not backed by a file are skipped.

    Why: every page a process touches in a shared file mapping counts in its resident memory
    until the kernel reclaims it, so a worker that reads scattered rows of a big map would
    creep towards the whole map's size (``MADV_DONTNEED`` on a read-only shared mapping only
    zaps page-table entries: madvise(2))."""
    seen: set[int] = set()
    for a in arrays:
        base: object = a
        while isinstance(base, np.ndarray):
            base = base.base
        if isinstance(base, mmap.mmap) and id(base) not in seen:
            seen.add(id(base))
            base.madvise(mmap.MADV_DONTNEED)
    return len(seen)
