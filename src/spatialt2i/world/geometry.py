"""The relation rules of the world, as pure functions on object boxes.

Every object is judged by its (amodal) square box: centre ``(x, y)`` and side ``s``, all as
fractions of the canvas side, y pointing down. Rules (``m`` = 0 gives the public rule the oracle
uses; the layout solver asks for ``m`` = 1, a safety margin so that pixel rounding, noise and blur
cannot flip a stated relation):

* left/right/above/below -- GenEval's box-centre rule: offset = centre_a - centre_b; each axis of
  the offset is shrunk by 0.1 x (dim_a + dim_b); divided by |offset|, the horizontal part must be
  < -0.5 for "left of", > 0.5 for "right of" (vertical likewise for above/below). Stricter
  by ``0.12 m``.
* the four diagonals ("above and to the left of", ...) -- both axis rules hold.
* between(a, b, c) -- a's centre projects onto segment b->c at t in [0.2, 0.8] and lies within
  0.2 |bc| of the line (tightened by 0.08 m on each).
* at(a, region) -- the canvas is cut into thirds; a's centre lies in the region's cell (at least
  0.03 m away from the cell's inner borders).
* bigger/smaller -- side ratio >= 1.15 (+ 0.1 m).
* in front of / behind -- the two shapes overlap on at least 4 % (+ 8 % m) of the smaller one's
  area, and the overlap shows the front object's colour (drawn as occlusion).
"""

from __future__ import annotations

import numpy as np

from .vocab import REGIONS

POSITION_THRESHOLD = 0.1  # GenEval's
DIAGONALS = ("above_left", "above_right", "below_left", "below_right")


def _axis_parts(ax, ay, sa, bx, by, sb):
    if all(isinstance(v, float) for v in (ax, ay, sa, bx, by, sb)):  # np.float64 is a float too
        return _axis_parts_scalar(ax, ay, sa, bx, by, sb)
    ox, oy = ax - bx, ay - by
    norm = np.hypot(ox, oy)
    rx = np.maximum(np.abs(ox) - POSITION_THRESHOLD * (sa + sb), 0.0) * np.sign(ox)
    ry = np.maximum(np.abs(oy) - POSITION_THRESHOLD * (sa + sb), 0.0) * np.sign(oy)
    tiny = (np.abs(rx) < 1e-4) & (np.abs(ry) < 1e-4)
    safe = np.where(norm > 0, norm, 1.0)
    dx = np.where(tiny, 0.0, rx / safe)
    dy = np.where(tiny, 0.0, ry / safe)
    return dx, dy


def _axis_parts_scalar(ax, ay, sa, bx, by, sb):
    """``_axis_parts`` of one pair of boxes with float arithmetic: the same IEEE operations (so the
    same results), without numpy's per-call overhead (the oracle and the checks judge one pair)."""
    ox, oy = ax - bx, ay - by
    norm = float(np.hypot(ox, oy))
    shrink = POSITION_THRESHOLD * (sa + sb)
    rx = max(abs(ox) - shrink, 0.0) * _sign(ox)
    ry = max(abs(oy) - shrink, 0.0) * _sign(oy)
    if abs(rx) < 1e-4 and abs(ry) < 1e-4:
        return 0.0, 0.0
    safe = norm if norm > 0 else 1.0
    return rx / safe, ry / safe


def _sign(v: float) -> float:
    return 1.0 if v > 0 else -1.0 if v < 0 else 0.0


# each direction's sign along x and y (0: that axis plays no part)
_SIGNS = {"left_of": (-1, 0), "right_of": (1, 0), "above": (0, -1), "below": (0, 1),
          "above_left": (-1, -1), "above_right": (1, -1), "below_left": (-1, 1), "below_right": (1, 1)}


def directional(kind: str, a, b, m: float = 0.0):
    """Binary position relation between boxes ``a`` and ``b`` = (x, y, s) arrays (broadcasting)."""
    return _direction(kind, _axis_parts(a[0], a[1], a[2], b[0], b[1], b[2]), m)


def directions(kinds, a, b, m: float = 0.0) -> list:
    """``directional`` of each of ``kinds`` between the same boxes (their offset is split once)."""
    parts = _axis_parts(a[0], a[1], a[2], b[0], b[1], b[2])
    return [_direction(kind, parts, m) for kind in kinds]


def _direction(kind: str, parts, m: float):
    dx, dy = parts
    sx, sy = _SIGNS[kind]
    t = 0.5 + (0.05 if kind in DIAGONALS else 0.12) * m
    x = (dx < -t if sx < 0 else dx > t) if sx else None
    y = (dy < -t if sy < 0 else dy > t) if sy else None
    return x if y is None else y if x is None else y & x


def between(a, b, c, m: float = 0.0):
    vx, vy = c[0] - b[0], c[1] - b[1]
    L2 = vx * vx + vy * vy
    safe = np.where(L2 > 0, L2, 1.0)
    px, py = a[0] - b[0], a[1] - b[1]
    t = (px * vx + py * vy) / safe
    perp = np.abs(px * vy - py * vx) / np.sqrt(safe)
    lo, hi = 0.2 + 0.08 * m, 0.8 - 0.08 * m
    return (L2 > 0) & (t >= lo) & (t <= hi) & (perp <= (0.2 - 0.08 * m) * np.sqrt(safe))


def region_of(x, y, m: float = 0.0):
    """Cell (col, row) of a centre, or -1 where it lies within ``0.03 m`` of an inner border."""
    d = 0.03 * m

    def cell(v):
        c = np.floor(np.asarray(v) * 3).clip(0, 2)
        near = (np.abs(v - 1 / 3) < d) | (np.abs(v - 2 / 3) < d)
        return np.where(near, -1, c)

    return cell(x), cell(y)


def at(a, region: str, m: float = 0.0):
    col, row = REGIONS[region]
    cx, cy = region_of(a[0], a[1], m)
    return (cx == col) & (cy == row)


def size_relation(kind: str, a, b, m: float = 0.0):
    r = 1.15 + 0.1 * m
    return a[2] >= r * b[2] if kind == "bigger" else b[2] >= r * a[2]


def depth_relation(kind: str, overlap_frac: float, a_on_top: bool, m: float = 0.0) -> bool:
    """``overlap_frac``: overlap area / smaller shape's area; ``a_on_top``: overlap shows a's colour."""
    if overlap_frac < 0.04 + 0.08 * m:
        return False
    return a_on_top if kind == "in_front_of" else not a_on_top


def box_relation(kind: str, boxes, objs: tuple[int, ...], region: str | None = None, m: float = 0.0):
    """Any non-depth relation over ``boxes`` (an (N, 3) array, or a list of (x, y, s) array triples)."""
    g = [boxes[i] for i in objs]
    if kind == "at":
        return at(g[0], region, m)
    if kind == "between":
        return between(g[0], g[1], g[2], m)
    if kind in ("bigger", "smaller"):
        return size_relation(kind, g[0], g[1], m)
    return directional(kind, g[0], g[1], m)
