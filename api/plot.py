"""A job on its map as SVG: the reference positions, the candidate places weighted by evidence,
the estimate and its confidence.

Candidates at one position add up (views of one place are evidence for it together, as in
``core/estimation.py``); a place's disc has an area proportional to its verified inliers. Both
axes have one scale, ticked at round values in the map's units; y grows upwards, as on a map.
"""

from __future__ import annotations

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
    span = max(x1 - x0, y1 - y0, 1e-3)
    frame_left, frame_bottom = LEFT, HEIGHT - LEGEND - BOTTOM
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
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
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
