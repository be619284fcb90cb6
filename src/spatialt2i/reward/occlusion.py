"""Occlusion targets for the world pretraining of the tiny VLM backbone (``w_occlusion``).

The world draws "in front of" / "behind" only through occlusion: where two shapes overlap, the front
one's colour shows. A few pixels decide it, and the backbone trained on clause truth alone stayed at
chance on these relations (``benchmarks/clause_errors.py``) while it learned every other kind. These
dense targets supervise the missing step, from the scene's geometry:

* per visual token (a cell of the merged grid), for each colour: whether an object of that colour is
  partly hidden inside the cell, and whether an object of that colour hides another there;
* per object mention: whether the named object is partly hidden by another, and whether it hides
  another (read at its shape word, where the gather already brings its visual tokens).

Overlaps of two objects of one colour show nothing in the pixels and count as no occlusion.
"""

from __future__ import annotations

import numpy as np

from ..world.render import full_mask, id_map
from ..world.scene import Scene
from ..world.vocab import COLOURS

COLOUR_INDEX = {c: i for i, c in enumerate(COLOURS)}
NCOL = len(COLOURS)
MIN_PIXELS = 2        # hidden pixels for an object to count as hidden (and for its coverer as hiding)


def occlusion_maps(scene: Scene, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two (size, size) int8 maps: the colour index of an object hidden at each pixel, and of the
    object that hides it there (-1: nothing hidden). With three objects stacked, the last one listed wins."""
    ids = id_map(scene, size).astype(np.int64) - 1
    col = np.array([COLOUR_INDEX[o.colour] for o in scene.objects] + [-1], dtype=np.int64)
    front = col[ids]                                   # colour shown at each pixel (-1 background: ids = -1)
    hid = np.full((size, size), -1, dtype=np.int8)
    cov = np.full((size, size), -1, dtype=np.int8)
    for i, o in enumerate(scene.objects):
        m = full_mask(o, size) & (ids >= 0) & (ids != i) & (front != col[i])
        hid[m] = col[i]
        cov[m] = front[m]
    return hid, cov


def object_occlusion(scene: Scene, size: int = 64, min_pixels: int = MIN_PIXELS) -> list[tuple[int, int]]:
    """Per object: (partly hidden by another, hides part of another), as 0/1."""
    ids = id_map(scene, size).astype(np.int64) - 1
    cols = [o.colour for o in scene.objects]
    hidden = [0] * len(cols)
    hiding = [0] * len(cols)
    for i, o in enumerate(scene.objects):
        m = full_mask(o, size) & (ids >= 0) & (ids != i)
        if not m.any():
            continue
        for j, n in zip(*np.unique(ids[m], return_counts=True)):
            if cols[j] != cols[i] and n >= min_pixels:
                hidden[i] = 1
                hiding[int(j)] = 1
    return list(zip(hidden, hiding))


def cell_targets(hid: np.ndarray, cov: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows * cols, 2 * NCOL) float32, row-major cells: colour c partly hidden in the cell (first
    NCOL), colour c hiding another there (last NCOL)."""
    h, w = hid.shape
    if h % rows or w % cols:
        raise ValueError(f"occlusion maps of {h}x{w} pixels do not split into a {rows}x{cols} grid")
    out = np.zeros((rows, cols, 2 * NCOL), dtype=np.float32)
    for k, m in enumerate((hid, cov)):
        cells = m.reshape(rows, h // rows, cols, w // cols).transpose(0, 2, 1, 3).reshape(rows, cols, -1)
        r, c, p = np.nonzero(cells >= 0)
        out[r, c, k * NCOL + cells[r, c, p].astype(np.int64)] = 1.0
    return out.reshape(rows * cols, 2 * NCOL)
