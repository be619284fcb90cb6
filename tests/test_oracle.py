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


def test_specks_and_mostly_hidden_claims_are_not_objects():
    """Colour noise is not a scene: a speck is smaller than any world object, and a blob touching
    other colours cannot be explained as a shape hidden by more than half."""
    from spatialt2i.world.vocab import COLOURS

    s = Scene((Obj("square", "red", "small", 0.5, 0.5),))
    img = np.full((64, 64, 3), 255, np.uint8)
    img[30:33, 30:33] = COLOURS["red"]          # a 3x3 red square: the smallest world square is ~11 px
    assert judge(s, img).present == [False]
    img[24:35, 24:35] = COLOURS["red"]          # an 11x11 one is
    assert judge(s, img).present == [True]
    # a red L covering 31 % of a 12 px square, the rest of the square's box painted other colours
    img = np.full((64, 64, 3), 255, np.uint8)
    img[20:30, 22:32] = [COLOURS["green"], COLOURS["blue"]] * 5
    img[20:32, 20:22] = COLOURS["red"]
    img[30:32, 20:32] = COLOURS["red"]
    assert judge(s, img).present == [False]
    # random colour confetti of 2 px cells rarely holds a plausible object
    rng = np.random.default_rng(0)
    pal = np.array(list(COLOURS.values()) + [(255, 255, 255)] * 4, np.uint8)
    scenes = _scenes(30, 5)
    conf = [pal[rng.integers(0, len(pal), (32, 32))].repeat(2, 0).repeat(2, 1) for _ in scenes]
    assert np.mean([judge(sc, c).presence for sc, c in zip(scenes, conf)]) < 0.6


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


def _blobbed(scene, rng, size=64):
    """A render with a few palette-coloured blobs on top (fragments, occluders, non-square parts)."""
    from PIL import ImageDraw

    from spatialt2i.world.vocab import COLOURS

    img = render(scene, size)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        x, y, w, h = (int(v) for v in rng.integers([0, 0, 2, 2], [size, size, size // 3, size // 3]))
        colour = list(COLOURS.values())[int(rng.integers(len(COLOURS)))]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=colour)
    return img


def test_components_of_matches_labelling_each_colour_alone():
    from scipy import ndimage

    from spatialt2i.world.detect import BG, PALETTE_NAMES, components_of, label_pixels

    rng = np.random.default_rng(3)
    for scene in _scenes(40, 11):
        labels = label_pixels(_blobbed(scene, rng))
        colours = PALETTE_NAMES[:5] + [o.colour for o in scene.objects]
        for colour, (comps, others) in components_of(labels, colours).items():
            mask = labels == PALETTE_NAMES.index(colour)
            if not mask.any():
                assert comps == [] and others is None
                continue
            lab, _ = ndimage.label(mask, np.ones((3, 3), bool))
            want = [(sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1)
                    for k, sl in enumerate(ndimage.find_objects(lab), 1) if (lab[sl] == k).sum() >= 6]
            assert [c.bbox for c in comps] == want
            assert np.array_equal(others, ~mask & (labels != BG))


def test_fit_box_skips_only_sizes_that_cannot_win():
    from spatialt2i.world.detect import _fit_box, components_of, label_pixels

    rng, checked = np.random.default_rng(5), 0
    for scene in _scenes(40, 13):
        labels = label_pixels(_blobbed(scene, rng))
        for colour, (comps, others) in components_of(labels, [o.colour for o in scene.objects]).items():
            for c in comps:
                if c.touching:
                    for shape in ("circle", "star", "triangle"):
                        got = _fit_box(c.mask, others, c.bbox, shape, True, labels.shape)
                        assert got == _fit_box(c.mask, others, c.bbox, shape, True, labels.shape, prune=False)
                        checked += 1
    assert checked > 50


def test_relation_margins_agree_with_the_verdicts_and_grade_them():
    """margin >= 0 exactly where judge says a relation holds (random scenes and their negatives);
    a relation that barely fails grades above one that is far off; a missing object gives None."""
    from spatialt2i.world.oracle import relation_margins, soft_scores

    for s in _scenes(60, 5):
        img = render(s)
        for scene in (s, _negatives(s)):
            v = judge(scene, img, margins=True)
            assert [m is not None and m >= 0 for m in v.margins] == v.relations
            assert relation_margins(scene, img) == v.margins
    a, b = Obj("circle", "red", "small", 0.3, 0.5), Obj("square", "blue", "small", 0.5, 0.5)
    left = Relation("left_of", (0, 1))
    graded = []
    for ax in (0.1, 0.35, 0.65, 0.9):  # the red circle moves right past the blue square
        s = Scene((Obj("circle", "red", "small", ax, 0.5), b), (left,))
        graded.append(relation_margins(s, render(s))[0])
    assert graded[0] > graded[1] > 0 > graded[2] >= graded[3]
    gone = Scene((a, b), (left,))
    img = render(Scene((b,)))
    assert relation_margins(gone, img) == [None]
    assert soft_scores([None, 0.0, 4.0, -4.0], 0.5) == pytest.approx([0.0, 0.5, 0.99966, 0.00034], abs=1e-4)
