"""A job on its map as SVG: the reference positions, the candidate places weighted by evidence,
the estimate and its confidence.

Candidates at one position add up (views of one place are evidence for it together, as in
``core/estimation.py``); a place's disc has an area proportional to its verified inliers. y grows
upwards, as on a map.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from html import escape

from core.types import CandidateResult

WIDTH, HEIGHT = 560, 460
MARGIN = 40  # room for the axis labels
MAX_RADIUS = 18.0
LEGEND = 54  # height of the caption below the plot


def job_plot_svg(
    references: Sequence[tuple[float, float]],
    candidates: Sequence[CandidateResult],
    estimate: tuple[float, float] | None,
    confidence: float | None,
    localised: bool | None,
) -> str:
    points = list(references) + [c.position for c in candidates]
    if estimate is not None:
        points.append(estimate)
    xs = [p[0] for p in points] or [0.0]
    ys = [p[1] for p in points] or [0.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    span = max(x1 - x0, y1 - y0, 1e-9)
    inner_w, inner_h = WIDTH - 2 * MARGIN, HEIGHT - LEGEND - 2 * MARGIN
    scale = min(inner_w, inner_h) / span

    def px(x: float, y: float) -> tuple[float, float]:
        return MARGIN + (x - x0) * scale, HEIGHT - LEGEND - MARGIN - (y - y0) * scale

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<rect x="{MARGIN / 2}" y="{MARGIN / 2}" width="{WIDTH - MARGIN}" '
        f'height="{HEIGHT - LEGEND - MARGIN}" fill="none" stroke="#bbb"/>',
        _text(MARGIN / 2, HEIGHT - LEGEND + 2, f"x {x0:.1f} .. {x1:.1f}, y {y0:.1f} .. {y1:.1f}"),
    ]
    for x, y in references:
        cx, cy = px(x, y)
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2" fill="#999"/>')
    evidence: dict[tuple[float, float], int] = defaultdict(int)
    for c in candidates:
        evidence[c.position] += c.inliers
    strongest = max(evidence.values(), default=0)
    for (x, y), inliers in sorted(evidence.items(), key=lambda kv: kv[1]):
        if inliers <= 0:
            continue
        cx, cy = px(x, y)
        r = 3 + MAX_RADIUS * (inliers / strongest) ** 0.5
        out.append(
            f'<circle class="candidate" cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" '
            f'fill="#1f77b4" fill-opacity="0.35" stroke="#1f77b4">'
            f"<title>({x:.1f}, {y:.1f}): {inliers} inliers</title></circle>"
        )
    if estimate is not None:
        cx, cy = px(*estimate)
        colour = "#d62728" if localised else "#ff9896"
        out.append(
            f'<path class="estimate" d="M{cx - 8:.1f},{cy - 8:.1f}L{cx + 8:.1f},{cy + 8:.1f}'
            f'M{cx - 8:.1f},{cy + 8:.1f}L{cx + 8:.1f},{cy - 8:.1f}" stroke="{colour}" '
            'stroke-width="3"/>'
        )
    out.append(_text(MARGIN / 2, HEIGHT - LEGEND + 20, _caption(estimate, confidence, localised)))
    out.append(
        _text(
            MARGIN / 2,
            HEIGHT - LEGEND + 38,
            "grey: reference positions; blue discs: candidate places, area = verified inliers",
        )
    )
    out.append("</svg>")
    return "\n".join(out)


def _caption(
    estimate: tuple[float, float] | None, confidence: float | None, localised: bool | None
) -> str:
    if estimate is None:
        return "no estimate"
    conf = "-" if confidence is None else f"{confidence:.2f}"
    verdict = "localised" if localised else "NOT localised (weak evidence)"
    return (
        f"red cross: estimate ({estimate[0]:.1f}, {estimate[1]:.1f}), confidence {conf}, {verdict}"
    )


def _text(x: float, y: float, text: str) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}">{escape(text)}</text>'
