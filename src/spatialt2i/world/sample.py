"""Random scenes for datasets and benchmarks: objects, a layout, and relations true in it.

A layout is solved first (with a few occlusions and "between" triples planted so those kinds
occur), then the stated relations are drawn from everything that holds in it with the solver's
safety margin, so every stated relation is true beyond pixel rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from bisect import bisect_right
from itertools import accumulate, combinations

import numpy as np

from ..errors import ConfigError, UnsatisfiableSceneError
from . import geometry as G
from .layout import solve
from .scene import Obj, Relation, Scene
from .truth import boxes, relation_holds
from .vocab import COLOURS, REGIONS, SHAPES, SIZES

# Default relations-per-prompt distribution (paper-shaped: 3-12 relations, mode ~7; ours 2-10).
PAPER_RELATIONS = {2: 0.04, 3: 0.07, 4: 0.10, 5: 0.14, 6: 0.16, 7: 0.17, 8: 0.14, 9: 0.10, 10: 0.08}
GROUP_WEIGHTS = {"axis": 0.27, "diagonal": 0.13, "placement": 0.14, "depth": 0.14, "size": 0.14, "between": 0.18}
GROUP_OF = {"left_of": "axis", "right_of": "axis", "above": "axis", "below": "axis",
            "above_left": "diagonal", "above_right": "diagonal", "below_left": "diagonal",
            "below_right": "diagonal", "at": "placement", "in_front_of": "depth", "behind": "depth",
            "bigger": "size", "smaller": "size", "between": "between"}


@dataclass(frozen=True)
class SceneConfig:
    relations: dict[int, float] = field(default_factory=lambda: dict(PAPER_RELATIONS))
    min_objects: int = 2
    max_objects: int = 8
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    group_weights: dict[str, float] = field(default_factory=lambda: dict(GROUP_WEIGHTS))

    def __post_init__(self) -> None:
        if not self.relations or any(int(k) < 1 or v < 0 for k, v in self.relations.items()):
            raise ConfigError(f"relations: expected {{count: weight}} with counts >= 1, got {self.relations!r}")
        if not 2 <= self.min_objects <= self.max_objects <= 8:
            raise ConfigError(f"objects: need 2 <= min_objects <= max_objects <= 8, got "
                              f"{self.min_objects}..{self.max_objects}")
        bad = [s for s in self.shapes if s not in SHAPES] + [c for c in self.colours if c not in COLOURS]
        if bad:
            raise ConfigError(f"unknown shape/colour in scene config: {bad}")
        unknown = set(self.group_weights) - set(GROUP_WEIGHTS)
        if unknown:
            raise ConfigError(f"group_weights: unknown group(s) {sorted(unknown)} (known: {sorted(GROUP_WEIGHTS)})")


def pick(rng: np.random.Generator, weights) -> int:
    """``int(rng.choice(len(weights), p=weights / sum))``, the same draw from the same single
    uniform, without numpy's per-call checks (the hot loops draw many small choices)."""
    cdf = list(accumulate(float(w) for w in weights))
    total = cdf[-1]
    return bisect_right([c / total for c in cdf], rng.random())


def _objects(rng: np.random.Generator, n: int, cfg: SceneConfig) -> list[Obj]:
    pairs = [(c, s) for c in cfg.colours for s in cfg.shapes]
    idx = rng.choice(len(pairs), size=n, replace=False)
    sizes = list(SIZES)
    return [Obj(pairs[k][1], pairs[k][0], sizes[pick(rng, (0.4, 0.35, 0.25))], depth=i)
            for i, k in enumerate(idx)]


def _planted(rng: np.random.Generator, objs: list[Obj]) -> list[Relation]:
    n, rels = len(objs), []
    for _ in range(pick(rng, (0.45, 0.4, 0.15))):
        a, b = (int(v) for v in rng.choice(n, 2, replace=False))
        busy = {j for r in rels for j in r.objects}
        if objs[a].colour != objs[b].colour and a not in busy and b not in busy:
            rels.append(Relation("in_front_of", (a, b)))
    if n >= 3 and rng.random() < 0.45:
        a, b, c = (int(v) for v in rng.choice(n, 3, replace=False))
        if not any(j in r.objects for r in rels for j in (a,)):
            rels.append(Relation("between", (a, b, c)))
    return rels


def true_relations(scene: Scene, m: float = 1.0) -> list[Relation]:
    """Every relation that holds in a placed scene with margin ``m`` (one direction per pair)."""
    bx = boxes(scene)
    n = len(scene.objects)
    A = tuple(bx[:, None, k] for k in range(3))  # (n, 1): object a
    B = tuple(bx[None, :, k] for k in range(3))  # (1, n): object b
    eye = np.eye(n, dtype=bool)
    out: list[Relation] = []
    # b-relative, one side only (the other side is said by stating it from b)
    kinds = ("above_left", "above_right", "left_of", "above")
    for kind, hold in zip(kinds, G.directions(kinds, A, B, m)):
        out += [Relation(kind, (int(a), int(b))) for a, b in zip(*np.nonzero(hold & ~eye))]
    big = G.size_relation("bigger", A, B, m) & ~eye
    out += [Relation("bigger", (int(a), int(b))) for a, b in zip(*np.nonzero(big))]
    touch = (np.maximum(np.abs(A[0] - B[0]), np.abs(A[1] - B[1])) < (A[2] + B[2]) / 2) & ~eye
    for a, b in zip(*np.nonzero(touch)):
        r = Relation("in_front_of", (int(a), int(b)))
        if relation_holds(scene, r, m, bx):
            out.append(r)
    cx, cy = G.region_of(bx[:, 0], bx[:, 1], m)  # G.at, with each centre's cell found once
    for reg, (col, row) in REGIONS.items():
        out += [Relation("at", (int(a),), reg) for a in np.nonzero((cx == col) & (cy == row))[0]]
    if n >= 3:
        a, b, c = np.array([(a, b, c) for a in range(n) for b, c in combinations([j for j in range(n) if j != a], 2)]).T
        hold = G.between(tuple(bx[a, k] for k in range(3)), tuple(bx[b, k] for k in range(3)),
                         tuple(bx[c, k] for k in range(3)), m)
        out += [Relation("between", (int(x), int(y), int(z))) for x, y, z in zip(a[hold], b[hold], c[hold])]
    return out


def _boxes_touch(a, b) -> bool:
    return max(abs(a[0] - b[0]), abs(a[1] - b[1])) < (a[2] + b[2]) / 2


def _state(rel: Relation, rng: np.random.Generator) -> Relation:
    """Say a true relation from either side (left_of(a,b) == right_of(b,a)), for variety."""
    flip = {"left_of": "right_of", "above": "below", "above_left": "below_right",
            "above_right": "below_left", "bigger": "smaller", "in_front_of": "behind"}
    if rel.kind in flip and rng.random() < 0.5:
        a, b = rel.objects
        return Relation(flip[rel.kind], (b, a))
    if rel.kind == "between" and rng.random() < 0.5:
        a, b, c = rel.objects
        return Relation("between", (a, c, b))
    return rel


def choose_relations(candidates: list[Relation], k: int, planted: list[Relation], rng: np.random.Generator,
                     weights: dict[str, float]) -> list[Relation]:
    def key(r: Relation) -> frozenset:  # at most one relation per group and set of objects
        return frozenset(r.objects) | {GROUP_OF[r.kind]}

    pool = [(r, key(r), GROUP_OF[r.kind]) for r in candidates]
    chosen: list[Relation] = []
    used_pairs: set[frozenset] = set()

    def take(r: Relation) -> None:
        chosen.append(r)
        used_pairs.add(key(r))

    for r in planted:
        if r in candidates and rng.random() < 0.85 and len(chosen) < k:
            take(r)
    while len(chosen) < k:
        pool = [p for p in pool if p[1] not in used_pairs]  # a chosen relation's key is used
        if not pool:
            break
        groups = sorted({g for _, _, g in pool})
        w = np.array([weights.get(g, 0.0) for g in groups]) + 1e-9
        g = groups[pick(rng, w)]
        opts = [r for r, _, gr in pool if gr == g]
        # prefer relations naming objects not yet mentioned
        mentioned = {j for r in chosen for j in r.objects}
        fresh = [r for r in opts if set(r.objects) - mentioned]
        among = (fresh if fresh and rng.random() < 0.7 else opts)
        take(among[int(rng.integers(len(among)))])
    order = rng.permutation(len(chosen))
    return [_state(chosen[i], rng) for i in order]


def random_scene(rng: np.random.Generator, cfg: SceneConfig = SceneConfig(), n_relations: int | None = None,
                 tries: int = 20) -> Scene:
    """A placed scene with ``n_relations`` true relations (drawn from ``cfg.relations`` if None)."""
    ks = sorted(cfg.relations)
    p = np.array([cfg.relations[k] for k in ks], float)
    k = n_relations if n_relations is not None else int(ks[pick(rng, p)])
    for _ in range(tries):
        lo = max(cfg.min_objects, min(cfg.max_objects, int(np.ceil(k * 0.45)) + 1))
        hi = max(lo, min(cfg.max_objects, k + 1))
        n = int(rng.integers(lo, hi + 1))
        objs = _objects(rng, n, cfg)
        planted = _planted(rng, objs)
        try:
            placed = solve(Scene(tuple(objs), tuple(planted)), rng, restarts=6)
        except UnsatisfiableSceneError:
            continue
        cands = true_relations(placed)
        rels = choose_relations(cands, k, planted, rng, cfg.group_weights)
        if len(rels) == k:
            return placed.with_relations(rels)
    raise UnsatisfiableSceneError(f"could not sample a scene with {k} relations in {tries} tries")
