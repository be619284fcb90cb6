"""The layout solver: place a scene's objects so that every stated relation holds.

Objects are placed one at a time; for each, every point of a pixel-centre grid over the canvas is a
candidate centre, filtered at once with the vectorised rules of ``world.geometry`` (relations with
the objects already placed, at the solver's safety margin); one survivor is picked at random. Objects that share no
occlusion relation keep a clear gap; occluding pairs overlap enough to read and leave the back
object mostly visible and in one piece. Deterministic for a given seed. ``fixed`` objects keep their place, which is
how perturbations re-lay a scene with the smallest edit.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import numpy as np

from ..errors import UnsatisfiableSceneError
from . import geometry as G
from . import offsets as O
from .offsets import GRID
from .render import full_mask
from .scene import Obj, Relation, Scene
from .truth import LAYOUT_RES, boxes, relation_holds

GAP = 0.035          # clear gap between the boxes of objects that do not occlude each other
MIN_VISIBLE = 0.6    # an occluded object keeps at least this share of its area visible
DEPTH_KINDS = ("in_front_of", "behind")
_EIGHT_IN_PLANE = np.pad(np.ones((1, 3, 3), bool), ((1, 1), (0, 0), (0, 0)))  # 8-connected, plane by plane
AXIS = {"left_of": ("x", -1), "right_of": ("x", 1), "above": ("y", -1), "below": ("y", 1),
        "above_left": ("xy", (-1, -1)), "above_right": ("xy", (1, -1)),
        "below_left": ("xy", (-1, 1)), "below_right": ("xy", (1, 1))}


def _front_back(rel: Relation) -> tuple[int, int]:
    a, b = rel.objects
    return (a, b) if rel.kind == "in_front_of" else (b, a)


def _find_cycle(n: int, edges: list[tuple[int, int, int]]) -> list[int] | None:
    """Edges (u, v, rel_index) meaning u < v; returns relation indices of a cycle, if any."""
    adj: dict[int, list[tuple[int, int]]] = {i: [] for i in range(n)}
    for u, v, r in edges:
        adj[u].append((v, r))
    state = [0] * n
    stack: list[tuple[int, int]] = []

    def dfs(u: int) -> list[int] | None:
        state[u] = 1
        for v, r in adj[u]:
            if state[v] == 1:
                cyc = [r]
                for node, rr in reversed(stack):
                    cyc.append(rr)
                    if node == v:
                        break
                return cyc
            if state[v] == 0:
                stack.append((u, r))
                found = dfs(v)
                if found:
                    return found
                stack.pop()
        state[u] = 2
        return None

    for s in range(n):
        if state[s] == 0:
            c = dfs(s)
            if c:
                return c
    return None


def check_consistency(scene: Scene) -> None:
    """Fast, explicit checks for specs no layout can satisfy (clear errors before any search)."""
    n = len(scene.objects)
    rels = scene.relations
    for i, r in enumerate(rels):
        if r.kind in ("bigger", "smaller"):
            a, b = (scene.objects[k] for k in r.objects)
            ok = G.size_relation(r.kind, (0, 0, 2 * a.half), (0, 0, 2 * b.half), 1.0)
            if not ok:
                raise UnsatisfiableSceneError(
                    f"relation {i}: the {a.size} {a.name()} cannot be {r.kind} than the {b.size} {b.name()}")
        if r.kind in DEPTH_KINDS:
            a, b = (scene.objects[k] for k in r.objects)
            if a.colour == b.colour:
                raise UnsatisfiableSceneError(
                    f"relation {i}: the {a.name()} and the {b.name()} share a colour, so an occlusion "
                    "between them cannot be seen")
    for axis in ("x", "y"):
        edges = []
        for i, r in enumerate(rels):
            if r.kind not in AXIS:
                continue
            ax, sign = AXIS[r.kind]
            s = sign if ax == axis else (sign[0 if axis == "x" else 1] if ax == "xy" else 0)
            if s:
                a, b = r.objects
                edges.append((a, b, i) if s < 0 else (b, a, i))
        cyc = _find_cycle(n, edges)
        if cyc:
            raise UnsatisfiableSceneError(f"relations {sorted(set(cyc))} contradict each other "
                                          f"({'left/right' if axis == 'x' else 'above/below'} order has a cycle)")
    edges = [(*_front_back(r)[::-1], i) for i, r in enumerate(rels) if r.kind in DEPTH_KINDS]
    cyc = _find_cycle(n, edges)
    if cyc:
        raise UnsatisfiableSceneError(f"relations {sorted(set(cyc))} contradict each other (front/behind cycle)")
    regions: dict[int, str] = {}
    for i, r in enumerate(rels):
        if r.kind == "at":
            (a,) = r.objects
            if regions.setdefault(a, r.region) != r.region:
                raise UnsatisfiableSceneError(f"relation {i}: object {a} cannot be both at the "
                                              f"{regions[a]} and at the {r.region}")


def assign_depths(scene: Scene) -> Scene:
    """Draw order: a topological order of the occlusion relations, ties kept in the old order."""
    n = len(scene.objects)
    before: dict[int, set[int]] = {i: set() for i in range(n)}  # before[i]: must be drawn before i
    for r in scene.relations:
        if r.kind in DEPTH_KINDS:
            f, b = _front_back(r)
            before[f].add(b)
    order, done = [], set()
    key = sorted(range(n), key=lambda i: (scene.objects[i].depth, i))
    while len(order) < n:
        for i in key:
            if i not in done and before[i] <= done:
                order.append(i)
                done.add(i)
                break
        else:  # pragma: no cover - cycles are rejected by check_consistency
            raise UnsatisfiableSceneError("occlusion relations form a cycle")
    depth = {i: d for d, i in enumerate(order)}
    return scene.moved([Obj(o.shape, o.colour, o.size, o.x, o.y, depth[i]) for i, o in enumerate(scene.objects)])


def _partners(scene: Scene, i: int) -> tuple[set[int], list[Relation]]:
    depth_partners, rels = set(), []
    for r in scene.relations:
        if i in r.objects:
            rels.append(r)
            if r.kind in DEPTH_KINDS:
                depth_partners |= set(r.objects) - {i}
    return depth_partners, rels


@lru_cache(maxsize=64)
def _axis(half: float) -> np.ndarray:
    """Grid coordinates along one axis where an object of half-side ``half`` fits on the canvas."""
    g = (np.arange(GRID) + 0.5) / GRID
    g = g[(g >= half) & (g <= 1 - half)]
    g.setflags(write=False)
    return g


@lru_cache(maxsize=64)
def _span(half: float) -> tuple[int, int]:
    """``len(_axis(half))`` and the grid index of its first coordinate."""
    axis = _axis(half)
    return len(axis), int(round(axis[0] * GRID - 0.5)) if len(axis) else 0


@lru_cache(maxsize=64)
def _grid(half: float) -> np.ndarray:
    """The candidate centres, row-major over ``_axis(half)`` (y rows, x columns)."""
    g = _axis(half)
    xy = np.stack(np.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    xy.setflags(write=False)
    return xy


def clearance_mask(axis: np.ndarray, hi: float, pos: np.ndarray, half: np.ndarray,
                   overlap: np.ndarray) -> np.ndarray:
    """(len(axis), len(axis)) bool over the grid ``axis`` x ``axis`` (rows y, columns x).

    True where an object of half-side ``hi`` centred there keeps a clear ``GAP`` from every object
    at ``pos`` (P, 2) with half-sides ``half`` (P,), or overlaps it by more than 0.01 where
    ``overlap`` (P,) is set. The box separation max(|dx|, |dy|) - (hi + half) splits per axis (a
    max is >= GAP iff either part is, < -0.01 iff both are), so the test costs O(P x L) float work
    plus O(P x L^2) boolean work, and gives exactly the same answer as the 2-D separation.
    """
    reach = (hi + half)[:, None]
    sx = np.abs(axis[None, :] - pos[:, 0:1]) - reach  # (P, L)
    sy = np.abs(axis[None, :] - pos[:, 1:2]) - reach
    ov = overlap[:, None]
    okx, oky = np.where(ov, sx < -0.01, sx >= GAP), np.where(ov, sy < -0.01, sy >= GAP)
    both = np.where(ov[:, :, None], okx[:, None, :] & oky[:, :, None], okx[:, None, :] | oky[:, :, None])
    return both.all(0)


@lru_cache(maxsize=256)
def _at_mask(region: str, half: float, m: float) -> np.ndarray:
    """(L, L) bool over the candidate grid of an object of half-side ``half``: centres ``at`` region."""
    g = _grid(half)
    keep = np.asarray(G.box_relation("at", [(g[:, 0], g[:, 1], 2 * half)], (0,), region, m), bool)
    keep = keep.reshape(len(_axis(half)), -1)
    keep.setflags(write=False)
    return keep


def _filter(scene: Scene, i: int, placed: dict[int, tuple[float, float]],
            depth_partners: set[int], rels: list[Relation], m: float) -> np.ndarray:
    """The grid centres where object i fits on the canvas and keeps every constraint with the
    placed objects, in grid order.

    Placements, and the rules and clearances of object i with one placed object, are grid masks
    (read off ``world.offsets`` for grid-centred objects: exact), relations first; the rest
    (three-object rules, off-grid objects' rules) is applied afterwards on the surviving centres.
    """
    objs = scene.objects
    hi = objs[i].half
    n, first = _span(hi)
    mask = np.ones((n, n), bool)
    later: list[tuple[Relation, float | None]] = []  # (relation, room) applied to survivors
    for r in rels:
        kind, ends = r.kind, r.objects
        if kind == "between" and ends[0] != i:  # i is an end: leave room for the middle one
            other = ends[2] if ends[1] == i else ends[1]
            if other in placed:
                room = (hi + objs[other].half + 2 * objs[ends[0]].half + 2 * GAP) / 0.85
                cell = O.grid_cell(*placed[other])
                if cell is None:
                    later.append((r, room))
                else:
                    mask &= O.window(O.room_rule(room), first, n, cell)
        if kind in DEPTH_KINDS:
            continue
        if kind == "at":
            mask &= _at_mask(r.region, hi, m)
        elif len(ends) == 2:
            j = ends[1] if ends[0] == i else ends[0]
            if j not in placed:
                continue
            cell = O.grid_cell(*placed[j])
            if cell is None:
                later.append((r, None))
            else:
                rule = O.pair_rule(kind, r.region, ends[0] == i, hi, objs[j].half, m)
                mask &= O.window(rule, first, n, cell)
        elif all(j == i or j in placed for j in ends):
            later.append((r, None))
    if not mask.any():  # the relations alone rule every centre out (common for flipped ones)
        return _grid(hi)[:0]
    off_grid = []
    for j, (x, y) in placed.items():
        cell = O.grid_cell(x, y)
        if cell is None:
            off_grid.append(j)
            continue
        # the clearance rule is a square of offsets (O.clear_reach): candidate rows [r0, r1) and
        # columns [c0, c1) within k steps of the object's cell (clamped: no negative slice ends)
        overlap = j in depth_partners
        k = O.clear_reach(hi, objs[j].half, overlap, GAP)
        r0, r1 = max(cell[1] - k - first, 0), max(cell[1] + k + 1 - first, 0)
        c0, c1 = max(cell[0] - k - first, 0), max(cell[0] + k + 1 - first, 0)
        if overlap:  # only the square is allowed
            mask[:r0] = False
            mask[r1:] = False
            mask[:, :c0] = False
            mask[:, c1:] = False
        else:  # the square is ruled out
            mask[r0:r1, c0:c1] = False
    if off_grid:
        pos = np.array([placed[j] for j in off_grid])
        half = np.array([objs[j].half for j in off_grid])
        overlap = np.array([j in depth_partners for j in off_grid])
        mask &= clearance_mask(_axis(hi), hi, pos, half, overlap)
    cand = _grid(hi).take(mask.ravel().nonzero()[0], axis=0)  # (faster than a boolean row index)
    for r, room in later:
        if not len(cand):
            break
        if room is not None:
            other = [j for j in r.objects[1:] if j != i][0]
            cand = cand[np.hypot(cand[:, 0] - placed[other][0], cand[:, 1] - placed[other][1]) >= room]
            continue
        geo = []
        for j in r.objects:
            if j == i:
                geo.append((cand[:, 0], cand[:, 1], 2 * hi))
            else:
                geo.append((placed[j][0], placed[j][1], 2 * objs[j].half))
        keep = np.asarray(G.box_relation(r.kind, geo, tuple(range(len(geo))), r.region, m), bool)
        if keep.ndim:
            cand = cand[keep]
        elif not keep:  # a size relation does not depend on position: all or nothing
            cand = cand[:0]
    return cand


def candidates(scene: Scene, i: int, placed: dict[int, tuple[float, float]], m: float,
               memo: dict) -> tuple[np.ndarray, set[int]]:
    """``_filter`` for object i (and its occlusion partners), memoised in ``memo`` -- the caller's,
    for one spec (sizes and relations; draw order plays no part): every restart's first object, and
    a solve after ``feasible.may_solve``, ask again for a filter. It keeps ``_partners`` too (key i).
    """
    key = (i, frozenset(placed.items()), m)
    hit = memo.get(key)
    if hit is None:
        partners = memo.get(i)
        if partners is None:
            partners = memo[i] = _partners(scene, i)
        hit = memo[key] = (_filter(scene, i, placed, *partners, m), partners[0])
    return hit


def _depth_ok(scene: Scene, placed_scene: Scene, i: int, placed: dict, m: float) -> bool:
    """Raster checks for occlusions involving object i: enough overlap, back object visible."""
    from scipy import ndimage  # imported on first use: a process that only configures a build skips it

    objs = placed_scene.objects
    for r in placed_scene.relations:
        if r.kind not in DEPTH_KINDS or i not in r.objects or not all(j in placed for j in r.objects):
            continue
        if not relation_holds(placed_scene, r, m):
            return False
    involved = {j for r in placed_scene.relations if r.kind in DEPTH_KINDS and i in r.objects
                for j in r.objects if j in placed}
    visible = []
    for b in involved:
        fronts = [f for f in placed if f != b and (objs[f].depth, f) > (objs[b].depth, b)]
        mb = full_mask(objs[b], LAYOUT_RES)
        vis = mb.copy()
        for f in fronts:
            vis &= ~full_mask(objs[f], LAYOUT_RES)
        area = vis.sum()
        if not area or area < MIN_VISIBLE * mb.sum():
            return False  # mostly hidden
        visible.append(vis)
    # not cut in pieces: the (non-empty) visible parts as planes of a stack, labelled at once, make
    # one component per plane exactly when each is whole
    return not visible or ndimage.label(np.stack(visible), _EIGHT_IN_PLANE)[1] == len(visible)


def prepare(scene: Scene) -> Scene:
    """Check a spec for contradictions and give it a draw order (done once per spec by ``solve``)."""
    check_consistency(scene)
    return assign_depths(scene)


def solve(scene: Scene, seed: int | np.random.Generator = 0, fixed: Iterable[int] = (),
          margin: float = 1.0, restarts: int = 30, prepared: bool = False, memo: dict | None = None) -> Scene:
    """Return ``scene`` with every object placed so that all its relations hold (with ``margin``).

    Objects in ``fixed`` must already be placed and keep their positions. Raises
    ``UnsatisfiableSceneError`` when the spec contradicts itself or no layout is found.
    ``prepared``: the scene already went through :func:`prepare` (several solves of one spec).
    ``memo``: a :func:`candidates` memo shared with other calls on this spec (e.g. ``may_solve``).
    """
    if not prepared:
        scene = prepare(scene)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    fixed = set(fixed)
    for j in fixed:
        if not scene.objects[j].placed:
            raise UnsatisfiableSceneError(f"object {j} is fixed but has no position")
    free = [i for i in range(len(scene.objects)) if i not in fixed]
    # anchored objects first, the middle of a "between" after its two ends
    degree = {i: sum(i in r.objects for r in scene.relations)
              + sum(2 for r in scene.relations if r.kind == "at" and r.objects[0] == i)
              - sum(10 for r in scene.relations if r.kind == "between" and r.objects[0] == i)
              for i in free}
    memo = {} if memo is None else memo
    for _ in range(restarts):
        placed = {j: (scene.objects[j].x, scene.objects[j].y) for j in fixed}
        objs = list(scene.objects)
        order = sorted(free, key=lambda i: (-degree[i], rng.random()))
        success = True
        for i in order:
            chosen = None
            cand, depth_partners = candidates(scene, i, placed, margin, memo)
            tries = 120 if depth_partners else 24
            pick = rng.choice(len(cand), size=min(tries, len(cand)), replace=False) if len(cand) else []
            for x, y in cand[pick]:
                objs[i] = scene.objects[i].at(x, y)
                trial_placed = dict(placed)
                trial_placed[i] = (x, y)
                if not depth_partners or _depth_ok(scene, scene.moved(
                        [o if (o.placed and j in trial_placed) else o.at(0.5, 0.5)
                         for j, o in enumerate(objs)]), i, trial_placed, margin):
                    chosen = (x, y)
                    break
            if chosen is None:
                success = False
                break
            placed[i] = chosen
        if success:
            out = scene.moved(objs)
            moved = set(free)  # relations among fixed objects keep holding, occlusions may re-order
            bx = boxes(out)
            if all(relation_holds(out, r, margin, bx) for r in out.relations
                   if r.kind in DEPTH_KINDS or moved.intersection(r.objects)):
                return out
    raise UnsatisfiableSceneError(
        f"no layout found for {len(scene.objects)} objects and {len(scene.relations)} relations after "
        f"{restarts} attempts: the relations may contradict each other or crowd the canvas")
