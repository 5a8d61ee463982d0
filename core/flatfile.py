"""Named arrays in one flat file, memory-mapped on read: the storage of map parts.

Layout: the 8-byte magic ``FLARR001``, a little-endian uint64 header length, a JSON header
``{"arrays": {name: {"dtype", "shape", "offset"}}}``, then each array's raw C-order bytes at
its offset (aligned to 64 bytes). Readers map the file once (``numpy.memmap``, read-only), so
every process on a host reading the same file shares one copy in the OS page cache, and only
the pages of the rows actually read are ever loaded. ``release_pages`` unmaps the pages a
process has read from its own page tables (the page cache keeps them), so a long-lived reader's
resident memory stays at what its current work reads instead of growing towards the file size.

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
        a = np.ascontiguousarray(arr)
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
        base = a
        while isinstance(base, np.ndarray):
            base = base.base
        if isinstance(base, mmap.mmap) and id(base) not in seen:
            seen.add(id(base))
            base.madvise(mmap.MADV_DONTNEED)
    return len(seen)
