"""World pretraining scenes of the tiny VLM backbone: a pool of solved layouts and the scenes drawn from it.

:class:`LayoutPool` keeps solved layouts (refreshed a few per step) and draws scenes from them, varied by
flips, transposes and new names; full-world draws can come from the layouts where some object is in front
of another, so depth can be asked about. Wording the scenes into samples: ``reward/pretrain_data.py``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UnsatisfiableSceneError
from ..world.sample import random_scene, true_relations
from ..world.scene import Obj, Relation, Scene
from ..world.vocab import COLOURS, SHAPES

AXIS = ("left_of", "right_of", "above", "below")
GROUPS = {"axis": AXIS, "diagonal": ("above_left", "above_right", "below_left", "below_right"),
          "placement": ("at",), "depth": ("in_front_of", "behind"), "size": ("bigger", "smaller"),
          "between": ("between",)}
GROUP_OF = {k: g for g, ks in GROUPS.items() for k in ks}


def _visible(scene: Scene, rel: Relation) -> bool:
    """False for in front of / behind between two objects of one colour: the pixels cannot tell."""
    if GROUP_OF[rel.kind] != "depth":
        return True
    a, b = rel.objects
    return scene.objects[a].colour != scene.objects[b].colour


def _has_depth(scene: Scene) -> bool:
    """Some object is visibly in front of another (with the layout margin)."""
    return any(GROUP_OF[r.kind] == "depth" and _visible(scene, r) for r in true_relations(scene, 1.0))


def _relabel(rng: np.random.Generator, objs: Sequence[Obj]) -> list[Obj]:
    names = [(c, s) for c in COLOURS for s in SHAPES]
    idx = rng.choice(len(names), size=len(objs), replace=False)
    return [Obj(names[k][1], names[k][0], o.size, o.x, o.y, o.depth) for o, k in zip(objs, idx)]


def _recolour(rng: np.random.Generator, objs: Sequence[Obj]) -> list[Obj]:
    """New colours, the same shapes (so the same overlaps); names stay unique."""
    while True:
        cols = rng.choice(list(COLOURS), size=len(objs))
        if len({(c, o.shape) for c, o in zip(cols, objs)}) == len(objs):
            return [Obj(o.shape, str(c), o.size, o.x, o.y, o.depth) for o, c in zip(objs, cols)]


def _transform(rng: np.random.Generator, objs: Sequence[Obj]) -> list[Obj]:
    g = int(rng.integers(8))
    out = []
    for o in objs:
        x, y = o.x, o.y
        if g & 1:
            x = 1 - x
        if g & 2:
            y = 1 - y
        if g & 4:
            x, y = y, x
        out.append(o.at(x, y))
    return out


class LayoutPool:
    """Solved layouts and the scenes drawn from them, on the caller's ``rng`` (one random stream with the
    wording's: the sampler passes its own Generator)."""

    def __init__(self, rng: np.random.Generator, size: int = 1500, refresh: int = 2, p_overlap: float = 0.0) -> None:
        self.rng = rng
        self.size, self.refresh = size, refresh
        self.pool: list[tuple[Obj, ...]] = []
        self.deep: set[int] = set()  # pool indices of layouts where some object is in front of another
        self.p_overlap = p_overlap   # share of full-world scenes drawn from the layouts in ``deep``

    def _layout(self) -> tuple[Obj, ...]:
        while True:
            try:
                return random_scene(self.rng).objects
            except UnsatisfiableSceneError:
                continue

    def _put(self, k: int, lay: tuple[Obj, ...]) -> None:
        if k == len(self.pool):
            self.pool.append(lay)
        else:
            self.pool[k] = lay
        if _has_depth(Scene(lay)):
            self.deep.add(k)
        else:
            self.deep.discard(k)

    def load(self, pool: Sequence[tuple[Obj, ...]]) -> None:
        """Replace the layouts (a resumed run's), re-indexing the overlap ones."""
        self.pool, self.deep = [], set()
        for lay in pool:
            self._put(len(self.pool), lay)

    def fill(self, n: int | None = None) -> None:
        """New layouts until the pool holds ``n`` (default: its size)."""
        while len(self.pool) < (n or self.size):
            self._put(len(self.pool), self._layout())

    def step(self) -> None:
        """``refresh`` new layouts, each replacing a random one once the pool is full."""
        for _ in range(self.refresh):
            lay = self._layout()
            full = len(self.pool) >= self.size
            self._put(int(self.rng.integers(len(self.pool))) if full else len(self.pool), lay)

    def scene(self, easy: bool, min_k: int = 2) -> Scene:
        """A scene from a random layout: easy ones keep ``min_k``..3 objects; new names, flipped/transposed."""
        rng = self.rng
        if not easy and self.deep and self.p_overlap and rng.random() < self.p_overlap:
            # a layout with overlapping objects, kept whole and new colours only: in front of / behind can
            # be asked about (a flip of an asymmetric shape can undo the overlap, one colour on both
            # objects hides it: then other colours, and after four tries the layout as drawn)
            deep = sorted(self.deep)
            objs = list(self.pool[deep[int(rng.integers(len(deep)))]])
            for t in range(8):
                scene = Scene(tuple(_recolour(rng, _transform(rng, objs) if t < 4 else objs)))
                if _has_depth(scene):
                    break
            return scene
        objs = list(self.pool[int(rng.integers(len(self.pool)))])
        if easy:
            k = int(rng.integers(min_k, 4))
            keep = sorted(rng.choice(len(objs), size=min(k, len(objs)), replace=False))
            objs = [objs[i] for i in keep]
        elif rng.random() < 0.25 and len(objs) > 2:
            k = int(rng.integers(2, len(objs) + 1))
            keep = sorted(rng.choice(len(objs), size=k, replace=False))
            objs = [objs[i] for i in keep]
        objs = _relabel(rng, _transform(rng, objs))
        return Scene(tuple(objs))
