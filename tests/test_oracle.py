"""The oracle agrees with the scene graph on rendered images, and stays right under mild noise/blur."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from spatialt2i.data.perturb import flip_relation
from spatialt2i.world.oracle import judge
from spatialt2i.world.render import render
from spatialt2i.world.sample import random_scene
from spatialt2i.world.scene import Obj, Relation, Scene
from spatialt2i.world.vocab import FLIP, RELATIONS


def _negatives(scene):
    """Relations false beyond doubt: the flips of the stated ones (all but 'between')."""
    return scene.with_relations([flip_relation(r) for r in scene.relations if r.kind in FLIP or r.kind == "at"])


def _agreement(scenes, transform=None, rng=None):
    agree = total = 0
    kinds = set()
    for s in scenes:
        img = render(s)
        if transform:
            img = transform(img, rng)
        pos, neg = judge(s, img), judge(_negatives(s), img)
        agree += sum(pos.relations) + sum(not x for x in neg.relations)
        total += len(pos.relations) + len(neg.relations)
        kinds |= {r.kind for r in s.relations}
    return agree, total, kinds


def _scenes(n, seed):
    rng = np.random.default_rng(seed)
    return [random_scene(rng) for _ in range(n)]


def test_oracle_exact_on_random_scenes_fast():
    agree, total, kinds = _agreement(_scenes(150, 7))
    assert agree == total
    assert kinds == set(RELATIONS)


@pytest.mark.slow
def test_oracle_exact_on_2000_random_scenes():
    agree, total, kinds = _agreement(_scenes(2000, 2026))
    assert agree == total, f"{total - agree} of {total} relation verdicts wrong"
    assert kinds == set(RELATIONS)


def noise_and_blur(img, rng, sigma=8.0, radius=0.6):
    """Mild degradation: Gaussian blur (radius 0.6 px) then Gaussian noise (sigma 8 of 255)."""
    img = img.filter(ImageFilter.GaussianBlur(radius))
    a = np.asarray(img, np.float32) + rng.normal(0, sigma, (img.height, img.width, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_oracle_robust_to_mild_noise_and_blur():
    agree, total, _ = _agreement(_scenes(200, 11), noise_and_blur, np.random.default_rng(0))
    assert agree / total >= 0.99, f"{agree}/{total}"


def test_missing_or_wrong_shape_objects_are_absent():
    s = Scene((Obj("star", "red", "large", 0.3, 0.5), Obj("square", "blue", "large", 0.7, 0.5)),
              (Relation("left_of", (0, 1)),))
    assert judge(s, render(s)).all_correct
    # draw a red circle where the prompt wants a red star: the star is absent, the relation fails
    wrong = Scene((Obj("circle", "red", "large", 0.3, 0.5), Obj("square", "blue", "large", 0.7, 0.5)))
    v = judge(s, render(wrong))
    assert v.present == [False, True] and v.relations == [False]
    blank = Image.new("RGB", (64, 64), "white")
    assert judge(s, blank).presence == 0.0


def test_oracle_reads_any_resolution():
    s = _scenes(5, 3)
    for sc in s:
        assert judge(sc, render(sc, 128)).all_correct


def test_violates_agrees_with_judge():
    from spatialt2i.data.perturb import PerturbationFailed, perturb
    from spatialt2i.world.oracle import violates

    rng = np.random.default_rng(5)
    for s in _scenes(40, 8):
        assert not violates(s, render(s))
        try:
            p = perturb(s, rng)
        except PerturbationFailed:
            continue
        img = render(p.scene)
        assert violates(s, img) == (not judge(s, img).all_correct)
        assert violates(s, img, first=[len(s.relations) - 1, 0]) == violates(s, img)


def test_colour_table_is_the_nearest_palette_rule():
    from spatialt2i.world.detect import _lut, _nearest
    g = (np.arange(64) * 4 + 1.5).astype(np.float32)
    assert np.array_equal(_lut(), _nearest(np.stack(np.meshgrid(g, g, g, indexing="ij"), -1)))
