"""A job's figure: its query photo beside the references it counted, the verified inliers drawn.

The worker keeps each shown candidate's inlier keypoints when the job ends (:func:`pack_inliers`,
a few kB) and the query photo fitted to a panel, so a figure is drawn from those, the reference
photos and nothing else: no model, no map, no full-size upload to decode; and it shows exactly
what the job counted.

The figure has a fixed size whatever the photos' (:func:`figure_size`): every photo is scaled
to fit a panel before anything is drawn, so a 36 MP upload costs what any other does, and the
captions keep one size on the job page. Match scores are not drawn: verified matches of one
pair score alike (mutual NN similarities near 1), so a colour scale would say nothing; every
inlier is one line of one colour, named in the legend below the rows.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from core.types import InlierMatches

WIDTH = 960  # px: the figure's width, which the job page shows unscaled
GAP = 12  # px between the query and the reference
PANEL = ((WIDTH - GAP) // 2, 360)  # (width, height) box each photo is fitted into
HEADER = 32  # px of caption above each row
FOOTER = 32  # px of legend below the rows
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.7
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
MATCH_COLOUR = (40, 200, 40)  # BGR: one colour for every verified inlier
LEGEND = "green lines: the verified inlier matches the job counted, one per match"
FORMAT_VERSION = 2  # 2: one figure per photo of the job
TICKS = (
    4  # about this many axis ticks on the shorter axis of a plot (api/plot.py, core/mapfigures.py)
)


@dataclass
class FigureRow:
    """One reference of the figure: its photo, its inliers with the query, its caption."""

    photo: np.ndarray  # BGR uint8, as read
    inliers: InlierMatches
    caption: str


def figure_size(rows: int) -> tuple[int, int]:
    """(width, height) of a figure of ``rows`` references (0: the query alone)."""
    return WIDTH, max(rows, 1) * (HEADER + PANEL[1]) + FOOTER


def fit(image: np.ndarray, box: tuple[int, int] = PANEL) -> np.ndarray:
    """``image`` scaled to fit ``box`` (width, height), aspect kept."""
    h, w = image.shape[:2]
    scale = min(box[0] / w, box[1] / h)
    size = (max(1, min(box[0], round(w * scale))), max(1, min(box[1], round(h * scale))))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def draw_figure(
    query: np.ndarray,
    query_size: tuple[int, int] | None,
    rows: Sequence[FigureRow],
    caption: str = "",
) -> np.ndarray:
    """One row per reference: the query (left) and the reference (right), each fitted to a
    panel, every inlier a line; ``caption`` heads a figure of the query alone. BGR uint8.

    ``query_size`` is the (width, height) the query's inlier points are in (the query as
    extracted, ``LocalisationResult.query_size``); each reference's is in its inliers."""
    width, height = figure_size(len(rows))
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    panel = fit(query)  # once: the photo may be a large upload
    ph, pw = panel.shape[:2]
    if not rows:
        canvas[HEADER : HEADER + ph, :pw] = panel
        text(canvas, 0, caption or "no candidates")
    for row, item in enumerate(rows):
        top = row * (HEADER + PANEL[1]) + HEADER
        canvas[top : top + ph, :pw] = panel
        ref = fit(item.photo)
        x0 = PANEL[0] + GAP
        canvas[top : top + ref.shape[0], x0 : x0 + ref.shape[1]] = ref
        m = item.inliers
        frame = query_size or (query.shape[1], query.shape[0])
        q = _scaled(m.query_points, frame, (pw, ph)) + (0, top)
        r = _scaled(m.reference_points, m.reference_size, (ref.shape[1], ref.shape[0]))
        r = r + (x0, top)
        for (qx, qy), (rx, ry) in zip(q.round().astype(int), r.round().astype(int), strict=True):
            cv2.line(canvas, (qx, qy), (rx, ry), MATCH_COLOUR, 1, cv2.LINE_AA)
            cv2.circle(canvas, (qx, qy), 2, MATCH_COLOUR, -1, cv2.LINE_AA)
            cv2.circle(canvas, (rx, ry), 2, MATCH_COLOUR, -1, cv2.LINE_AA)
        text(canvas, top - HEADER, item.caption)
    if rows:
        legend_y = height - FOOTER
        cv2.line(canvas, (6, legend_y + FOOTER // 2), (40, legend_y + FOOTER // 2), MATCH_COLOUR, 2)
        text(canvas, legend_y, LEGEND, x=48)
    return canvas


def _scaled(points: np.ndarray, frame: tuple[int, int], shown: tuple[int, int]) -> np.ndarray:
    """Points in a (width, height) frame moved to the same picture shown at ``shown``."""
    factors = np.array([shown[0] / frame[0], shown[1] / frame[1]])
    return np.asarray(points, np.float64).reshape(-1, 2) * factors


def text(canvas: np.ndarray, top: int, text: str, x: int = 6) -> None:
    """A line of text in the band from ``top``, smaller where it would not fit the width."""
    width = cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0]
    scale = FONT_SCALE * min(1.0, (canvas.shape[1] - x - 6) / max(width, 1))
    cv2.putText(canvas, text, (x, top + HEADER - 10), FONT, scale, TEXT, 1, cv2.LINE_AA)


def tick_step(span: float) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving about ``TICKS`` ticks over
    ``span``."""
    raw = max(span, 1e-9) / TICKS
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def ticks(lo: float, hi: float, step: float) -> list[float]:
    """The multiples of ``step`` from ``lo`` to ``hi``."""
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [k * step for k in range(first, last + 1)]


def axis_label(value: float, step: float) -> str:
    """A tick's label, with the digits its step needs."""
    digits = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{digits}f}" if abs(value) > step / 2 else "0"


@dataclass
class KeptFigure:
    """What a job keeps to draw its figure."""

    query_size: tuple[int, int]  # (width, height) the query's inlier points are in
    query_key: str  # blob key of the query photo fitted to a panel (JPEG)
    inliers: list[InlierMatches]


def pack_inliers(figures: Sequence[KeptFigure]) -> bytes:
    """What a job keeps for its figures, one per photo (a photo set has several), as stored with
    the job (an .npz: no pickles)."""
    meta = {
        "version": FORMAT_VERSION,
        "photos": [
            {
                "query_size": list(kept.query_size),
                "query_key": kept.query_key,
                "pairs": [
                    {
                        "reference_id": m.reference_id,
                        "stage": m.stage,
                        "reference_size": list(m.reference_size),
                        "tentative": m.tentative,
                    }
                    for m in kept.inliers
                ],
            }
            for kept in figures
        ],
    }
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
    for p, kept in enumerate(figures):
        for i, m in enumerate(kept.inliers):
            arrays[f"q{p}_{i}"] = np.asarray(m.query_points, np.float32).reshape(-1, 2)
            arrays[f"r{p}_{i}"] = np.asarray(m.reference_points, np.float32).reshape(-1, 2)
    out = io.BytesIO()
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


def unpack_inliers(data: bytes) -> list[KeptFigure]:
    """What :func:`pack_inliers` stored, one figure per photo; ValueError when ``data`` is not
    that. Format 1 (jobs stored before photo sets) held one photo's figure."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            version = meta.get("version")
            if version == 1:
                return [_unpack_photo(npz, meta, "")]
            if version != FORMAT_VERSION:
                raise ValueError(f"stored inliers of format {version!r}")
            return [_unpack_photo(npz, photo, f"{p}_") for p, photo in enumerate(meta["photos"])]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"unreadable stored inliers: {exc}") from exc


def _unpack_photo(npz: Any, meta: dict[str, Any], prefix: str) -> KeptFigure:
    """One photo's figure; its arrays are named q/r + ``prefix`` + the pair's index."""
    pairs = []
    for i, p in enumerate(meta["pairs"]):
        query, reference = f"q{prefix}{i}", f"r{prefix}{i}"
        pairs.append(
            InlierMatches(
                p["reference_id"],
                p["stage"],
                npz[query],
                npz[reference],
                (int(p["reference_size"][0]), int(p["reference_size"][1])),
                int(p["tentative"]),
            )
        )
    width, height = meta["query_size"]
    return KeptFigure((int(width), int(height)), str(meta["query_key"]), pairs)
