"""Shared helpers of the benchmark scripts: the machine, JSON output, tables, subset maps."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from core.mapstore import MapStore, Reference, ReferenceMap, write_manifest, write_part
from core.positions import position_key
from tests.support.paths import GETTY, REPO  # noqa: F401 - re-exported for the scripts

DEFAULT_OUT = REPO / "bench" / "out"


def machine_info() -> dict:
    """What the figures were measured on: CPU, cores, memory, load, library versions, commit."""
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "commit": commit,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_json(out: Path, name: str, data: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(data, indent=2, default=_jsonable))
    return path


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence]) -> None:
    """A plain-text table (copied into BENCHMARKS.md as is)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else None


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far: the kernel's high-water mark of its own
    address space (``ru_maxrss`` would carry over a bigger parent's peak across exec)."""
    return current_rss_mib("VmHWM")


def current_rss_mib(field: str = "VmRSS") -> float:
    """Resident memory now (``VmRSS``), or its ``RssAnon`` (the process's own pages) or
    ``RssFile`` (mapped files: shared page cache) part, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_subset_map(src: ReferenceMap, store: MapStore, name: str, ids: Sequence[str]) -> Path:
    """A map holding only ``ids`` of ``src``, from its stored features (no re-extraction).

    The retriever's state (e.g. the VLAD codebook and descriptors) is copied as is: retrievers
    select the rows of the references a map holds, so the subset keeps the source's codebook.
    """
    path = store.path(name)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    write_manifest(path, {**src.manifest, "name": name})
    items = [
        (Reference(rid, *map(float, src.positions[src.index[rid]])), src.features[src.index[rid]])
        for rid in ids
    ]
    for start in range(0, len(items), 500):
        write_part(path, items[start : start + 500])
    if src.retrieval_dir.is_dir():
        shutil.copytree(src.retrieval_dir, path / "retrieval")
    return path


def spread_subset(ids: Sequence[str], positions: np.ndarray, n: int) -> list[str]:
    """``n`` references covering the map: whole positions (all their views), evenly spread."""
    groups: dict[tuple[float, float], list[str]] = {}
    for rid, (x, y) in zip(ids, positions, strict=True):
        groups.setdefault(position_key(x, y), []).append(rid)
    keys = list(groups)
    per_group = max(len(ids) // max(len(keys), 1), 1)
    wanted = min(-(-n // per_group), len(keys))
    picks = np.unique(np.linspace(0, len(keys) - 1, wanted).round().astype(int))
    chosen = [rid for i in picks for rid in groups[keys[i]]]
    return chosen[:n]
