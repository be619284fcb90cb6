"""The world: scene validation, the layout solver, rendering and prompt text."""

import numpy as np
import pytest

from spatialt2i.errors import SpecError, UnsatisfiableSceneError
from spatialt2i.world.layout import solve
from spatialt2i.world.render import id_map, render
from spatialt2i.world.sample import SceneConfig, random_scene
from spatialt2i.world.scene import Obj, Relation, Scene
from spatialt2i.world.text import Style, describe
from spatialt2i.world.truth import all_hold

SPEC = Scene((Obj("star", "red", "large"), Obj("cross", "blue", "medium"), Obj("triangle", "green", "small"),
              Obj("diamond", "purple", "large"), Obj("circle", "pink", "small")),
             (Relation("left_of", (0, 3)), Relation("in_front_of", (1, 0)), Relation("between", (2, 0, 3)),
              Relation("at", (4,), "bottom-left corner"), Relation("bigger", (3, 2))))


def test_solver_satisfies_every_relation_and_is_deterministic():
    a, b = solve(SPEC, 3), solve(SPEC, 3)
    assert a == b
    assert all_hold(a, m=1.0)
    assert solve(SPEC, 4) != a


def test_solver_keeps_fixed_objects():
    placed = solve(SPEC, 0)
    moved = solve(placed.with_relations(SPEC.relations), 1, fixed=[0, 1, 3, 4])
    for i in (0, 1, 3, 4):
        assert (moved.objects[i].x, moved.objects[i].y) == (placed.objects[i].x, placed.objects[i].y)


@pytest.mark.parametrize("rels, needle", [
    ([Relation("left_of", (0, 1)), Relation("left_of", (1, 2)), Relation("right_of", (0, 2))], "cycle"),
    ([Relation("bigger", (2, 0))], "cannot be bigger"),
    ([Relation("in_front_of", (0, 1)), Relation("behind", (0, 1))], "front/behind"),
    ([Relation("at", (0,), "center"), Relation("at", (0,), "top-left corner")], "both at"),
])
def test_unsatisfiable_specs_raise_clear_errors(rels, needle):
    with pytest.raises(UnsatisfiableSceneError, match=needle):
        solve(SPEC.with_relations(rels), 0)


def test_same_colour_occlusion_is_unsatisfiable():
    s = Scene((Obj("star", "red"), Obj("square", "red")), (Relation("in_front_of", (0, 1)),))
    with pytest.raises(UnsatisfiableSceneError, match="share a colour"):
        solve(s)


@pytest.mark.parametrize("bad, needle", [
    ({"objects": [{"shape": "hexagram", "colour": "red"}]}, "unknown shape 'hexagram'"),
    ({"objects": [{"shape": "star", "colour": "mauve"}]}, "unknown colour 'mauve'"),
    ({"objects": [{"shape": "star", "colour": "red", "size": "huge"}]}, "unknown size 'huge'"),
    ({"objects": [{"shape": "star", "colour": "red"}], "relations": [{"kind": "near", "objects": [0, 0]}]},
     "unknown relation 'near'"),
    ({"objects": [{"shape": "star", "colour": "red"}], "relations": [{"kind": "left_of", "objects": [0, 3]}]},
     "out of range"),
    ({"objects": [{"shape": "star", "colour": "red"}, {"shape": "star", "colour": "red"}]}, "unique"),
    ({"objects": [{"shape": "star", "colour": "red"}], "relations": [{"kind": "at", "objects": [0], "region": "moon"}]},
     "unknown region 'moon'"),
    ([1, 2], "expected an object"),
])
def test_bad_specs_name_the_problem(bad, needle):
    with pytest.raises(SpecError, match=needle):
        Scene.from_dict(bad)


def test_scene_json_round_trip():
    s = solve(SPEC, 1)
    assert Scene.from_json(s.to_json()).to_json() == s.to_json()


@pytest.mark.parametrize("size", [32, 64, 128, 512])
def test_render_sizes(size):
    img = render(solve(SPEC, 0), size)
    assert img.size == (size, size)


@pytest.mark.parametrize("size", [16, 513, 64.5])
def test_render_rejects_bad_sizes(size):
    with pytest.raises(SpecError, match="image size"):
        render(solve(SPEC, 0), size)


def test_occlusion_is_drawn_in_depth_order():
    s = solve(SPEC, 2)
    ids = id_map(s, 64)
    front, back = 1, 0  # the cross is in front of the star
    assert (ids == front + 1).sum() > 0 and (ids == back + 1).sum() > 0
    assert s.objects[front].depth > s.objects[back].depth


def test_text_mentions_every_object_and_varies():
    rng = np.random.default_rng(0)
    s = solve(SPEC, 0)
    texts = {describe(s, Style.draw(rng, len(s.relations))) for _ in range(6)}
    assert len(texts) == 6
    for t in texts:
        for o in s.objects:
            assert f"{o.colour} {o.shape}" in t


def test_random_scenes_support_many_relations_and_objects():
    rng = np.random.default_rng(1)
    cfg = SceneConfig(relations={10: 1.0}, min_objects=8, max_objects=8)
    s = random_scene(rng, cfg)
    assert len(s.relations) == 10 and len(s.objects) == 8
    assert all_hold(s, m=1.0)
    words = len(describe(s, Style.draw(rng, 10)).split())
    assert words > 60


def test_pick_draws_like_numpy_choice():
    from spatialt2i.world.sample import pick
    for seed in range(200):
        w = np.random.default_rng(seed).random(1 + seed % 9) + 1e-9
        a, b = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 1])
        assert [pick(a, w) for _ in range(5)] == [int(b.choice(len(w), p=w / w.sum())) for _ in range(5)]


def test_directional_scalar_path_matches_arrays():
    """One pair of boxes (floats) takes a float path; it must agree exactly with the array path."""
    from spatialt2i.world import geometry as G
    rng = np.random.default_rng(0)
    n = 4000
    ax, ay, bx, by = (np.round(rng.random(n), 2) for _ in range(4))
    sa, sb = rng.random(n) * 0.4, rng.random(n) * 0.4
    bx[:200], by[:100] = ax[:200], ay[:100]  # zero offsets on one or both axes
    dxa, dya = G._axis_parts(ax, ay, sa, bx, by, sb)
    for i in range(n):
        assert G._axis_parts(float(ax[i]), ay[i], sa[i], bx[i], by[i], sb[i]) == (dxa[i], dya[i])
    for kind in ("left_of", "below_right", "above"):
        for m in (0.0, 1.0):
            arr = G.directional(kind, (ax, ay, sa), (bx, by, sb), m)
            assert all(bool(G.directional(kind, (ax[i], ay[i], sa[i]), (bx[i], by[i], sb[i]), m)) == arr[i]
                       for i in range(n))
