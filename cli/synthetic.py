"""A synthetic localisation data set: a small textured 3D world rendered by a ray caster.

Used by the demo and by tests wherever the Getty photos (not redistributable) are absent. The
world is a floor plan (a rectangular room plus a few box-shaped obstacles) whose vertical faces
each carry their own procedural texture, a textured floor and a plain sky. Views are rendered
Wolfenstein-style: one ray per image column finds the wall faces it crosses, and each pixel of the
column takes the nearest face whose height range it sees, else the floor (sampled at the ground
point, so with true perspective) or the sky. The scene therefore has real 3D geometry and two
views of it obey epipolar geometry, which is what the verification stage checks.

Conventions: plan coordinates (x, y) in world units, ``yaw_deg`` 0 looks along +x and 90 along +y
(counter-clockwise seen from above); images are BGR uint8 like the rest of ``core``.
"""

from __future__ import annotations

import csv
import math
import string
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

CAMERA_HEIGHT = 1.6
FOV_DEG = 74.0  # horizontal field of view of every rendered view; square pixels
TEXELS_PER_UNIT = 64  # wall texture resolution at mip level 0
FLOOR_TEXELS_PER_UNIT = 32
MIN_CLEARANCE = 2.5  # closest a camera may stand to a wall face: nearer, textures blow up
JPEG_QUALITY = 95
_MAX_LAYERS = 6  # faces composited per column, nearest first
_SKY_TOP = np.array([235, 200, 150], np.float32)  # BGR: light blue fading to pale at the horizon
_SKY_HORIZON = np.array([245, 235, 220], np.float32)


@dataclass(frozen=True)
class Box:
    """An axis-aligned obstacle, ``x0 < x1``, ``y0 < y1``, standing ``height`` units tall."""

    x0: float
    y0: float
    x1: float
    y1: float
    height: float

    def distance(self, x: float, y: float) -> float:
        """Plan distance from (x, y) to the box; 0 inside it."""
        dx = max(self.x0 - x, 0.0, x - self.x1)
        dy = max(self.y0 - y, 0.0, y - self.y1)
        return math.hypot(dx, dy)


@dataclass
class World:
    """Geometry plus textures; build it with :func:`make_world`.

    Faces are plan segments ``starts[i] -> ends[i]`` whose visible side is the one ``normals[i]``
    points to. Their textures sit side by side in one strip (the atlas), face i occupying texel
    columns from ``atlas_offsets[i]``, z = 0 on the bottom row. ``atlas``/``floor`` are mip
    pyramids (level 0 first) of float32 BGR images.
    """

    width: float
    depth: float
    wall_height: float
    boxes: list[Box]
    starts: np.ndarray  # (K, 2)
    ends: np.ndarray  # (K, 2)
    normals: np.ndarray  # (K, 2)
    heights: np.ndarray  # (K,)
    atlas_offsets: np.ndarray  # (K,) texel column of each face's u = 0
    atlas: list[np.ndarray] = field(repr=False)
    floor: list[np.ndarray] = field(repr=False)

    def clearance(self, x: float, y: float) -> float:
        """Plan distance from (x, y) to the nearest wall face; <= 0 outside the room or in a box."""
        room = min(x, self.width - x, y, self.depth - y)
        boxes = min((b.distance(x, y) for b in self.boxes), default=math.inf)
        return min(room, boxes)

    def is_free(self, x: float, y: float, clearance: float = MIN_CLEARANCE) -> bool:
        """Whether a camera may stand at (x, y): inside the room, out of boxes, off the walls."""
        return self.clearance(x, y) >= clearance


@dataclass(frozen=True)
class SyntheticView:
    """One rendered image: its id (the file stem), where it was taken and which way it looks."""

    id: str
    x: float
    y: float
    yaw_deg: float


@dataclass(frozen=True)
class SyntheticDataset:
    """What :func:`generate_dataset` wrote; the CSVs are ``id,x,y`` like the Getty set."""

    root: Path
    images_dir: Path
    references_csv: Path
    queries_csv: Path
    references: list[SyntheticView]
    queries: list[SyntheticView]


# --------------------------------------------------------------------------------------------
# Textures


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [-1, 1] with features about ``cell`` texels wide."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _random_colour(rng: np.random.Generator, palette: np.ndarray) -> tuple[float, float, float]:
    """A colour near one of the face's palette colours, or (sometimes) anything at all."""
    if rng.random() < 0.25:
        c = rng.uniform(0, 255, 3)
    else:
        c = palette[rng.integers(len(palette))] + rng.normal(0, 30, 3)
    r, g, b = (float(v) for v in np.clip(c, 0, 255))
    return r, g, b


def _random_text(rng: np.random.Generator) -> str:
    chars = string.ascii_uppercase + string.digits
    return "".join(rng.choice(list(chars), size=int(rng.integers(2, 7))))


def _draw_poster(img: np.ndarray, rng: np.random.Generator, palette: np.ndarray) -> None:
    """A framed rectangle holding text, a checker or small shapes: dense stable corners."""
    h, w = img.shape[:2]
    pw, ph = int(rng.integers(40, 160)), int(rng.integers(40, min(150, h - 10)))
    x0, y0 = int(rng.integers(0, max(1, w - pw))), int(rng.integers(5, max(6, h - ph - 5)))
    bg = _random_colour(rng, palette)
    cv2.rectangle(img, (x0, y0), (x0 + pw, y0 + ph), bg, -1)
    cv2.rectangle(img, (x0, y0), (x0 + pw, y0 + ph), _random_colour(rng, palette), 3)
    kind = rng.integers(3)
    region = (slice(y0 + 4, y0 + ph - 4), slice(x0 + 4, x0 + pw - 4))
    inner = np.ascontiguousarray(img[region])  # OpenCV draws on contiguous arrays only
    ih, iw = inner.shape[:2]
    if ih < 8 or iw < 8:
        return
    if kind == 0:  # lines of text
        for row in range(int(rng.integers(1, 4))):
            scale = float(rng.uniform(0.5, 1.2))
            org = (int(rng.integers(0, max(1, iw // 3))), int(12 + row * 28 * scale + 10))
            cv2.putText(
                inner, _random_text(rng), org, cv2.FONT_HERSHEY_SIMPLEX, scale,
                _random_colour(rng, palette), int(rng.integers(1, 4)), cv2.LINE_AA,
            )  # fmt: skip
    elif kind == 1:  # irregular checker
        cs = int(rng.integers(6, 16))
        c1, c2 = _random_colour(rng, palette), _random_colour(rng, palette)
        for yy in range(0, ih, cs):
            for xx in range(0, iw, cs):
                if rng.random() < 0.5:
                    cv2.rectangle(inner, (xx, yy), (xx + cs - 1, yy + cs - 1), c1, -1)
                elif rng.random() < 0.3:
                    cv2.rectangle(inner, (xx, yy), (xx + cs - 1, yy + cs - 1), c2, -1)
    else:  # small shapes
        for _ in range(int(rng.integers(4, 12))):
            c = (int(rng.integers(0, iw)), int(rng.integers(0, ih)))
            r = int(rng.integers(3, 14))
            if rng.random() < 0.5:
                cv2.circle(inner, c, r, _random_colour(rng, palette), -1, cv2.LINE_AA)
            else:
                pts = c + rng.integers(-r, r + 1, (3, 2))
                cv2.fillPoly(inner, [pts.astype(np.int32)], _random_colour(rng, palette))
    img[region] = inner


def _wall_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A distinctive face: noisy base, blocks, blobs, stripe bands and posters (BGR float32)."""
    palette = rng.uniform(20, 235, (4, 3))
    base = palette[0].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    for cell, amp in ((160, 40), (40, 25), (8, 14)):
        img += (
            amp * _noise(rng, h, w, cell)[..., None] * rng.uniform(0.5, 1.0, 3).astype(np.float32)
        )
    img = np.clip(img, 0, 255).astype(np.uint8)  # OpenCV draws text on 8-bit images only
    area_units = (h * w) / TEXELS_PER_UNIT**2
    for _ in range(int(area_units * 0.8)):  # coloured blocks, some just outlined
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, 90)), y0 + int(rng.integers(10, 90))
        thick = -1 if rng.random() < 0.7 else int(rng.integers(2, 6))
        cv2.rectangle(img, (x0, y0), (x1, y1), _random_colour(rng, palette), thick)
    for _ in range(int(area_units * 0.8)):  # blobs
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(4, 30)), int(rng.integers(4, 30)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(img, c, axes, angle, 0, 360, _random_colour(rng, palette), -1, cv2.LINE_AA)
    for _ in range(max(1, int(area_units * 0.05))):  # stripe bands
        x0, bw = int(rng.integers(0, w)), int(rng.integers(40, 200))
        period, colour = int(rng.integers(6, 20)), _random_colour(rng, palette)
        vertical = rng.random() < 0.5
        for k in range(0, bw if vertical else h, period):
            if vertical:
                cv2.line(img, (x0 + k, 0), (x0 + k, h), colour, period // 3)
            else:
                cv2.line(img, (x0, k), (x0 + bw, k), colour, period // 3)
    for _ in range(max(1, int(area_units * 0.25))):
        _draw_poster(img, rng, palette)
    # A little blur so that level 0 is not sharper than the renderer can sample.
    return cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.8)


def _floor_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Irregular paving with stains and marks.

    No regular tiling: a repeated pattern seen in perspective matches itself between unrelated
    views and fools the epipolar check, which is exactly what the data set must not do.
    """
    img = np.empty((h, w, 3), np.float32)
    img[:] = (120, 125, 130)
    for cell, amp in ((200, 25), (40, 14), (6, 8)):
        img += (
            amp * _noise(rng, h, w, cell)[..., None] * rng.uniform(0.6, 1.0, 3).astype(np.float32)
        )
    img = np.clip(img, 0, 255).astype(np.uint8)  # OpenCV draws text on 8-bit images only
    palette = rng.uniform(30, 220, (5, 3))
    area_units = (h * w) / FLOOR_TEXELS_PER_UNIT**2
    for _ in range(int(area_units * 0.15)):  # slabs of random size and colour
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, 80)), y0 + int(rng.integers(10, 80))
        cv2.rectangle(img, (x0, y0), (x1, y1), _random_colour(rng, palette), -1)
    for _ in range(int(area_units * 0.3)):  # stains
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(3, 20)), int(rng.integers(3, 20)))
        cv2.ellipse(
            img, c, axes, float(rng.uniform(0, 180)), 0, 360, _random_colour(rng, palette), -1,
            cv2.LINE_AA,
        )  # fmt: skip
    return cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.8)


def _pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    out: list[np.ndarray] = [np.ascontiguousarray(img, np.float32)]
    for _ in range(levels - 1):
        if min(out[-1].shape[:2]) < 8:
            break
        out.append(cv2.pyrDown(out[-1]))
    return out


# --------------------------------------------------------------------------------------------
# World


def _place_boxes(rng: np.random.Generator, width: float, depth: float, count: int) -> list[Box]:
    """Boxes kept apart from each other and from the room walls, so there is floor to walk on."""
    boxes: list[Box] = []
    for _ in range(200 * count):
        if len(boxes) == count:
            break
        bw, bd = rng.uniform(2.0, 6.0), rng.uniform(2.0, 6.0)
        x0 = rng.uniform(6.0, width - 6.0 - bw)
        y0 = rng.uniform(6.0, depth - 6.0 - bd)
        cand = Box(x0, y0, x0 + bw, y0 + bd, float(rng.uniform(2.4, 4.0)))
        gap = 6.0  # room for a camera (2 x clearance) between two boxes
        if all(
            cand.x0 > b.x1 + gap
            or b.x0 > cand.x1 + gap
            or cand.y0 > b.y1 + gap
            or b.y0 > cand.y1 + gap
            for b in boxes
        ):
            boxes.append(cand)
    return boxes


def make_world(
    seed: int = 0, width: float = 60.0, depth: float = 40.0, num_boxes: int = 5
) -> World:
    """Build the room, its obstacles and every face's texture, deterministically from ``seed``."""
    rng = np.random.default_rng(seed)
    wall_height = 8.0
    boxes = _place_boxes(rng, width, depth, num_boxes)
    # Room faces look inward, box faces outward; each listed as (start, end, normal, height).
    faces: list[tuple[tuple[float, float], tuple[float, float], tuple[float, float], float]] = [
        ((0, 0), (width, 0), (0, 1), wall_height),
        ((width, 0), (width, depth), (-1, 0), wall_height),
        ((width, depth), (0, depth), (0, -1), wall_height),
        ((0, depth), (0, 0), (1, 0), wall_height),
    ]
    for b in boxes:
        faces += [
            ((b.x1, b.y0), (b.x0, b.y0), (0, -1), b.height),
            ((b.x1, b.y1), (b.x1, b.y0), (1, 0), b.height),
            ((b.x0, b.y1), (b.x1, b.y1), (0, 1), b.height),
            ((b.x0, b.y0), (b.x0, b.y1), (-1, 0), b.height),
        ]
    starts = np.array([f[0] for f in faces], np.float64)
    ends = np.array([f[1] for f in faces], np.float64)
    normals = np.array([f[2] for f in faces], np.float64)
    # Texture u must run left to right for a viewer facing the face (else text reads mirrored):
    # that is along (-n_y, n_x).
    flip = np.einsum("ij,ij->i", ends - starts, np.stack([-normals[:, 1], normals[:, 0]], 1)) < 0
    starts[flip], ends[flip] = ends[flip], starts[flip].copy()
    heights = np.array([f[3] for f in faces], np.float64)

    tex_h = int(wall_height * TEXELS_PER_UNIT)
    lengths = np.linalg.norm(ends - starts, axis=1)
    widths = np.ceil(lengths * TEXELS_PER_UNIT).astype(int) + 8  # a margin against bleeding
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]])
    atlas = np.empty((tex_h, int(widths.sum()), 3), np.float32)
    for i, (off, w) in enumerate(zip(offsets, widths, strict=True)):
        tex = _wall_texture(rng, tex_h, int(w))
        # Faces lit from a fixed side, so corners between faces stay visible.
        light = 0.8 + 0.2 * float(normals[i] @ np.array([0.6, 0.8]))
        atlas[:, off : off + w] = tex * light
    floor = _floor_texture(
        rng, int(depth * FLOOR_TEXELS_PER_UNIT), int(width * FLOOR_TEXELS_PER_UNIT)
    )
    return World(
        width=width,
        depth=depth,
        wall_height=wall_height,
        boxes=boxes,
        starts=starts,
        ends=ends,
        normals=normals,
        heights=heights,
        atlas_offsets=offsets.astype(np.float64),
        atlas=_pyramid(atlas, 6),
        floor=_pyramid(floor, 6),
    )


# --------------------------------------------------------------------------------------------
# Rendering


def _sample(
    pyramid: list[np.ndarray], u: np.ndarray, v: np.ndarray, level: np.ndarray
) -> np.ndarray:
    """Bilinear samples at level-0 texel coordinates (u right, v down), from each pixel's level."""
    out = np.empty((len(u), 3), np.float32)
    for lv in np.unique(level):
        sel = np.nonzero(level == lv)[0]
        img = pyramid[int(lv)]
        h, w = img.shape[:2]
        scale = 0.5 ** int(lv)
        # Texel centres sit at integer + 0.5.
        uu = np.clip(u[sel] * scale - 0.5, 0, w - 1.001)
        vv = np.clip(v[sel] * scale - 0.5, 0, h - 1.001)
        u0, v0 = uu.astype(np.int64), vv.astype(np.int64)
        fu, fv = (uu - u0)[:, None].astype(np.float32), (vv - v0)[:, None].astype(np.float32)
        top = img[v0, u0] * (1 - fu) + img[v0, u0 + 1] * fu
        bottom = img[v0 + 1, u0] * (1 - fu) + img[v0 + 1, u0 + 1] * fu
        out[sel] = top * (1 - fv) + bottom * fv
    return out


def _mip_level(texels_per_pixel: np.ndarray, levels: int) -> np.ndarray:
    return np.clip(np.round(np.log2(np.maximum(texels_per_pixel, 1e-6))), 0, levels - 1).astype(
        np.int64
    )


def _photometric_change(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild query-like changes: exposure, contrast, colour cast and sensor noise."""
    gain = rng.uniform(0.8, 1.2)
    cast = rng.uniform(0.93, 1.07, 3).astype(np.float32)
    offset = rng.uniform(-12, 12)
    out = (image - 128.0) * rng.uniform(0.85, 1.1) + 128.0
    out = out * gain * cast + offset
    out += rng.normal(0, 2.5, out.shape).astype(np.float32)
    return out


def _face_hits(
    world: World, p: np.ndarray, d: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the plan rays ``p + t d`` (``d``: (R, 2)) cross the faces that look at them:
    per ray, the nearest ``_MAX_LAYERS`` faces (R, L), their ray parameters t (inf: missed)
    and positions s along the face (0..1)."""
    # Ray/segment intersections, all rays against all faces: p + t d = a + s (b - a).
    a, e = world.starts, world.ends - world.starts  # (K, 2)
    ap = a - p
    denom = d[:, None, 0] * e[None, :, 1] - d[:, None, 1] * e[None, :, 0]  # cross(d, e)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (ap[None, :, 0] * e[None, :, 1] - ap[None, :, 1] * e[None, :, 0]) / denom
        s = (ap[None, :, 0] * d[:, None, 1] - ap[None, :, 1] * d[:, None, 0]) / denom
    facing = (d @ world.normals.T) < 0  # back faces are hidden by their box
    valid = facing & (t > 1e-6) & (s >= 0) & (s <= 1) & np.isfinite(t)
    t = np.where(valid, t, np.inf)
    layers = min(_MAX_LAYERS, t.shape[1])
    order = np.argsort(t, axis=1)[:, :layers]  # nearest faces first
    return order, np.take_along_axis(t, order, axis=1), np.take_along_axis(s, order, axis=1)


def surface_points(
    world: World,
    x: float,
    y: float,
    yaw_deg: float,
    pixels: np.ndarray,
    size: tuple[int, int] = (480, 360),
    fov_deg: float = FOV_DEG,
) -> np.ndarray:
    """The 3D points (world x, y, height z) that the camera of :func:`render_view` sees at
    ``pixels`` (N, 2; pixel centres at integers, as keypoints are): (N, 3), NaN for sky. The
    ground truth that geometry recovered from the images is checked against."""
    w, h = size
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    yaw = math.radians(yaw_deg)
    forward = np.array([math.cos(yaw), math.sin(yaw)])
    right = np.array([math.sin(yaw), -math.cos(yaw)])
    px = np.asarray(pixels, np.float64).reshape(-1, 2)
    x_cam = (px[:, 0] + 0.5 - w / 2) / f
    y_cam = (px[:, 1] + 0.5 - h / 2) / f
    d = forward[None, :] + x_cam[:, None] * right[None, :]
    order, t_l, _ = _face_hits(world, np.array([x, y]), d)
    with np.errstate(invalid="ignore"):  # a level ray (y_cam 0) times a missed face (inf)
        z = CAMERA_HEIGHT - y_cam[:, None] * t_l
    covered = (z >= 0) & (z <= world.heights[order]) & np.isfinite(t_l)
    rows = np.arange(len(px))
    first = covered.argmax(axis=1)
    with np.errstate(divide="ignore"):
        t = np.where(covered.any(axis=1), t_l[rows, first], CAMERA_HEIGHT / y_cam)
    t = np.where(covered.any(axis=1) | (y_cam > 0), t, np.nan)  # neither wall nor floor: sky
    xy = np.array([x, y]) + t[:, None] * d
    return np.column_stack([xy, CAMERA_HEIGHT - y_cam * t])


def render_view(
    world: World,
    x: float,
    y: float,
    yaw_deg: float,
    size: tuple[int, int] = (480, 360),
    fov_deg: float = FOV_DEG,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Render what a pinhole camera at (x, y), ``CAMERA_HEIGHT`` up, looking ``yaw_deg``, sees.

    ``size`` is (width, height), ``fov_deg`` the horizontal field of view, square pixels and the
    principal point at the centre. With ``rng``, a mild photometric change (exposure, colour,
    noise) is applied, as between a query photo and the references. Returns BGR uint8.
    """
    w, h = size
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    yaw = math.radians(yaw_deg)
    forward = np.array([math.cos(yaw), math.sin(yaw)])
    right = np.array([math.sin(yaw), -math.cos(yaw)])
    x_cam = (np.arange(w) + 0.5 - w / 2) / f  # (W,)
    y_cam = (np.arange(h) + 0.5 - h / 2) / f  # (H,) positive downwards
    # Unnormalised ray directions: the ray parameter at a hit is then the depth along the axis.
    d = forward[None, :] + x_cam[:, None] * right[None, :]  # (W, 2)

    order, t_l, s_l = _face_hits(world, np.array([x, y]), d)

    # Height seen by each pixel on each layer; the first layer covering it wins.
    z = CAMERA_HEIGHT - y_cam[:, None, None] * t_l[None, :, :]  # (H, W, L)
    covered = (z >= 0) & (z <= world.heights[order][None, :, :]) & np.isfinite(t_l)[None]
    first = covered.argmax(axis=2)
    is_wall = covered.any(axis=2)
    is_floor = ~is_wall & (y_cam[:, None] > 0)

    image = np.empty((h, w, 3), np.float32)
    rows, cols = np.nonzero(is_wall)
    layer = first[rows, cols]
    face = order[cols, layer]
    tw = t_l[cols, layer]
    lengths = np.linalg.norm(world.ends - world.starts, axis=1)
    u_tex = world.atlas_offsets[face] + s_l[cols, layer] * lengths[face] * TEXELS_PER_UNIT
    v_tex = (world.wall_height - z[rows, cols, layer]) * TEXELS_PER_UNIT
    level = _mip_level(tw * TEXELS_PER_UNIT / f, len(world.atlas))
    image[rows, cols] = _sample(world.atlas, u_tex, v_tex, level)

    rows, cols = np.nonzero(is_floor)
    tf = CAMERA_HEIGHT / y_cam[rows]
    gx = x + tf * d[cols, 0]
    gy = y + tf * d[cols, 1]
    # Footprint: geometric mean of the across (t / f) and along (t^2 / (h f)) pixel extents.
    footprint = np.sqrt((tf / f) * (tf * tf / (CAMERA_HEIGHT * f))) * FLOOR_TEXELS_PER_UNIT
    level = _mip_level(footprint, len(world.floor))
    fu = gx * FLOOR_TEXELS_PER_UNIT
    fv = (world.depth - gy) * FLOOR_TEXELS_PER_UNIT  # north up in the floor image
    image[rows, cols] = _sample(world.floor, fu, fv, level)

    rows, cols = np.nonzero(~is_wall & ~is_floor)
    mix = np.clip((h / 2 - rows) / (h / 2), 0, 1)[:, None].astype(np.float32)
    image[rows, cols] = _SKY_HORIZON * (1 - mix) + _SKY_TOP * mix

    if rng is not None:
        image = _photometric_change(image, rng)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Data set


def nearest_free(
    world: World, x: float, y: float, clearance: float = MIN_CLEARANCE
) -> tuple[float, float]:
    """The free position closest to (x, y), searched on rings of growing radius."""
    if world.is_free(x, y, clearance):
        return x, y
    for radius in np.arange(0.25, max(world.width, world.depth), 0.25):
        for ang in np.linspace(0, 2 * math.pi, 64, endpoint=False):
            cx, cy = x + radius * math.cos(ang), y + radius * math.sin(ang)
            if world.is_free(cx, cy, clearance):
                return float(cx), float(cy)
    raise ValueError("the world has no free floor")


def reference_positions(world: World, grid: tuple[int, int]) -> list[tuple[float, float]]:
    """A ``grid`` (columns, rows) of positions over the room, each moved off any obstacle."""
    nx, ny = grid
    xs = (np.arange(nx) + 0.5) * world.width / nx
    ys = (np.arange(ny) + 0.5) * world.depth / ny
    return [nearest_free(world, float(px), float(py)) for py in ys for px in xs]


def _write_csv(path: Path, views: list[SyntheticView]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "x", "y"])
        for v in views:
            writer.writerow([v.id, f"{v.x:.4f}", f"{v.y:.4f}"])


def generate_dataset(
    out_dir: Path,
    *,
    seed: int = 0,
    grid: tuple[int, int] = (6, 4),
    views_per_position: int = 4,
    num_queries: int = 8,
    size: tuple[int, int] = (480, 360),
    fov_deg: float = FOV_DEG,
    world: World | None = None,
) -> SyntheticDataset:
    """Render references on a grid and random queries, and write them in the Getty layout.

    Writes ``out_dir/images/<id>.jpg``, ``out_dir/references.csv`` and ``out_dir/queries.csv``
    (``id,x,y``). References are ``ref_<position>_<view>`` (view k looks at yaw k * 360 / views),
    queries ``query_<n>`` at random free positions inside the reference grid, random yaw, with a
    mild photometric change. Everything is deterministic for a ``seed`` (``world`` defaults to
    ``make_world(seed)``; pass one to reuse it).
    """
    out_dir = Path(out_dir)
    world = world if world is not None else make_world(seed)
    rng = np.random.default_rng([seed, 1])  # independent of the world's stream
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    refs: list[SyntheticView] = []
    for i, (px, py) in enumerate(reference_positions(world, grid)):
        for k in range(views_per_position):
            refs.append(SyntheticView(f"ref_{i:04d}_{k}", px, py, k * 360.0 / views_per_position))

    # Queries stay within the grid's span so that each has references around it.
    positions = np.array([(r.x, r.y) for r in refs])
    lo, hi = positions.min(axis=0), positions.max(axis=0)
    queries: list[SyntheticView] = []
    while len(queries) < num_queries:
        qx, qy = rng.uniform(lo, hi)
        if world.is_free(qx, qy):
            yaw = float(rng.uniform(0, 360))
            queries.append(SyntheticView(f"query_{len(queries):04d}", float(qx), float(qy), yaw))

    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    for v in refs:
        img = render_view(world, v.x, v.y, v.yaw_deg, size, fov_deg)
        cv2.imwrite(str(images_dir / f"{v.id}.jpg"), img, params)
    for v in queries:
        img = render_view(world, v.x, v.y, v.yaw_deg, size, fov_deg, rng=rng)
        cv2.imwrite(str(images_dir / f"{v.id}.jpg"), img, params)

    _write_csv(out_dir / "references.csv", refs)
    _write_csv(out_dir / "queries.csv", queries)
    return SyntheticDataset(
        root=out_dir,
        images_dir=images_dir,
        references_csv=out_dir / "references.csv",
        queries_csv=out_dir / "queries.csv",
        references=refs,
        queries=queries,
    )
