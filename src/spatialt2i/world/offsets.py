"""Pairwise placement rules as cached masks over exact grid offsets.

The solver's candidate centres are the pixel centres ``(k + 0.5) / GRID`` of a GRID x GRID canvas,
exact dyadic fractions; so is the difference of two of them, ``(k_a - k_b) / GRID``. A rule that
depends only on the offset between two objects (a two-object relation, the room two ends of a
"between" leave for the middle) therefore gives the same answer for a centre pair as for its offset,
bit for bit, and can be evaluated once on all (2 GRID - 1)^2 offsets and then read as a window.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import geometry as G

GRID = 64                 # candidate centres: the pixel-centre grid of a 64 x 64 canvas
SPAN = 2 * GRID - 1       # offsets -63..63 (in grid steps), index = offset + GRID - 1
_D = (np.arange(SPAN) - (GRID - 1)) / GRID


@lru_cache(maxsize=8192)  # the solver asks for the same few placements over and over
def grid_cell(x: float, y: float) -> tuple[int, int] | None:
    """(column, row) of a grid centre, or None for a point that is not one."""
    kx, ky = x * GRID - 0.5, y * GRID - 0.5
    if kx != int(kx) or ky != int(ky) or not (0 <= kx < GRID and 0 <= ky < GRID):
        return None
    return int(kx), int(ky)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=bool)
    a.setflags(write=False)
    return a


@lru_cache(maxsize=2048)  # 16 KiB each
def pair_rule(kind: str, region: str | None, a_first: bool, ha: float, hb: float, m: float) -> np.ndarray:
    """(SPAN, SPAN) bool, rows dy, columns dx: where ``kind`` holds for object a (half-side ``ha``)
    at offset (dx, dy) from object b (half-side ``hb``); ``a_first``: a is the relation's first
    object. Read-only."""
    dx, dy = np.meshgrid(_D, _D, indexing="xy")
    a, b = (dx, dy, 2 * ha), (0.0, 0.0, 2 * hb)
    geo = [a, b] if a_first else [b, a]
    return _frozen(np.broadcast_to(G.box_relation(kind, geo, (0, 1), region, m), dx.shape))


@lru_cache(maxsize=256)
def clear_rule(ha: float, hb: float, overlap: bool, gap: float) -> np.ndarray:
    """(SPAN, SPAN) bool: offsets where the boxes of a and b (half-sides ``ha``, ``hb``) keep a clear
    ``gap`` -- or, with ``overlap``, overlap by more than 0.01 on both axes. Read-only."""
    s = np.abs(_D) - (ha + hb)
    ok = s < -0.01 if overlap else s >= gap
    return _frozen(ok[:, None] & ok[None, :] if overlap else ok[:, None] | ok[None, :])


@lru_cache(maxsize=256)
def clear_reach(ha: float, hb: float, overlap: bool, gap: float) -> int:
    """``clear_rule`` as a square: the k (-1 for none) such that the offsets with max(|dx|, |dy|)
    <= k steps are exactly those ruled out (no ``overlap``) or allowed (``overlap``). The rule is
    a separation per axis, symmetric and monotone in |offset|, so it is such a square (checked)."""
    rule = clear_rule(ha, hb, overlap, gap)
    inside = rule[GRID - 1, GRID - 1:] if overlap else ~rule[GRID - 1, GRID - 1:]  # dy = 0, dx >= 0
    k = int(inside.sum()) - 1
    d = np.abs(np.arange(SPAN) - (GRID - 1))
    square = (d[:, None] <= k) & (d[None, :] <= k)
    if not np.array_equal(rule, square if overlap else ~square):  # pragma: no cover - by construction
        raise AssertionError(f"clear_rule({ha}, {hb}, {overlap}, {gap}) is not a square")
    return k


@lru_cache(maxsize=256)
def room_rule(room: float) -> np.ndarray:
    """(SPAN, SPAN) bool: offsets at least ``room`` long. Read-only."""
    dx, dy = np.meshgrid(_D, _D, indexing="xy")
    return _frozen(np.hypot(dx, dy) >= room)


def window(rule: np.ndarray, first: int, n: int, cell: tuple[int, int]) -> np.ndarray:
    """The (n, n) part of an offset ``rule`` for candidate cells ``first .. first + n - 1`` on both
    axes (rows y, columns x) against an object at grid ``cell`` = (column, row)."""
    cx, cy = cell
    y0, x0 = first - cy + GRID - 1, first - cx + GRID - 1
    return rule[y0:y0 + n, x0:x0 + n]
