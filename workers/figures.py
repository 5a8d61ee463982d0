"""A job's figure: what the worker keeps when the job ends, and the figure drawn from it.

Shared by ``featureloc draw`` and the HTTP API's ``matches.png`` and job page. The worker keeps
the inliers of the few candidates a figure can show and the query fitted to a panel
(:func:`keep_figure`, stored with the job), so drawing needs those and the reference photos, and
no model, no map, no full-size upload: the figure shows exactly the references and inliers the
job counted, and costs the same for any upload (core/draw.py). A map keeps features, not photos:
the reference photos are read from a folder (file stem = reference id), by default the one
recorded in the map (``featureloc map images``); references whose photo is not there are left
out and named.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.draw import FigureRow, KeptFigure, draw_figure, fit, pack_inliers, unpack_inliers
from core.errors import InputError
from core.images import ImageLimits, decode_image, read_image
from core.mapbuild import IMAGE_SUFFIXES
from core.types import CandidateResult, Estimate, InlierMatches, LocalisationResult
from db import queries
from workers.blobstore import BlobStore
from workers.client import Client
from workers.maps import image_limits

log = logging.getLogger(__name__)

FIGURE_REFERENCES = 6  # most references a job keeps inliers of (the figures' largest ``top``)
# The kept query is our own panel-sized JPEG: a thin upload's is thinner than uploads may be.
PANEL_LIMITS = ImageLimits(min_side=1)
NOT_KEPT = "stored before jobs kept their matches: the query alone"


class NoSuchPhoto(InputError):
    """A figure of a photo the job does not have."""


@dataclass
class JobFigure:
    image: np.ndarray  # BGR uint8
    drawn: list[InlierMatches]  # the rows shown, in order
    missing: list[str] = field(default_factory=list)  # kept references without a photo
    note: str | None = None  # why no reference is drawn, when none is


def keep_figures(
    estimate: Estimate,
    results: Sequence[LocalisationResult],
    photos: Sequence[np.ndarray],
    blobs: BlobStore,
) -> bytes | None:
    """What a job keeps for its figures, one per photo (a photo set has several): from each
    photo's result and its decoded image, the image fitted to a panel (a JPEG in the blob store:
    a figure never decodes the upload) and the inliers of up to ``FIGURE_REFERENCES`` distinct
    references, those that decided the job's ``estimate`` first. Where the fine stage answered
    (its name is in the method), its rows come first; then the references the estimate rests
    on; then the most inliers. Candidates without a match are not stored, so they are not
    kept."""
    figures = []
    for result, photo in zip(results, photos, strict=True):
        figure = _kept(estimate, result, photo, blobs)
        if figure is None:
            return None
        figures.append(figure)
    return pack_inliers(figures)


def _kept(
    estimate: Estimate, result: LocalisationResult, photo: np.ndarray, blobs: BlobStore
) -> KeptFigure | None:
    if result.query_size is None:
        return None
    fine_answered = "fine" in re.split("[+:]", estimate.method)  # e.g. set:cluster+fine
    support = set(estimate.support)

    def order(pair: tuple[CandidateResult, InlierMatches]) -> tuple[bool, bool, int]:
        c = pair[0]
        return ((c.stage == "fine") != fine_answered, c.reference_id not in support, -c.inliers)

    pairs = [p for p in zip(result.candidates, result.inliers, strict=True)]
    kept: dict[str, InlierMatches] = {}
    for c, m in sorted((p for p in pairs if p[0].tentative_matches > 0), key=order):
        if c.reference_id not in kept and len(kept) < FIGURE_REFERENCES:
            kept[c.reference_id] = m
    ok, jpeg = cv2.imencode(".jpg", fit(photo), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        return None
    try:
        key = blobs.put(jpeg.tobytes())
    except Exception:  # a figure is an aid: the job's result is stored all the same
        log.warning("could not keep the figure's query photo", exc_info=True)
        return None
    return KeptFigure(result.query_size, key, list(kept.values()))


def find_image(folder: Path, ref_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{ref_id}{suffix}", folder / f"{ref_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def job_figure(
    client: Client, job_id: str, images_dir: Path | None, top: int, photo: int = 0
) -> JobFigure:
    """The figure of a finished job's ``photo`` (0-based; a photo set has several): the photo
    and up to ``top`` of the references it kept for it.

    A job stored before jobs kept their inliers gets the query alone, captioned so.
    Raises NoSuchPhoto, InputError (unknown job, unreadable stored inliers), ImageError or
    BlobNotFound (query photo gone).
    """
    with client.db.session() as s:
        stored = queries.get_job(s, job_id)
        if stored is None:
            raise InputError(f"unknown job {job_id!r}")
        if stored.status != "done":
            raise InputError(f"job {job_id} is {stored.status}: there is nothing to draw")
        image_key, kept = stored.image_key, stored.figure_inliers
        photo_count = max(len(queries.get_job_photos(s, job_id)), 1)
        positions = {
            (c.stage, c.reference_id): c.position
            for c in queries.get_candidates(s, job_id)
            if c.photo == photo
        }
    if not 0 <= photo < photo_count:
        raise NoSuchPhoto(f"job {job_id} has {photo_count} photo(s): there is no photo {photo}")
    if kept is None:
        query = decode_image(client.blobs.get(image_key), image_limits(client.settings))
        return JobFigure(draw_figure(query, None, [], NOT_KEPT), [], note=NOT_KEPT)
    try:
        figures = unpack_inliers(kept)
    except ValueError as exc:
        raise InputError(f"job {job_id}: {exc}") from None
    if photo >= len(figures):
        raise InputError(f"job {job_id}: no figure was kept for photo {photo}")
    figure = figures[photo]
    query = decode_image(client.blobs.get(figure.query_key), PANEL_LIMITS)
    inliers = figure.inliers
    rows: list[FigureRow] = []
    drawn: list[InlierMatches] = []
    missing: list[str] = []
    for m in inliers[:top]:
        ref_photo = find_image(images_dir, m.reference_id) if images_dir else None
        if ref_photo is None:
            missing.append(m.reference_id)
            continue
        x, y = positions.get((m.stage, m.reference_id), (float("nan"), float("nan")))
        caption = (
            f"{len(drawn) + 1}. {m.reference_id} at ({x:.1f}, {y:.1f}), {m.stage} stage: "
            f"{len(m)} inliers of {m.tentative} matches"
        )
        rows.append(FigureRow(read_image(ref_photo), m, caption))
        drawn.append(m)
    note = None
    if not rows:
        note = (
            f"job {job_id}: no candidates"
            if not inliers
            else "reference photos unavailable (featureloc map images)"
        )
    return JobFigure(draw_figure(query, figure.query_size, rows, note or ""), drawn, missing, note)
