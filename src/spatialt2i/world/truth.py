"""Ground truth of a placed scene: does each relation hold, judged on its exact geometry.

Positions come from the scene graph (no detection); depth relations use the rasterised full shapes
(how much two shapes overlap) and the draw order. ``m`` is the strictness of
``world.geometry`` (1 = with the solver's safety margin, 0 = the public rule, -1 = loosened: a
relation false at ``m = -1`` is false beyond doubt).
"""

from __future__ import annotations

import numpy as np

from . import geometry as G
from .render import full_mask
from .scene import Relation, Scene

LAYOUT_RES = 64  # resolution at which overlaps are measured


def boxes(scene: Scene) -> np.ndarray:
    """(N, 3) array of (x, y, side) in canvas fractions."""
    return np.array([(o.x, o.y, 2 * o.half) for o in scene.objects], dtype=np.float64)


def overlap(scene: Scene, i: int, j: int, res: int = LAYOUT_RES) -> float:
    """Overlap area of the two full shapes / the smaller shape's area."""
    a, b = full_mask(scene.objects[i], res), full_mask(scene.objects[j], res)
    small = min(a.sum(), b.sum())
    return float((a & b).sum() / small) if small else 0.0


def on_top(scene: Scene, i: int, j: int) -> bool:
    oi, oj = scene.objects[i], scene.objects[j]
    return (oi.depth, i) > (oj.depth, j)


def relation_holds(scene: Scene, rel: Relation, m: float = 0.0, bx: np.ndarray | None = None) -> bool:
    if rel.kind in ("in_front_of", "behind"):
        i, j = rel.objects
        return G.depth_relation(rel.kind, overlap(scene, i, j), on_top(scene, i, j), m)
    bx = boxes(scene) if bx is None else bx
    return bool(G.box_relation(rel.kind, bx, rel.objects, rel.region, m))


def all_hold(scene: Scene, relations=None, m: float = 0.0) -> bool:
    bx = boxes(scene)
    rels = scene.relations if relations is None else relations
    return all(relation_holds(scene, r, m, bx) for r in rels)
