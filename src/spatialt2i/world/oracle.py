"""The oracle: does an image satisfy a scene spec? Relation by relation, from pixels only.

It detects each named object (``world.detect``) and applies the public relation rules of
``world.geometry`` (``m = 0``) to the detected boxes. Occlusion: the two detected shapes' templates
overlap, and the overlap shows the front object's colour. A relation with an absent object is false.

:func:`relation_margins` grades the same verdicts: per relation, the largest rule margin ``m`` (the
geometry's units: the layout solver draws with ``m = 1``) at which it still holds, so a relation that
barely fails scores above one that is far off (a denser reward for RL; see ``soft_scores``).
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
    margins: list[float | None] | None = None   # with judge(..., margins=True): see relation_margins

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


MARGIN_LIMIT = 16.0   # wide enough for the directional rules: a wrong-way offset is about -12


def _margin(holds, lo: float = -MARGIN_LIMIT, hi: float = MARGIN_LIMIT, iters: int = 14) -> float:
    """sup{m in [lo, hi]: holds(m)} by bisection (the rules only get stricter as m grows); ``lo`` when
    it fails everywhere, ``hi`` when it holds everywhere."""
    if holds(hi):
        return hi
    if not holds(lo):
        return lo
    at_zero = holds(0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return max(lo, 0.0) if at_zero else min(lo, -1e-6)  # the sign agrees with the m = 0 rule


def _margins(rd: "_Reader", verdicts: Sequence[bool]) -> list[float | None]:
    out: list[float | None] = []
    for r, ok in zip(rd.scene.relations, verdicts):
        dets = [rd.det(i) for i in r.objects]
        if any(d is None for d in dets):
            out.append(None)
        elif r.kind in ("in_front_of", "behind"):
            out.append(1.0 if ok else -1.0)
        else:
            geo = [d.geometry(rd.size) for d in dets]
            idx = tuple(range(len(geo)))
            out.append(_margin(lambda m: bool(G.box_relation(r.kind, geo, idx, r.region, m))))
    return out


def relation_margins(scene: Scene, image: Image.Image | np.ndarray) -> list[float | None]:
    """Per relation of ``scene``: its signed margin in ``image`` (see the module docstring), clipped to
    +-``MARGIN_LIMIT``; ``None`` when one of its objects is not drawn. In front of / behind have no
    graded rule: +1 when the relation holds, -1 when not. ``margin >= 0`` exactly when :func:`judge`
    says the relation holds."""
    return judge(scene, image, margins=True).margins


def soft_scores(margins: Sequence[float | None], tau: float) -> list[float]:
    """sigmoid(margin / tau) per relation, 0 for a relation with a missing object."""
    return [0.0 if m is None else float(1.0 / (1.0 + np.exp(-m / tau))) for m in margins]


def judge(scene: Scene, image: Image.Image | np.ndarray, margins: bool = False) -> Verdict:
    """Check every relation and object of ``scene`` (positions in it are ignored) against ``image``;
    with ``margins``, also grade each relation (:func:`relation_margins`) from the same detections."""
    rd = _Reader(scene, image)
    rd.label(range(len(scene.objects)))  # every object is looked for
    out = [rd.holds(r) for r in scene.relations]
    dets = [rd.det(i) for i in range(len(scene.objects))]
    return Verdict(out, [d is not None for d in dets], dets, _margins(rd, out) if margins else None)


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
