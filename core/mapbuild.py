"""Building maps: read a positions CSV, extract features, write parts, fit retrieval."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from core.defaults import DEFAULT
from core.errors import ImageError, InputError
from core.features.base import Extractor
from core.images import ImageLimits, read_image
from core.mapstore import MapStore, Reference, existing_reference_ids, write_part
from core.registry import create_extractor, retriever_class
from core.types import Features

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class RefEntry:
    reference: Reference
    image: Path


@dataclass
class BuildReport:
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the map
    failed: dict[str, str] = field(default_factory=dict)  # id -> reason


def read_positions_csv(csv_path: Path, images_dir: Path) -> list[RefEntry]:
    """Parse ``id,x,y`` (id = image file stem) and check every row before any work starts.

    Any bad row (missing or non-finite coordinate, duplicate id, no image) fails the whole
    CSV with every problem listed, so a map is never built from half a file.
    """
    csv_path, images_dir = Path(csv_path), Path(images_dir)
    if not csv_path.is_file():
        raise InputError(f"positions CSV not found: {csv_path}")
    if not images_dir.is_dir():
        raise InputError(f"images directory not found: {images_dir}")
    by_stem: dict[str, Path] = {}
    for p in images_dir.iterdir():
        if p.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(p.stem, p)
    problems: list[str] = []
    entries: list[RefEntry] = []
    seen: set[str] = set()
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing_cols = {"id", "x", "y"} - set(reader.fieldnames or [])
        if missing_cols:
            raise InputError(
                f"{csv_path.name}: missing column(s) {', '.join(sorted(missing_cols))}"
            )
        for line, row in enumerate(reader, start=2):
            rid = (row.get("id") or "").strip()
            if not rid:
                problems.append(f"line {line}: empty id")
                continue
            if rid in seen:
                problems.append(f"line {line}: duplicate id {rid!r}")
                continue
            seen.add(rid)
            try:
                x, y = float(row["x"]), float(row["y"])
            except (TypeError, ValueError):
                problems.append(f"line {line}: id {rid!r} has a missing or non-numeric coordinate")
                continue
            if not (math.isfinite(x) and math.isfinite(y)):
                problems.append(f"line {line}: id {rid!r} has a non-finite coordinate")
                continue
            image = by_stem.get(rid)
            if image is None:
                problems.append(f"line {line}: no image for id {rid!r} in {images_dir}")
                continue
            entries.append(RefEntry(Reference(rid, x, y), image))
    if problems:
        shown = "; ".join(problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise InputError(f"{csv_path.name}: {len(problems)} bad row(s): {shown}{more}")
    if not entries:
        raise InputError(f"{csv_path.name}: no rows")
    return entries


def extract_entries(
    entries: Iterable[RefEntry],
    extractor: Extractor,
    limits: ImageLimits | None = None,
    on_done: Callable[[str], None] | None = None,
) -> tuple[list[tuple[Reference, Features]], dict[str, str]]:
    """Extract features of each entry; a bad image is reported, not fatal."""
    done: list[tuple[Reference, Features]] = []
    failed: dict[str, str] = {}
    for entry in entries:
        try:
            feats = extractor.extract(read_image(entry.image, limits))
            done.append((entry.reference, feats))
        except ImageError as exc:
            failed[entry.reference.id] = str(exc)
        if on_done:
            on_done(entry.reference.id)
    return done, failed


def add_entries(
    map_path: Path,
    entries: list[RefEntry],
    extractor: Extractor,
    limits: ImageLimits | None = None,
    chunk_size: int = 200,
    on_done: Callable[[str], None] | None = None,
) -> BuildReport:
    """Extract and store what the map does not have yet, one part per chunk."""
    report = BuildReport()
    have = existing_reference_ids(map_path)
    todo = [e for e in entries if e.reference.id not in have]
    report.skipped = [e.reference.id for e in entries if e.reference.id in have]
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        done, failed = extract_entries(chunk, extractor, limits, on_done)
        write_part(map_path, done)
        report.added.extend(ref.id for ref, _ in done)
        report.failed.update(failed)
    return report


def build_map(
    store: MapStore,
    name: str,
    entries: list[RefEntry],
    extractor_name: str = DEFAULT.extractor,
    extractor_conf: dict | None = None,
    retriever_name: str = DEFAULT.retriever,
    retriever_conf: dict | None = None,
    device: str = "cpu",
    limits: ImageLimits | None = None,
    on_done: Callable[[str], None] | None = None,
) -> BuildReport:
    """Create (or extend) a map in one process; workers split the same steps into chunks.
    Without an extractor or retriever, the default preset's (core/defaults.py)."""
    extractor = create_extractor(extractor_name, extractor_conf, device)
    retriever = retriever_class(retriever_name)(retriever_conf)
    path = store.create(name, extractor.identity(), retriever.identity())
    report = add_entries(path, entries, extractor, limits, on_done=on_done)
    finalise_map(store, name)
    return report


def finalise_map(store: MapStore, name: str) -> None:
    """Fit map-level retrieval state over every reference the map now holds."""
    ref_map = store.open(name)
    retriever = retriever_class(ref_map.retriever["name"])(ref_map.retriever.get("conf"))
    retriever.fit(ref_map)
