"""Perturbations: each kind changes the scene spatially, minimally, and breaks the original prompt."""

import numpy as np
import pytest

from spatialt2i.data.perturb import KINDS, PerturbationFailed, breaks, flip_relation, perturb
from spatialt2i.world.oracle import judge
from spatialt2i.world.render import render
from spatialt2i.world.sample import random_scene
from spatialt2i.world.scene import Relation
from spatialt2i.world.truth import all_hold


def _perturbed(kind, n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        s = random_scene(rng)
        try:
            out.append((s, perturb(s, rng, kind)))
        except PerturbationFailed:
            continue
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_breaks_the_prompt_and_keeps_its_own(kind):
    for scene, p in _perturbed(kind):
        assert p.kind == kind
        assert all_hold(p.scene, m=1.0)              # the perturbed prompt is true of the rejected image
        assert breaks(scene, p.scene)                # ... and the original prompt is not
        assert not judge(scene, render(p.scene)).all_correct
        assert 1 <= len(p.records) <= 3
        assert all(set(r) == {"type", "before", "after"} and r["before"] != r["after"] for r in p.records)


def test_flip_moves_at_most_the_flipped_relations_objects():
    for scene, p in _perturbed("flip", 10, seed=3):
        moved = {i for i, (a, b) in enumerate(zip(scene.objects, p.scene.objects)) if (a.x, a.y) != (b.x, b.y)}
        changed = [i for i, (a, b) in enumerate(zip(scene.relations, p.scene.relations)) if a != b]
        assert len(changed) == 1
        assert moved <= set(scene.relations[changed[0]].objects)


def test_multi_flips_two_or_three_relations():
    counts = {len(p.records) for _, p in _perturbed("multi", 12, seed=5)}
    assert counts <= {2, 3} and counts


def test_attribute_swaps_colours_in_place():
    for scene, p in _perturbed("attribute", 6, seed=2):
        for a, b in zip(scene.objects, p.scene.objects):
            assert (a.x, a.y, a.shape) == (b.x, b.y, b.shape)
        assert sorted(o.colour for o in scene.objects) == sorted(o.colour for o in p.scene.objects)


def test_flip_relation_table():
    assert flip_relation(Relation("left_of", (0, 1))) == Relation("right_of", (0, 1))
    assert flip_relation(Relation("at", (0,), "top-left corner")).region == "bottom-right corner"
    assert flip_relation(Relation("between", (0, 1, 2))) == Relation("between", (1, 0, 2))
    with pytest.raises(ValueError, match="unknown perturbation kind"):
        perturb(random_scene(np.random.default_rng(0)), np.random.default_rng(0), "rotate")
