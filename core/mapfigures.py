"""The map report's figures (core/mapreport.py), drawn as PNG like a job's (core/draw.py).

- ``plan``: every reference position coloured by its held-out error, a black ring where it was
  not localised, a grey dot where it is not measured yet;
- ``coverage``: the areas shaded by held-out MAE, the coverage holes as circles (centred on
  the hole's point farthest from the references, through the nearest one), the suggestions
  numbered;
- ``reliability``: calibrated confidence against the share of hits per bin, and the diagonal a
  calibrated confidence would lie on;
- ``worst``: the worst held-out views beside the reference each matched instead.

All figures are ``WIDTH`` wide (the width the job page shows unscaled); the plans keep one
scale on both axes, y growing upwards as on a map.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from core.draw import (
    BACKGROUND,
    FONT,
    GAP,
    HEADER,
    PANEL,
    TEXT,
    WIDTH,
    axis_label,
    fit,
    text,
    tick_step,
    ticks,
)
from core.evaluation import HIT_RADIUS
from core.images import read_image
from core.mapreport import MapReport

LEFT, RIGHT, TOP, BOTTOM = 70, 20, 20, 50  # px around a plot's frame: room for the axes
PLAN_HEIGHT = 720  # px: the most a plan's frame may take
LEGEND_ROWS = 2
SMALL = 0.5  # font scale of tick labels and marker numbers
GRID = (210, 210, 210)
FRAME = (120, 120, 120)
UNMEASURED = (190, 190, 190)
HOLE = (200, 90, 30)  # BGR blue
WORST_ERROR = 6 * HIT_RADIUS  # the colour scale's red end


def error_colour(error: float) -> tuple[int, int, int]:
    """BGR from green (a hit) through yellow (``HIT_RADIUS``) to red (``WORST_ERROR`` and
    beyond)."""
    t = float(np.clip(error / WORST_ERROR, 0.0, 1.0))
    knee = HIT_RADIUS / WORST_ERROR
    if t <= knee:
        u = t / knee
        return 40, 180, round(40 + 180 * u)  # green -> yellow
    u = (t - knee) / (1 - knee)
    return 30, round(200 * (1 - u)), 220  # yellow -> red


class Plot:
    """A frame with ticked axes on a white canvas, data (x, y) mapped to pixels at one scale
    on both axes (``square``) or filling the frame."""

    def __init__(self, lo, hi, frame_height: int, footer: int, square: bool = True) -> None:
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        span = np.maximum(hi - lo, 1e-6)
        lo, hi = lo - 0.04 * span, hi + 0.04 * span  # the outermost points clear the frame
        span = hi - lo
        inner_w = WIDTH - LEFT - RIGHT
        if square:
            self.scale = np.full(2, min(inner_w / span[0], frame_height / span[1]))
        else:
            self.scale = np.array([inner_w / span[0], frame_height / span[1]])
        self.lo, self.hi = lo, hi
        self.size = np.round(span * self.scale).astype(int)
        self.height = TOP + int(self.size[1]) + BOTTOM + footer
        self.canvas = np.full((self.height, WIDTH, 3), BACKGROUND, np.uint8)
        self._axes()

    def px(self, x: float, y: float) -> tuple[int, int]:
        return (
            round(LEFT + (x - self.lo[0]) * self.scale[0]),
            round(TOP + self.size[1] - (y - self.lo[1]) * self.scale[1]),
        )

    def _axes(self) -> None:
        c, bottom = self.canvas, TOP + int(self.size[1])
        for axis in (0, 1):
            step = tick_step(float(min(self.hi - self.lo)) if self.scale[0] == self.scale[1]
                             else float(self.hi[axis] - self.lo[axis]))  # fmt: skip
            for v in ticks(self.lo[axis], self.hi[axis], step):
                label = axis_label(v, step)
                if axis == 0:
                    x, _ = self.px(v, self.lo[1])
                    cv2.line(c, (x, TOP), (x, bottom), GRID, 1)
                    w = cv2.getTextSize(label, FONT, SMALL, 1)[0][0]
                    cv2.putText(c, label, (x - w // 2, bottom + 18), FONT, SMALL, TEXT, 1,
                                cv2.LINE_AA)  # fmt: skip
                else:
                    _, y = self.px(self.lo[0], v)
                    cv2.line(c, (LEFT, y), (LEFT + int(self.size[0]), y), GRID, 1)
                    w = cv2.getTextSize(label, FONT, SMALL, 1)[0][0]
                    cv2.putText(c, label, (LEFT - 6 - w, y + 5), FONT, SMALL, TEXT, 1,
                                cv2.LINE_AA)  # fmt: skip
        cv2.rectangle(c, (LEFT, TOP), (LEFT + int(self.size[0]), bottom), FRAME, 1)

    def caption(self, row: int, line: str) -> None:
        """A line of the legend below the axes."""
        text(self.canvas, TOP + int(self.size[1]) + BOTTOM - 14 + row * (HEADER - 6), line)


def _site(report: MapReport) -> Plot:
    pts = np.array([[p.x, p.y] for p in report.positions]).reshape(-1, 2)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return Plot(lo, hi, PLAN_HEIGHT, LEGEND_ROWS * HEADER)


def plan_figure(report: MapReport) -> np.ndarray:
    plot = _site(report)
    c = plot.canvas
    for p in sorted(report.positions, key=lambda p: -1.0 if p.error is None else p.error):
        at = plot.px(p.x, p.y)
        if p.error is None:
            cv2.circle(c, at, 2, UNMEASURED, -1, cv2.LINE_AA)
            continue
        cv2.circle(c, at, 4, error_colour(p.error), -1, cv2.LINE_AA)
        if not p.localised:
            cv2.circle(c, at, 7, TEXT, 1, cv2.LINE_AA)
    plot.caption(0, f"held-out error ({report.profile} profile): green < {HIT_RADIUS:g}, yellow "
                 f"{HIT_RADIUS:g}, red >= {WORST_ERROR:g}; MAE {report.mae:.2f}")  # fmt: skip
    plot.caption(1, f"black ring: not localised; grey: not measured "
                 f"({report.positions_measured} of {report.positions_total} measured)")  # fmt: skip
    return c


def coverage_figure(report: MapReport) -> np.ndarray:
    plot = _site(report)
    c = plot.canvas
    shade = c.copy()
    for a in report.areas:
        cv2.rectangle(shade, plot.px(a.x0, a.y1), plot.px(a.x1, a.y0), error_colour(a.mae), -1)
    inside = np.s_[TOP : TOP + int(plot.size[1]), LEFT : LEFT + int(plot.size[0])]  # the frame
    c[inside] = cv2.addWeighted(shade[inside], 0.45, c[inside], 0.55, 0)
    for p in report.positions:
        cv2.circle(c, plot.px(p.x, p.y), 2, (90, 90, 90), -1, cv2.LINE_AA)
    for hole in report.holes:
        r = max(3, round(hole.distance * plot.scale[0]))
        cv2.circle(c, plot.px(hole.x, hole.y), r, HOLE, 2, cv2.LINE_AA)
    for s in report.suggestions:
        at = plot.px(s.x, s.y)
        cv2.circle(c, at, 11, TEXT, -1, cv2.LINE_AA)
        label = str(s.rank)
        w, h = cv2.getTextSize(label, FONT, SMALL, 1)[0]
        cv2.putText(c, label, (at[0] - w // 2, at[1] + h // 2), FONT, SMALL, BACKGROUND, 1,
                    cv2.LINE_AA)  # fmt: skip
    far = f"{report.hole_distance:.1f}"
    plot.caption(0, f"areas of {report.area_size:.1f} by held-out MAE (as the plan); blue: "
                 f"holes, > {far} from any position")  # fmt: skip
    plot.caption(1, "black discs: where to add reference photos, most needed first")
    return c


def reliability_figure(report: MapReport) -> np.ndarray:
    plot = Plot((0.0, 0.0), (1.0, 1.0), WIDTH - LEFT - RIGHT - 200, LEGEND_ROWS * HEADER)
    c = plot.canvas
    cv2.line(c, plot.px(0, 0), plot.px(1, 1), FRAME, 1, cv2.LINE_AA)
    most = max((b.count for b in report.reliability), default=1)
    points = [plot.px(b.confidence, b.hit_rate) for b in report.reliability]
    for a, b in zip(points, points[1:], strict=False):
        cv2.line(c, a, b, HOLE, 2, cv2.LINE_AA)
    for at, rb in zip(points, report.reliability, strict=True):
        cv2.circle(c, at, 3 + round(9 * (rb.count / most) ** 0.5), HOLE, -1, cv2.LINE_AA)
    plot.caption(0, f"x: calibrated confidence; y: share within {HIT_RADIUS:g} (disc area: "
                 f"views in the bin); grey: perfect calibration")  # fmt: skip
    plot.caption(1, f"expected calibration error {report.ece:.3f} (in-sample: the fit used "
                 "these views)")  # fmt: skip
    return c


def worst_figure(report: MapReport, photo_of: Callable[[str], Path | None]) -> np.ndarray:
    """One row per worst view: the held-out photo (left) and the reference it matched
    instead (right); a photo that cannot be found leaves its panel blank."""
    height = max(len(report.worst), 1) * (HEADER + PANEL[1])
    c = np.full((height, WIDTH, 3), BACKGROUND, np.uint8)
    if not report.worst:
        text(c, 0, "no held-out views")
    for i, w in enumerate(report.worst):
        top = i * (HEADER + PANEL[1]) + HEADER
        for x0, rid in ((0, w.reference_id), (PANEL[0] + GAP, w.matched)):
            path = photo_of(rid) if rid else None
            if path is None:
                continue
            panel = fit(read_image(path))
            c[top : top + panel.shape[0], x0 : x0 + panel.shape[1]] = panel
        verdict = "localised" if w.localised else "not localised"
        text(c, top - HEADER, f"{i + 1}. {w.reference_id} at ({w.x:.1f}, {w.y:.1f}): error "
             f"{w.error:.1f}, {verdict}; answered ({w.answer_x:.1f}, {w.answer_y:.1f}), matched "
             f"{w.matched or '-'}")  # fmt: skip
    return c


def report_figures(report: MapReport, photo_of: Callable[[str], Path | None]) -> dict[str, bytes]:
    """Every figure of the report as PNG bytes, by name."""
    images = {
        "plan": plan_figure(report),
        "coverage": coverage_figure(report),
        "reliability": reliability_figure(report),
        "worst": worst_figure(report, photo_of),
    }
    out = {}
    for name, image in images.items():
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise ValueError(f"could not encode the {name} figure")
        out[name] = png.tobytes()
    return out
