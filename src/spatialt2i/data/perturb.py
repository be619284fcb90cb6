"""Adversarial perturbations of a scene (the paper's four kinds) with the smallest re-layout.

* ``swap``      -- two objects trade places (their positions and draw order).
* ``flip``      -- one relation's direction is reversed (left <-> right, front <-> behind, corner to
                   opposite corner, bigger <-> smaller, the middle of a "between" changes); one of its
                   objects is re-placed, every other object stays where it was.
* ``attribute`` -- two objects trade colours, positions kept (which colour goes where).
* ``multi``     -- 2 or 3 flips at once.

A perturbation is kept only if the perturbed scene satisfies its own relations with the solver's
margin and breaks at least one relation of the original beyond doubt (false even with a loosened
rule), so the pair differs spatially and the oracle can tell the two images apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UnsatisfiableSceneError
from ..world.feasible import may_solve
from ..world.layout import DEPTH_KINDS, GAP, prepare, solve
from ..world.scene import Obj, Relation, Scene
from ..world.text import relation_text
from ..world.truth import all_hold, boxes, relation_holds
from ..world.vocab import FLIP, OPPOSITE_REGION

KINDS = ("swap", "flip", "attribute", "multi")
DEFAULT_KIND_WEIGHTS = {"swap": 0.15, "flip": 0.25, "attribute": 0.12, "multi": 0.48}
FLIP_EASE = {"at": 0.4, "between": 0.3}
POSITIONAL = {"left_of", "right_of", "above", "below", "above_left", "above_right", "below_left",
              "below_right", "at", "between", "in_front_of", "behind"}


class PerturbationFailed(Exception):
    """This scene offers no valid perturbation of the requested kind (try another scene)."""


@dataclass(frozen=True)
class Perturbed:
    scene: Scene
    kind: str
    records: list[dict[str, str]]  # {type, before, after}


def flip_relation(rel: Relation) -> Relation:
    if rel.kind in FLIP:
        return Relation(FLIP[rel.kind], rel.objects)
    if rel.kind == "at":
        return Relation("at", rel.objects, OPPOSITE_REGION[rel.region])
    if rel.kind == "between":
        a, b, c = rel.objects
        return Relation("between", (b, a, c))
    raise ValueError(f"relation {rel.kind!r} has no flip")


def _movers(rel: Relation) -> list[int]:
    if rel.kind == "between":
        return [rel.objects[1], rel.objects[0]]
    return list(rel.objects)


def breaks(original: Scene, candidate: Scene) -> list[int]:
    """Indices of original relations that are false in ``candidate`` beyond doubt (m = -1).

    Objects are matched by what the text calls them (colour + shape): an original object with no
    match in ``candidate`` is missing, and every relation naming it is broken.
    """
    where = {(o.colour, o.shape): o for o in candidate.objects}
    objs, missing = [], set()
    for j, o in enumerate(original.objects):
        m = where.get((o.colour, o.shape))
        if m is None:
            missing.add(j)
            objs.append(o)
        else:
            objs.append(m)
    test = Scene(tuple(objs), original.relations)
    bx = boxes(test)
    return [i for i, r in enumerate(original.relations)
            if set(r.objects) & missing or not relation_holds(test, r, -1.0, bx)]


def layout_ok(scene: Scene) -> bool:
    """Clear gaps between objects that do not occlude each other; stated occlusions readable."""
    bx = boxes(scene)
    # box separations of all pairs at once (the same float operations as pair by pair)
    sep = (np.maximum(np.abs(bx[:, None, 0] - bx[None, :, 0]), np.abs(bx[:, None, 1] - bx[None, :, 1]))
           - (bx[:, None, 2] + bx[None, :, 2]) / 2)
    colours = [o.colour for o in scene.objects]
    may_touch = np.zeros(sep.shape, bool)  # a stated occlusion of two colours
    for r in scene.relations:
        if r.kind in DEPTH_KINDS:
            i, j = r.objects
            may_touch[i, j] = may_touch[j, i] = colours[i] != colours[j]
    np.fill_diagonal(may_touch, True)
    if ((sep < GAP) & ~may_touch).any():
        return False
    return all_hold(scene, m=1.0)


def _resize_flip(scene: Scene, rel: Relation) -> Scene | None:
    """bigger <-> smaller: the two objects trade sizes (sizes are attributes; positions stay)."""
    a, b = rel.objects
    oa, ob = scene.objects[a], scene.objects[b]
    objs = list(scene.objects)
    objs[a] = Obj(oa.shape, oa.colour, ob.size, oa.x, oa.y, oa.depth)
    objs[b] = Obj(ob.shape, ob.colour, oa.size, ob.x, ob.y, ob.depth)
    return scene.with_objects(objs)


def _relayout(scene: Scene, target: Scene, idx: list[int], rng: np.random.Generator,
              memos: dict) -> Scene | None:
    """Smallest re-layout of ``target`` (flipped relations at ``idx``): move nothing, one object, both.

    ``memos``: the solver's filters (``layout.candidates``) per spec, kept for one ``perturb`` call,
    where the same flip is often tried again (by a later flip, or by the next kind after a failed one).
    """
    n = len(scene.objects)
    for i in idx:  # size flips change attributes, not places
        r = target.relations[i]
        if r.kind in ("bigger", "smaller"):
            target = _resize_flip(target, r)
    # a filter depends on the objects' sizes and the relations only (positions are in its key)
    memo = memos.setdefault((tuple(o.size for o in target.objects), target.relations), {})
    movers = [_movers(scene.relations[i]) for i in idx if scene.relations[i].kind not in ("bigger", "smaller")]
    options: list[set[int]] = [set()]
    for _ in range(3):
        options.append({int(rng.permutation(m)[0]) for m in movers})
    options.append({j for m in movers for j in m})
    prepared: Scene | None = None  # checked and given a draw order once a solve is worth trying
    seen: list[set[int]] = []
    for free in options:
        if free in seen:
            continue
        seen.append(free)
        if not free:
            if any(target.relations[i].kind not in (*DEPTH_KINDS, "bigger", "smaller") for i in idx):
                continue
        fixed = [j for j in range(n) if j not in free]
        if free and not may_solve(target, fixed, memo=memo):  # necessary for any solve; draw order plays no part
            continue
        if prepared is None:
            try:
                prepared = prepare(target)
            except UnsatisfiableSceneError:
                return None
        try:
            out = solve(prepared, rng, fixed=fixed, restarts=1 if len(free) <= 1 else 2, prepared=True,
                        memo=memo)
        except UnsatisfiableSceneError:
            continue
        if layout_ok(out) and all(i in breaks(scene, out) for i in idx):
            return out
    return None


def _flip_one(scene: Scene, rng: np.random.Generator, exclude: set[int], attempts: int,
              memos: dict) -> tuple[Scene, int] | None:
    """Flip one relation (not in ``exclude``) with the smallest re-layout that keeps all the others."""
    cand = [i for i in range(len(scene.relations)) if i not in exclude]
    if not cand:
        return None
    # directions, occlusions and sizes flip with a small move; placements and "between" rarely do
    w = np.array([FLIP_EASE.get(scene.relations[i].kind, 1.0) for i in cand])
    for i in rng.choice(cand, size=min(attempts, len(cand)), replace=False, p=w / w.sum()):
        i = int(i)
        rels = list(scene.relations)
        rels[i] = flip_relation(rels[i])
        out = _relayout(scene, scene.restated(rels), [i], rng, memos)
        if out is not None:
            return out, i
    return None


def _flip(scene: Scene, rng: np.random.Generator, n: int, memos: dict, attempts: int = 10) -> Perturbed:
    """``n`` flips, applied one after another (each later re-layout keeps the earlier flips)."""
    if len(scene.relations) < n:
        raise PerturbationFailed(f"scene has fewer than {n} relations")
    current, done = scene, []
    for _ in range(n):
        step = _flip_one(current, rng, set(done), attempts, memos)
        if step is None:
            if len(done) >= 2:  # asked for 3, two flips are still a valid "multi"
                break
            raise PerturbationFailed("no re-layout satisfies the flipped relations")
        current, i = step
        done.append(i)
    broken = breaks(scene, current)
    if not all(i in broken for i in done):
        raise PerturbationFailed("a later flip undid an earlier one")
    records = [{"type": "flip", "before": relation_text(scene, scene.relations[i]),
                "after": relation_text(current, current.relations[i])} for i in done]
    return Perturbed(current, "flip" if n == 1 else "multi", records)


def _swap(scene: Scene, rng: np.random.Generator) -> Perturbed:
    mentioned = sorted({j for r in scene.relations if r.kind in POSITIONAL for j in r.objects})
    pairs = [(a, b) for k, a in enumerate(mentioned) for b in mentioned[k + 1:]]
    for p in rng.permutation(len(pairs))[:6]:
        a, b = pairs[int(p)]
        oa, ob = scene.objects[a], scene.objects[b]
        objs = list(scene.objects)
        objs[a] = Obj(oa.shape, oa.colour, oa.size, ob.x, ob.y, ob.depth)
        objs[b] = Obj(ob.shape, ob.colour, ob.size, oa.x, oa.y, oa.depth)
        ren = {a: b, b: a}
        rels = [Relation(r.kind, tuple(ren.get(j, j) for j in r.objects), r.region) if r.kind in POSITIONAL else r
                for r in scene.relations]
        try:
            out = Scene(tuple(objs), tuple(rels))
        except Exception:
            continue
        if not layout_ok(out):
            continue
        broken = breaks(scene, out)
        if broken:
            i = broken[0]
            return Perturbed(out, "swap", [{"type": "swap", "before": relation_text(scene, scene.relations[i]),
                                            "after": relation_text(out, out.relations[i])}])
    raise PerturbationFailed("no swap of two objects breaks a relation cleanly")


def _attribute(scene: Scene, rng: np.random.Generator) -> Perturbed:
    mentioned = sorted({j for r in scene.relations for j in r.objects})
    pairs = [(a, b) for k, a in enumerate(mentioned) for b in mentioned[k + 1:]
             if scene.objects[a].colour != scene.objects[b].colour]
    # prefer same-shape pairs: then only which colour sits where changes
    pairs.sort(key=lambda p: (scene.objects[p[0]].shape != scene.objects[p[1]].shape, rng.random()))
    for a, b in pairs[:6]:
        oa, ob = scene.objects[a], scene.objects[b]
        objs = list(scene.objects)
        objs[a] = Obj(oa.shape, ob.colour, oa.size, oa.x, oa.y, oa.depth)
        objs[b] = Obj(ob.shape, oa.colour, ob.size, ob.x, ob.y, ob.depth)
        try:
            out = Scene(tuple(objs), scene.relations)
        except Exception:  # colour+shape no longer unique
            continue
        if not layout_ok(out) or not breaks(scene, out):
            continue
        before = f"the {oa.colour} {oa.shape} and the {ob.colour} {ob.shape}"
        after = f"the {ob.colour} {oa.shape} and the {oa.colour} {ob.shape}"
        return Perturbed(out, "attribute", [{"type": "attribute", "before": before, "after": after}])
    raise PerturbationFailed("no two objects can trade colours")


def perturb(scene: Scene, rng: np.random.Generator, kind: str | None = None,
            weights: dict[str, float] | None = None, multi_counts: Sequence[float] = (0.6, 0.4)) -> Perturbed:
    """Perturb a placed scene; ``kind`` drawn from ``weights`` when not given.

    When the drawn kind has no valid perturbation in this scene, the other kinds are tried in
    order of weight before giving up (so few scenes are wasted; the card reports the real mix).
    """
    memos: dict = {}  # see _relayout
    if kind is not None:
        return _perturb_kind(scene, rng, kind, multi_counts, memos)
    w = weights or DEFAULT_KIND_WEIGHTS
    names = [k for k in KINDS if w.get(k, 0) > 0]
    p = np.array([w[k] for k in names], float)
    first = names[int(rng.choice(len(names), p=p / p.sum()))]
    order = [first] + sorted((k for k in names if k != first), key=lambda k: -w[k])
    for k in order:
        try:
            return _perturb_kind(scene, rng, k, multi_counts, memos)
        except PerturbationFailed:
            continue
    raise PerturbationFailed("no perturbation of any kind is valid for this scene")


def _perturb_kind(scene: Scene, rng: np.random.Generator, kind: str, multi_counts: Sequence[float],
                  memos: dict) -> Perturbed:
    if kind == "flip":
        return _flip(scene, rng, 1, memos)
    if kind == "multi":
        return _flip(scene, rng, 2 + int(rng.choice(2, p=np.asarray(multi_counts) / sum(multi_counts))), memos)
    if kind == "swap":
        return _swap(scene, rng)
    if kind == "attribute":
        return _attribute(scene, rng)
    raise ValueError(f"unknown perturbation kind {kind!r} (known: {', '.join(KINDS)})")
