"""Figures of a localisation: the query beside its best references, verified matches drawn.

As in the figures of the method this project comes from (SuperGlue's ``make_matching_plot``),
each match is a line coloured by its confidence on the jet colormap: blue is weak, red strong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from core.localiser import LocaliseOptions, Localiser

GAP = 10  # pixels between the query and the reference
HEADER = 24  # pixels of caption above each pair
BACKGROUND = (255, 255, 255)


@dataclass
class PairMatches:
    """The verified matches of the query with one reference."""

    reference_id: str
    query_points: np.ndarray  # (K, 2) x, y in the query
    reference_points: np.ndarray  # (K, 2) x, y in the reference
    confidence: np.ndarray  # (K,) match scores in [0, 1]
    tentative: int  # matches before verification


def verified_matches(
    localiser: Localiser,
    query: np.ndarray,
    reference_ids: Sequence[str],
    options: LocaliseOptions | None = None,
) -> list[PairMatches]:
    """Match ``query`` (BGR) with the given references of the localiser's map exactly as a job
    does (``Localiser.match_and_verify``: the same matcher settings and verification)."""
    opts = options or LocaliseOptions()
    feats = localiser.extractor.extract(query)
    ref_map = localiser.map
    indices = [ref_map.index[rid] for rid in reference_ids]
    pairs, _ = localiser.match_and_verify(feats, indices, opts)
    out = []
    for rid, pair in zip(reference_ids, pairs, strict=True):
        q_idx, r_idx = pair.inlier_indices[:, 0], pair.inlier_indices[:, 1]
        out.append(
            PairMatches(
                rid,
                feats.keypoints[q_idx],
                ref_map.features[pair.index].keypoints[r_idx],
                pair.matches.scores[pair.inliers],
                len(pair.matches),
            )
        )
    return out


def jet_colours(confidence: np.ndarray) -> np.ndarray:
    """(K, 3) BGR colours of confidences in [0, 1] on the jet colormap."""
    levels = np.clip(np.asarray(confidence, np.float64) * 255, 0, 255).astype(np.uint8)
    if levels.size == 0:  # OpenCV returns None for an empty image
        return np.empty((0, 3), np.uint8)
    return cv2.applyColorMap(levels.reshape(-1, 1), cv2.COLORMAP_JET).reshape(-1, 3)


def figure_size(query_size: tuple[int, int], reference_sizes: Sequence[tuple[int, int]]):
    """(width, height) of :func:`draw_matches`' figure for these (width, height) images."""
    wq, hq = query_size
    widths = [round(w * hq / h) for w, h in reference_sizes] or [0]
    rows = max(len(reference_sizes), 1)
    return wq + GAP + max(widths), rows * (HEADER + hq)


def draw_matches(
    query: np.ndarray,
    references: Sequence[np.ndarray],
    pairs: Sequence[PairMatches],
    captions: Sequence[str] | None = None,
) -> np.ndarray:
    """One row per reference: the query on the left, the reference (scaled to the query's height)
    on the right, each verified match a jet-coloured line; BGR uint8."""
    hq, wq = query.shape[:2]
    sizes = [(r.shape[1], r.shape[0]) for r in references]
    width, height = figure_size((wq, hq), sizes)
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    if not references:
        canvas[HEADER:, :wq] = query
        _caption(canvas, 0, captions[0] if captions else "no candidates")
        return canvas
    for row, (ref, pair) in enumerate(zip(references, pairs, strict=True)):
        top = row * (HEADER + hq) + HEADER
        scale = hq / ref.shape[0]
        ref_scaled = cv2.resize(
            ref, (round(ref.shape[1] * scale), hq), interpolation=cv2.INTER_AREA
        )
        canvas[top : top + hq, :wq] = query
        x0 = wq + GAP
        canvas[top : top + hq, x0 : x0 + ref_scaled.shape[1]] = ref_scaled
        colours = jet_colours(pair.confidence)
        # Weakest first, so the strongest matches are drawn on top.
        for k in np.argsort(pair.confidence, kind="stable"):
            qx, qy = pair.query_points[k]
            rx, ry = pair.reference_points[k] * scale
            p = (round(float(qx)), round(float(qy)) + top)
            r = (round(float(rx)) + x0, round(float(ry)) + top)
            c = tuple(int(v) for v in colours[k])
            cv2.line(canvas, p, r, c, 1, cv2.LINE_AA)
            cv2.circle(canvas, p, 2, c, -1, cv2.LINE_AA)
            cv2.circle(canvas, r, 2, c, -1, cv2.LINE_AA)
        text = captions[row] if captions else f"{pair.reference_id}: {len(pair.confidence)} inliers"
        _caption(canvas, row * (HEADER + hq), text)
    return canvas


def _caption(canvas: np.ndarray, top: int, text: str) -> None:
    cv2.putText(
        canvas,
        text,
        (4, top + HEADER - 7),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.5,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
