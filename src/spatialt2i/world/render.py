"""Rasterise scenes with PIL: flat colours on white, objects painted in depth order.

Every shape fills its square box (touches all four sides), so an unoccluded object's pixel
bounding box is its box.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from ..errors import SpecError
from .scene import Obj, Scene
from .vocab import BACKGROUND, COLOURS

MIN_SIZE, MAX_SIZE = 32, 512


def _star() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.4
        a = math.radians(-90 + 36 * k)
        pts.append((r * math.cos(a), r * math.sin(a)))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [(-1 + 2 * (x - min(xs)) / (max(xs) - min(xs)), -1 + 2 * (y - min(ys)) / (max(ys) - min(ys)))
            for x, y in pts]


_A = 0.3  # half arm width of the cross, in unit-box coordinates
POLYGONS: dict[str, list[tuple[float, float]] | None] = {
    "circle": None,
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 1), (-1, 1)],
    "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
    "star": _star(),
    "cross": [(-_A, -1), (_A, -1), (_A, -_A), (1, -_A), (1, _A), (_A, _A), (_A, 1), (-_A, 1),
              (-_A, _A), (-1, _A), (-1, -_A), (-_A, -_A)],
}


def check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise SpecError(f"image size {size!r}: must be an integer from {MIN_SIZE} to {MAX_SIZE}")
    return int(size)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    """Paint ``shape`` filling ``box`` = (x0, y0, x1, y1), inclusive pixel coordinates."""
    x0, y0, x1, y1 = box
    poly = POLYGONS[shape]
    if poly is None:
        draw.ellipse(box, fill=fill)
        return
    sx, sy = (x1 - x0) / 2, (y1 - y0) / 2
    draw.polygon([(x0 + (u + 1) * sx, y0 + (v + 1) * sy) for u, v in poly], fill=fill)


def pixel_box(o: Obj, size: int) -> tuple[int, int, int, int]:
    """The object's box snapped to whole pixels (so an object is drawn exactly as its template)."""
    side = max(3, round(2 * o.half * size))
    x0, y0 = round(o.x * size - side / 2), round(o.y * size - side / 2)
    return (x0, y0, x0 + side - 1, y0 + side - 1)


def _order(scene: Scene) -> list[int]:
    return sorted(range(len(scene.objects)), key=lambda i: (scene.objects[i].depth, i))


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The RGB image of a placed scene."""
    size = check_size(size)
    if not scene.placed:
        raise SpecError("render: every object needs a position (x, y); solve the layout first")
    img = Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(img)
    for i in _order(scene):
        o = scene.objects[i]
        draw_shape(d, o.shape, pixel_box(o, size), COLOURS[o.colour])
    return img


def id_map(scene: Scene, size: int = 64) -> np.ndarray:
    """(size, size) uint8 map: 0 background, i+1 where object i is visible."""
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    for i in _order(scene):
        o = scene.objects[i]
        draw_shape(d, o.shape, pixel_box(o, size), i + 1)
    return np.asarray(img)


@lru_cache(maxsize=16384)
def full_mask(o: Obj, size: int = 64) -> np.ndarray:
    """Boolean mask of one object's whole shape, ignoring anything drawn over it (read-only)."""
    img = Image.new("1", (size, size), 0)
    draw_shape(ImageDraw.Draw(img), o.shape, pixel_box(o, size), 1)
    m = np.asarray(img, dtype=bool)
    m.setflags(write=False)
    return m


@lru_cache(maxsize=8192)
def template(shape: str, w: int, h: int) -> np.ndarray:
    """Boolean (h, w) mask of ``shape`` filling a w x h pixel box (the detector's templates)."""
    img = Image.new("1", (w, h), 0)
    draw_shape(ImageDraw.Draw(img), shape, (0, 0, w - 1, h - 1), 1)
    m = np.asarray(img, dtype=bool)
    m.setflags(write=False)
    return m
