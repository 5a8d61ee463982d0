"""A job's figure: its query photo beside its best references, the verified matches drawn.

Shared by ``featureloc draw`` and the HTTP API's ``matches.png`` and job page. The matches are
recomputed from the map with the job's own options (``core/draw.py``), so the figure shows what
the worker saw. A map keeps features, not photos: the reference photos are read from a folder
(file stem = reference id), by default the one recorded in the map (``featureloc map images``);
references whose photo is not there are left out and named in the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.draw import draw_matches, verified_matches
from core.errors import InputError
from core.images import decode_image, read_image
from core.localiser import LocaliseOptions, Localiser
from core.mapbuild import IMAGE_SUFFIXES
from db import queries
from workers.client import Client
from workers.maps import image_limits


@dataclass
class JobFigure:
    image: np.ndarray  # BGR uint8
    drawn: list[str]  # reference ids shown, most inliers first
    missing: list[str] = field(default_factory=list)  # best references without a photo


def find_image(folder: Path, ref_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{ref_id}{suffix}", folder / f"{ref_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def job_figure(
    client: Client, localiser: Localiser, job_id: str, images_dir: Path | None, top: int
) -> JobFigure:
    """The figure of a job (query, then its ``top`` references by inliers).

    Raises InputError (unknown job), ImageError, MapError or BlobNotFound (photo gone).
    """
    job = client.result(job_id)
    with client.db.session() as s:
        stored = queries.get_job(s, job_id)
        if stored is None:  # client.result found it: deleted since
            raise InputError(f"unknown job {job_id!r}")
        image_key = stored.image_key
    query = decode_image(client.blobs.get(image_key), image_limits(client.settings))
    best = job.candidates[:top]  # most inliers first
    photos = {
        c.reference_id: find_image(images_dir, c.reference_id) if images_dir else None for c in best
    }
    found = {rid: path for rid, path in photos.items() if path is not None}
    shown = [c for c in best if c.reference_id in found]
    refs = [read_image(found[c.reference_id]) for c in shown]
    pairs = verified_matches(
        localiser, query, [c.reference_id for c in shown], LocaliseOptions.parse(job.options)
    )
    captions = [
        f"{p.reference_id} at ({c.position[0]:.1f}, {c.position[1]:.1f}): "
        f"{len(p.confidence)} inliers / {p.tentative} matches"
        for c, p in zip(shown, pairs, strict=True)
    ]
    missing = [c.reference_id for c in best if photos[c.reference_id] is None]
    if not shown:
        captions = [
            f"job {job_id}: no candidates"
            if not best
            else "reference photos unavailable (featureloc map images)"
        ]
    return JobFigure(
        draw_matches(query, refs, pairs, captions), [c.reference_id for c in shown], missing
    )
