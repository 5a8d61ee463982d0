"""Building maps: read a positions CSV, extract features, write parts, fit retrieval."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.defaults import DEFAULT
from core.errors import ImageError, InputError
from core.features.base import Extractor
from core.geometry import GeometryConfig, build_geometry, geometry_partners, write_geometry
from core.images import ImageLimits, read_image
from core.mapstore import (
    FINE_SET,
    MapStore,
    Reference,
    append_features,
    existing_reference_ids,
    write_part,
)
from core.pairframes import partners_of, write_pair_frames
from core.registry import create_extractor, retriever_class
from core.types import Features

if TYPE_CHECKING:  # core/localiser.py imports this module (through core/finestage.py)
    from core.localiser import Localiser

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


def images_by_stem(images_dir: Path) -> dict[str, Path]:
    """The photos of a folder by file stem (a reference's id)."""
    by_stem: dict[str, Path] = {}
    for p in sorted(Path(images_dir).iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(p.stem, p)
    return by_stem


def map_photos(ref_map_ids: list[str], images_dir: Path) -> Callable[[str], Path]:
    """Reference id -> its photo in ``images_dir``; InputError naming the first id without
    one (found before any work starts)."""
    by_stem = images_by_stem(images_dir)
    missing = [rid for rid in ref_map_ids if rid not in by_stem]
    if missing:
        raise InputError(
            f"{len(missing)} reference(s) have no photo in {images_dir} (e.g. {missing[0]!r})"
        )
    return by_stem.__getitem__


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
    by_stem = images_by_stem(images_dir)
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


def add_fine_features(
    store: MapStore,
    name: str,
    entries: list[RefEntry],
    extractor_name: str,
    extractor_conf: dict | None = None,
    device: str = "cpu",
    limits: ImageLimits | None = None,
    chunk_size: int = 200,
    on_done: Callable[[str], None] | None = None,
) -> BuildReport:
    """Extract the fine feature set (core/finestage.py) of the map's references in
    ``entries`` that do not have it yet, one part per chunk; others are skipped."""
    extractor = create_extractor(extractor_name, extractor_conf, device)
    path = store.set_fine_extractor(name, extractor.identity())
    ref_map = store.open(name)
    fine = ref_map.feature_set(FINE_SET)
    todo: list[RefEntry] = []
    skipped: list[str] = []
    for e in entries:
        i = ref_map.index.get(e.reference.id)
        if i is None or fine.has(i):
            skipped.append(e.reference.id)  # not in the map, or done already
        else:
            todo.append(e)
    report = BuildReport(skipped=skipped)
    for start in range(0, len(todo), chunk_size):
        done, failed = extract_entries(todo[start : start + chunk_size], extractor, limits, on_done)
        append_features(path, FINE_SET, [(ref.id, feats) for ref, feats in done])
        report.added.extend(ref.id for ref, _ in done)
        report.failed.update(failed)
    return report


@dataclass(frozen=True)
class GeometryStep:
    built: int  # references whose geometry or pair frames this step wrote
    remaining: int  # references still without either
    seconds: float


def add_geometry(
    store: MapStore,
    name: str,
    batch: int | None = None,
    conf: GeometryConfig | None = None,
    pose: bool = False,
) -> GeometryStep | None:
    """One step of the map's geometry: up to ``batch`` references without it (all: None), and
    the references already built that now take one of them as a partner (an extension's
    neighbours), stored as one part of each kind: the pair frames that placement reads
    (core/pairframes.py) and, with ``pose``, the headings and 3D points that placement by pose
    reads (core/geometry.py; opt-in, as that placement is: it costs twice the frames and
    measured worse, BENCHMARKS.md sections 12 and 21). Steps resume: what is stored is never
    rebuilt unless a new neighbour changes its partners. None when the map has no camera
    (placement needs it)."""
    # The matcher and retriever a job uses; imported here: core/finestage.py imports this
    # module, and core/localiser.py imports that one.
    from core.localiser import LocaliseOptions, Localiser

    t0 = time.perf_counter()
    conf = conf or GeometryConfig()
    loc = Localiser(store.open(name))
    ref_map, camera = loc.map, loc.map.camera
    if camera is None:
        return None
    opts = LocaliseOptions()
    frames_done, geometry_done = ref_map.pair_frames, ref_map.geometry
    missing = [
        i
        for i in range(len(ref_map))
        if not frames_done.has(i) or (pose and not geometry_done.has(i))
    ]
    todo = missing[:batch] if batch is not None else missing
    similar = loc.retriever.reference_similarity

    # Each reference's partners once per step: finding them reads global descriptors, and
    # the stale check and the frames both ask for them.
    frame_partners = cache(partial(pair_frame_partners, loc))

    def pose_partners(i: int) -> list[int]:
        return geometry_partners(i, ref_map.positions, similar, conf)

    def stale(done: Any, partners: Callable[[int], list[int]]) -> list[int]:
        """Built neighbours whose partners the new references change: rebuilt with them."""
        near = {j for i in todo for j in partners(i)} - set(todo)
        return [
            j
            for j in sorted(near)
            if (had := done.partners(j)) is not None
            and had != tuple(ref_map.ids[k] for k in partners(j))
        ]

    framed = add_pair_frames(
        loc,
        [i for i in todo if not frames_done.has(i)] + stale(frames_done, frame_partners),
        frame_partners,
    )
    features = ref_map.features
    built = {}
    if pose:
        built = build_geometry(
            [i for i in todo if not geometry_done.has(i)] + stale(geometry_done, pose_partners),
            features,
            ref_map.positions,
            lambda i: camera.matrix(features[i].image_size),
            similar,
            loc.job_matcher(opts).match,
            ref_map.ids,
            conf,
            known_heading=geometry_done.heading,
        )
    write_geometry(ref_map.path, [(ref_map.ids[i], g) for i, g in built.items()])
    return GeometryStep(
        len(set(framed) | set(built)),
        len(missing) - len(todo),
        time.perf_counter() - t0,
    )


def pair_frame_partners(loc: Localiser, i: int) -> list[int]:
    """The references whose pair frames with reference ``i`` the map stores."""
    from core.localiser import LocaliseOptions

    conf = LocaliseOptions().placement_config()
    return partners_of(
        i, loc.map.positions, loc.retriever.reference_similarity, conf.frame_partners,
        conf.min_baseline, conf.max_baseline,
    )  # fmt: skip


def add_pair_frames(
    loc: Localiser,
    indices: Sequence[int],
    partners: Callable[[int], list[int]] | None = None,
) -> list[int]:
    """Solve and store, as one part, the pair frames (core/pairframes.py) of the references
    ``indices`` with their partners (``partners(i)``, default ``pair_frame_partners``), for
    jobs with the default options; pairs stored before (from the partner's side) are read,
    not solved again. Returns the indices stored."""
    from core.localiser import LocaliseOptions

    partners = partners or partial(pair_frame_partners, loc)
    frames = loc.pair_frames(LocaliseOptions())
    ids = loc.map.ids
    items = [
        (ids[i], [(ids[j], frames.canonical(*frames.ordered(i, j))) for j in partners(i)])
        for i in indices
    ]
    write_pair_frames(loc.map.path, frames.key, items)
    loc.map.pair_frames.refresh()
    return list(indices)
