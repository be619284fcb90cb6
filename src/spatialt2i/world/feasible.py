"""A cheap necessary test for re-layouts that move several objects while the rest stay put.

Every free object can only land on a grid centre that keeps its constraints with the fixed objects
(its *own* candidate set, the solver's filter with nothing else free). Two free objects ``a`` and
``b`` then also need one candidate each whose offset ``a - b`` satisfies everything the solver asks
of the pair: clearance (or overlap for an occlusion), their two-object relations, and the room a
"between" leaves for its middle. Grid centres are exact dyadic fractions, so offsets are exact too
and the offset rules (``world.offsets``) give exactly the solver's answers; the reachable offsets
come from every difference of the two candidate sets (or an FFT cross-correlation for large sets).
When no pair of offsets works, no solve can succeed (depth rasters and three-object rules only
remove more), so the caller can skip the solve.
"""

from __future__ import annotations

from itertools import combinations
from typing import Iterable

import numpy as np

from . import offsets as O
from .layout import DEPTH_KINDS, GAP, candidates
from .offsets import GRID, SPAN
from .scene import Scene

FFT_SIDE = 2 * GRID  # offsets -63..63 fit a 128-periodic correlation without wrapping onto each other
DIRECT_MAX = 40_000  # candidate pairs up to which offsets are listed directly rather than by FFT
SAMPLE = 4_000       # candidate pairs tried first (every k-th candidate of a, all of b)
_NATURAL = (np.arange(SPAN) - (GRID - 1)) % FFT_SIDE  # FFT index of each offset -63..63


def _cells(cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell (row, column) of each candidate centre (centres are (k + 0.5) / GRID)."""
    k = np.rint(cand * GRID - 0.5).astype(np.int64)
    return k[:, 1], k[:, 0]


def _hits(ya: np.ndarray, xa: np.ndarray, yb: np.ndarray, xb: np.ndarray, ok: np.ndarray) -> bool:
    """Whether some cell of a and some cell of b have an offset that ``ok`` allows (every pair)."""
    flat = (ya[:, None] - yb[None, :] + GRID - 1) * SPAN + (xa[:, None] - xb[None, :] + GRID - 1)
    return bool(ok.ravel()[flat].any())


def reaches(cand_a: np.ndarray, cand_b: np.ndarray, ok: np.ndarray) -> bool:
    """Whether some a in ``cand_a`` and b in ``cand_b`` (grid centres) have an offset a - b that
    ``ok`` ((SPAN, SPAN) bool, rows dy, columns dx) allows.

    First the box of all offsets the two sets' bounding boxes allow (rules out most pairs at once);
    then the differences of a sample of a with all of b (sets that reach mostly reach from there);
    then, for small sets, every difference; for large ones, an FFT cross-correlation of the sets.
    """
    (ya, xa), (yb, xb) = _cells(cand_a), _cells(cand_b)
    if not len(ya) or not len(yb):
        return False
    c = GRID - 1
    if not ok[ya.min() - yb.max() + c: ya.max() - yb.min() + c + 1,
              xa.min() - xb.max() + c: xa.max() - xb.min() + c + 1].any():
        return False
    pairs = len(ya) * len(yb)
    step = -(-pairs // SAMPLE)
    if step > 1 and _hits(ya[::step], xa[::step], yb, xb, ok):  # a witness among a sample of a settles it
        return True
    if pairs <= DIRECT_MAX:
        return _hits(ya, xa, yb, xb, ok)
    import scipy.fft as sfft  # imported on first use (most calls never get here)

    ia, ib = np.zeros((FFT_SIDE, FFT_SIDE)), np.zeros((FFT_SIDE, FFT_SIDE))
    ia[ya, xa] = 1.0
    ib[yb, xb] = 1.0
    corr = sfft.irfft2(sfft.rfft2(ia) * np.conj(sfft.rfft2(ib)), s=(FFT_SIDE, FFT_SIDE))  # [d] = #(a - b = d)
    return bool((ok & (corr[np.ix_(_NATURAL, _NATURAL)] > 0.5)).any())


def pair_offsets(scene: Scene, a: int, b: int, m: float) -> np.ndarray:
    """(SPAN, SPAN) bool: offsets a - b that the solver accepts for two objects placed on the grid:
    clearance (overlap for an occlusion), their two-object relations, the room of a "between"."""
    objs = scene.objects
    ha, hb = objs[a].half, objs[b].half
    occlude = any(r.kind in DEPTH_KINDS and set(r.objects) == {a, b} for r in scene.relations)
    ok = O.clear_rule(ha, hb, occlude, GAP)
    for r in scene.relations:
        if set(r.objects) == {a, b} and r.kind not in DEPTH_KINDS:
            ok = ok & O.pair_rule(r.kind, r.region, r.objects[0] == a, ha, hb, m)
        elif r.kind == "between" and set(r.objects[1:]) == {a, b}:
            ok = ok & O.room_rule((ha + hb + 2 * objs[r.objects[0]].half + 2 * GAP) / 0.85)
    return ok


def may_solve(scene: Scene, fixed: Iterable[int], margin: float = 1.0, memo: dict | None = None) -> bool:
    """False only when no ``solve(scene, fixed=fixed, margin=margin)`` can succeed.

    ``scene``'s fixed objects are placed; draw orders play no part (``prepare`` is not needed).
    With one free object this is exactly the solver's first filter. ``memo``: shared with the
    solve that may follow, which then reuses these filters (see ``layout.candidates``).
    """
    fixed = set(fixed)
    free = [i for i in range(len(scene.objects)) if i not in fixed]
    placed = {j: (scene.objects[j].x, scene.objects[j].y) for j in fixed}
    cand, memo = {}, {} if memo is None else memo
    for i in free:
        cand[i] = candidates(scene, i, placed, margin, memo)[0]
        if not len(cand[i]):
            return False
    for a, b in combinations(free, 2):
        if not reaches(cand[a], cand[b], pair_offsets(scene, a, b, margin)):
            return False
    return True
