"""The oracle: does an image satisfy a scene spec? Relation by relation, from pixels only.

It detects each named object (``world.detect``) and applies the public relation rules of
``world.geometry`` (``m = 0``) to the detected boxes. Occlusion: the two detected shapes' templates
overlap, and the overlap shows the front object's colour. A relation with an absent object is false.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

from . import geometry as G
from .detect import Detection, best_match, components_of, label_pixels
from .render import template
from .scene import Relation, Scene
from .vocab import COLOURS

PALETTE_INDEX = {c: i for i, c in enumerate(COLOURS)}


@dataclass
class Verdict:
    relations: list[bool]                 # one per scene relation
    present: list[bool]                   # one per scene object
    detections: list[Detection | None] = field(repr=False, default_factory=list)

    @property
    def score(self) -> float:
        """Share of relations that hold (1.0 for a scene with no relations and all objects present)."""
        if not self.relations:
            return float(all(self.present))
        return float(np.mean(self.relations))

    @property
    def all_correct(self) -> bool:
        return all(self.relations) and all(self.present)

    @property
    def presence(self) -> float:
        return float(np.mean(self.present)) if self.present else 1.0


def _template_mask(det: Detection, H: int, W: int) -> np.ndarray:
    x0, y0, x1, y1 = det.box
    full = np.zeros((H, W), bool)
    t = template(det.shape, x1 - x0 + 1, y1 - y0 + 1)
    ys, xs = slice(max(y0, 0), min(y1 + 1, H)), slice(max(x0, 0), min(x1 + 1, W))
    full[ys, xs] = t[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
    return full


def _depth(kind: str, a: Detection, b: Detection, labels: np.ndarray) -> bool:
    H, W = labels.shape
    ta, tb = _template_mask(a, H, W), _template_mask(b, H, W)
    inter = ta & tb
    small = min(ta.sum(), tb.sum())
    frac = inter.sum() / small if small else 0.0
    na = int((labels[inter] == PALETTE_INDEX[a.colour]).sum())
    nb = int((labels[inter] == PALETTE_INDEX[b.colour]).sum())
    return G.depth_relation(kind, float(frac), na > nb, 0.0)


class _Reader:
    """Detects objects of a scene in one image lazily (each at most once)."""

    def __init__(self, scene: Scene, image: Image.Image | np.ndarray) -> None:
        self.scene = scene
        self.labels = label_pixels(image)
        self.size = max(self.labels.shape)
        self.dets: dict[int, Detection | None] = {}
        self.comps: dict[str, tuple] = {}  # colour -> components (shared by objects of one colour)

    def label(self, objs) -> None:
        """Find the components of the colours of objects ``objs`` not done yet (in one pass)."""
        todo = [self.scene.objects[i].colour for i in objs if self.scene.objects[i].colour not in self.comps]
        if todo:
            self.comps.update(components_of(self.labels, todo))

    def det(self, i: int) -> Detection | None:
        if i not in self.dets:
            o = self.scene.objects[i]
            self.label([i])
            self.dets[i] = best_match(*self.comps[o.colour], o.colour, o.shape, self.labels.shape)
        return self.dets[i]

    def holds(self, r: Relation) -> bool:
        self.label(r.objects)
        dets = [self.det(i) for i in r.objects]
        if any(d is None for d in dets):
            return False
        if r.kind in ("in_front_of", "behind"):
            return _depth(r.kind, dets[0], dets[1], self.labels)
        geo = [d.geometry(self.size) for d in dets]
        return bool(G.box_relation(r.kind, geo, tuple(range(len(geo))), r.region, 0.0))


def judge(scene: Scene, image: Image.Image | np.ndarray) -> Verdict:
    """Check every relation and object of ``scene`` (positions in it are ignored) against ``image``."""
    rd = _Reader(scene, image)
    rd.label(range(len(scene.objects)))  # every object is looked for
    out = [rd.holds(r) for r in scene.relations]
    dets = [rd.det(i) for i in range(len(scene.objects))]
    return Verdict(out, [d is not None for d in dets], dets)


def violates(scene: Scene, image: Image.Image | np.ndarray, first: Sequence[int] = ()) -> bool:
    """Whether ``image`` breaks at least one relation of ``scene`` (or misses an object).

    Same rules as :func:`judge`, but stops at the first broken relation; ``first`` lists relation
    indices to check before the others (e.g. the ones a perturbation changed).
    """
    rd = _Reader(scene, image)
    n = len(scene.relations)
    order = [i for i in first if 0 <= i < n] + [i for i in range(n) if i not in set(first)]
    if any(not rd.holds(scene.relations[i]) for i in order):
        return True
    return any(rd.det(i) is None for i in range(len(scene.objects)))
