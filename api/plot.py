"""A job on its map as SVG: the reference positions, the candidate places weighted by evidence,
the estimate and its confidence; for a photo set, each photo's own answer (numbered); an arrow
for the way the camera faced, where placement (pairs or pose) gave one.

Candidates at one position add up (views of one place are evidence for it together, as in
``core/estimation.py``); a place's disc has an area proportional to its verified inliers. Both
axes have one scale, ticked at round values in the map's units; y grows upwards, as on a map.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from html import escape

from core.draw import axis_label, tick_step, ticks
from core.types import CandidateResult

WIDTH, HEIGHT = 560, 460
MARGIN = 40  # around the points, inside the frame: room for the largest disc
LEFT = 56  # room for the y axis' tick labels and name
BOTTOM = 34  # room for the x axis' tick labels and name
MAX_RADIUS = 18.0
LEGEND = 54  # height of the caption below the plot (one more line for headings or photos)
ARROW = 26  # px: length of a heading arrow


def job_plot_svg(
    references: Sequence[tuple[float, float]],
    candidates: Sequence[CandidateResult],
    estimate: tuple[float, float] | None,
    confidence: float | None,
    localised: bool | None,
    heading: float | None = None,
    photos: Sequence[tuple[float, float, float | None]] = (),
) -> str:
    """``heading``: the estimate's, radians in the map's frame; ``photos``: a set's photos' own
    answers, (x, y, heading or None), in the set's order."""
    points = list(references) + [c.position for c in candidates] + [p[:2] for p in photos]
    if estimate is not None:
        points.append(estimate)
    extra = 18 if photos or heading is not None else 0
    height = HEIGHT + extra
    xs = [p[0] for p in points] or [0.0]
    ys = [p[1] for p in points] or [0.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    span = max(x1 - x0, y1 - y0, 1e-3)
    frame_left, frame_bottom = LEFT, height - LEGEND - extra - BOTTOM
    inner_w = WIDTH - frame_left - 10 - 2 * MARGIN
    inner_h = frame_bottom - 10 - 2 * MARGIN
    scale = min(inner_w, inner_h) / span

    def px(x: float, y: float) -> tuple[float, float]:
        return frame_left + MARGIN + (x - x0) * scale, frame_bottom - MARGIN - (y - y0) * scale

    # The values at the frame's edges, so that ticks cover all of it.
    x_lo, y_lo = x0 - MARGIN / scale, y0 - MARGIN / scale
    x_hi = x_lo + (WIDTH - 10 - frame_left) / scale
    y_hi = y_lo + (frame_bottom - 10) / scale
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<rect x="{frame_left}" y="10" width="{WIDTH - 10 - frame_left}" '
        f'height="{frame_bottom - 10}" fill="none" stroke="#888"/>',
    ]
    step = tick_step(min(x_hi - x_lo, y_hi - y_lo))
    for value in ticks(x_lo, x_hi, step):
        cx, _ = px(value, y0)
        out += _tick("x", value, step, (cx, frame_bottom), (0, 5), (cx, frame_bottom + 17))
    for value in ticks(y_lo, y_hi, step):
        _, cy = px(x0, value)
        out += _tick("y", value, step, (frame_left, cy), (-5, 0), (frame_left - 7, cy + 4))
    out.append(
        f'<text class="axis-name" x="{(frame_left + WIDTH) / 2:.1f}" y="{frame_bottom + 31}" '
        'text-anchor="middle">x</text>'
    )
    out.append(
        f'<text class="axis-name" x="12" y="{frame_bottom / 2:.1f}" text-anchor="middle">y</text>'
    )
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
    for n, (x, y, photo_heading) in enumerate(photos, 1):
        cx, cy = px(x, y)
        if photo_heading is not None:
            out.append(_arrow("photo-heading", cx, cy, photo_heading, "#2ca02c"))
        out.append(
            f'<g class="photo-answer"><circle cx="{cx:.1f}" cy="{cy:.1f}" r="7" fill="white" '
            f'stroke="#2ca02c"/><text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle" '
            f'font-size="10">{n}</text><title>photo {n} alone: ({x:.1f}, {y:.1f})</title></g>'
        )
    if estimate is not None:
        cx, cy = px(*estimate)
        colour = "#d62728" if localised else "#ff9896"
        if heading is not None:
            out.append(_arrow("heading", cx, cy, heading, colour))
        out.append(
            f'<path class="estimate" d="M{cx - 8:.1f},{cy - 8:.1f}L{cx + 8:.1f},{cy + 8:.1f}'
            f'M{cx - 8:.1f},{cy + 8:.1f}L{cx + 8:.1f},{cy - 8:.1f}" stroke="{colour}" '
            'stroke-width="3"/>'
        )
    top = height - LEGEND - extra
    out.append(_text(MARGIN / 2, top + 20, _caption(estimate, confidence, localised)))
    out.append(
        _text(
            MARGIN / 2,
            top + 38,
            "grey: reference positions; blue discs: candidate places, area = verified inliers",
        )
    )
    if extra:
        says = []
        if photos:
            says.append("green numbers: where each photo of the set alone localised")
        if heading is not None or any(p[2] is not None for p in photos):
            says.append("arrows: the way the camera faced (placement)")
        out.append(_text(MARGIN / 2, top + 56, "; ".join(says) or "no photo answers"))
    out.append("</svg>")
    return "\n".join(out)


def _arrow(kind: str, cx: float, cy: float, heading: float, colour: str) -> str:
    """An arrow from (cx, cy) the way ``heading`` points (radians in the map's frame; the SVG's
    y grows downwards, the map's upwards)."""
    dx, dy = math.cos(heading), -math.sin(heading)
    tx, ty = cx + ARROW * dx, cy + ARROW * dy
    # The head: two short strokes back from the tip, 25 degrees either side of the shaft.
    wings = [
        (
            tx - 8 * (dx * math.cos(a) - dy * math.sin(a)),
            ty - 8 * (dx * math.sin(a) + dy * math.cos(a)),
        )
        for a in (math.radians(25), -math.radians(25))
    ]
    (ax, ay), (bx, by) = wings
    return (
        f'<path class="{kind}" d="M{cx:.1f},{cy:.1f}L{tx:.1f},{ty:.1f}'
        f'M{ax:.1f},{ay:.1f}L{tx:.1f},{ty:.1f}L{bx:.1f},{by:.1f}" '
        f'stroke="{colour}" stroke-width="2" fill="none"/>'
    )


def _tick(
    axis: str,
    value: float,
    step: float,
    at: tuple[float, float],
    mark: tuple[float, float],
    label: tuple[float, float],
) -> list[str]:
    """A tick mark on the frame at ``at`` (``mark`` long, outwards) and its label."""
    anchor = "middle" if axis == "x" else "end"
    return [
        f'<line x1="{at[0]:.1f}" y1="{at[1]:.1f}" x2="{at[0] + mark[0]:.1f}" '
        f'y2="{at[1] + mark[1]:.1f}" stroke="#888"/>',
        f'<text class="tick-{axis}" x="{label[0]:.1f}" y="{label[1]:.1f}" '
        f'text-anchor="{anchor}">{axis_label(value, step)}</text>',
    ]


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
