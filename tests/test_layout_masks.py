"""The solver's grid masks (world.offsets) and the re-layout feasibility test (world.feasible)."""

import numpy as np
import pytest

from spatialt2i.data.perturb import _movers, flip_relation
from spatialt2i.errors import UnsatisfiableSceneError
from spatialt2i.world import geometry as G
from spatialt2i.world.feasible import may_solve
from spatialt2i.world.layout import DEPTH_KINDS, GAP, _filter, _grid, _partners, prepare
from spatialt2i.world.offsets import grid_cell
from spatialt2i.world.sample import random_scene


def _reference_filter(scene, i, placed, depth_partners, rels, m):
    """The solver's filter written plainly: every rule in floats on every grid centre."""
    hi = scene.objects[i].half
    cand = _grid(hi)
    keep = np.ones(len(cand), bool)
    for j, (x, y) in placed.items():
        sep = np.maximum(np.abs(cand[:, 0] - x), np.abs(cand[:, 1] - y)) - (hi + scene.objects[j].half)
        keep &= sep < -0.01 if j in depth_partners else sep >= GAP
    for r in rels:
        if r.kind == "between" and r.objects[0] != i:
            other = [j for j in r.objects[1:] if j != i][0]
            if other in placed:
                room = (hi + scene.objects[other].half + 2 * scene.objects[r.objects[0]].half + 2 * GAP) / 0.85
                keep &= np.hypot(cand[:, 0] - placed[other][0], cand[:, 1] - placed[other][1]) >= room
        if r.kind in DEPTH_KINDS or not all(j == i or j in placed for j in r.objects):
            continue
        geo = [(cand[:, 0], cand[:, 1], 2 * hi) if j == i else (*placed[j], 2 * scene.objects[j].half)
               for j in r.objects]
        keep &= np.broadcast_to(G.box_relation(r.kind, geo, tuple(range(len(geo))), r.region, m), keep.shape)
    return cand[keep]


@pytest.mark.parametrize("off_grid", [False, True])
def test_filter_masks_match_the_float_rules(off_grid):
    checked = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        scene = prepare(random_scene(rng))
        for i in range(len(scene.objects)):
            placed = {j: (o.x, o.y) for j, o in enumerate(scene.objects) if j != i and rng.random() < 0.7}
            if off_grid:  # objects placed by hand, off the solver's grid
                placed = {j: (x + 0.003, y - 0.002) for j, (x, y) in placed.items()}
            depth_partners, rels = _partners(scene, i)
            got = _filter(scene, i, placed, depth_partners, rels, 1.0)
            want = _reference_filter(scene, i, placed, depth_partners, rels, 1.0)
            assert np.array_equal(got, want)
            checked += len(want) > 0
    assert checked > 10


def test_grid_cell():
    assert grid_cell(0.5 / 64, 63.5 / 64) == (0, 63)
    assert grid_cell(0.5, 0.5) is None
    assert grid_cell(10.5 / 64 + 1e-9, 0.5 / 64) is None


def _some_pair_fits(scene, a, b, fixed):
    placed = {j: (scene.objects[j].x, scene.objects[j].y) for j in fixed}
    (dpa, ra), (dpb, rb) = _partners(scene, a), _partners(scene, b)
    for x, y in _filter(scene, a, placed, dpa, ra, 1.0):
        if len(_filter(scene, b, {**placed, a: (x, y)}, dpb, rb, 1.0)):
            return True
    return False


def test_may_solve_only_rules_out_layouts_no_solve_finds():
    ruled_out = 0
    for seed in range(15):
        scene = random_scene(np.random.default_rng(seed))
        for k, r in enumerate(scene.relations):
            if r.kind in ("bigger", "smaller", "at"):
                continue
            rels = list(scene.relations)
            rels[k] = flip_relation(r)
            try:
                target = prepare(scene.with_relations(rels))
            except UnsatisfiableSceneError:
                continue
            a, b = _movers(r)[:2]
            fixed = [j for j in range(len(scene.objects)) if j not in (a, b)]
            if not may_solve(target, fixed):
                ruled_out += 1
                assert not _some_pair_fits(target, a, b, fixed)
    assert ruled_out > 5


def test_reaches_matches_every_pair():
    from spatialt2i.world.feasible import DIRECT_MAX, SAMPLE, _cells, reaches
    from spatialt2i.world.offsets import GRID, SPAN

    rng = np.random.default_rng(0)
    centres = (np.arange(GRID) + 0.5) / GRID
    sizes = [(5, 7), (90, 60), (300, 200), (2500, 1500)]  # direct, sampled, and FFT-sized sets
    assert sizes[1][0] * sizes[1][1] > SAMPLE and sizes[-1][0] * sizes[-1][1] > DIRECT_MAX
    for na, nb in sizes:
        for density in (0.0005, 0.01, 0.3):
            a, b = (np.stack([rng.choice(centres, k), rng.choice(centres, k)], 1) for k in (na, nb))
            ok = rng.random((SPAN, SPAN)) < density
            (ya, xa), (yb, xb) = _cells(a), _cells(b)
            want = bool(ok[ya[:, None] - yb[None, :] + GRID - 1, xa[:, None] - xb[None, :] + GRID - 1].any())
            assert reaches(a, b, ok) == want
