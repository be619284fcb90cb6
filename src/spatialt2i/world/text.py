"""Natural, varied prompt text for a scene.

Each relation can be said many ways, including from the other object's side ("the blue square
has the red star on its left"). The choices are drawn once per pair as a ``Style`` and reused for
the perturbed scene, so the two prompts of a pair differ only where the scene differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scene import Relation, Scene

# {a}, {b}, {c}: object mentions. Templates of a kind are read as "kind(a, b[, c])".
TEMPLATES: dict[str, list[str]] = {
    "left_of": ["{a} is to the left of {b}", "{a} sits left of {b}", "{a} is placed on the left side of {b}",
                "to the left of {b} is {a}", "{b} has {a} on its left", "{b} is to the right of {a}",
                "{a} appears left of {b}"],
    "right_of": ["{a} is to the right of {b}", "{a} sits right of {b}", "{a} is placed on the right side of {b}",
                 "to the right of {b} is {a}", "{b} has {a} on its right", "{b} is to the left of {a}",
                 "{a} appears right of {b}"],
    "above": ["{a} is above {b}", "{a} floats above {b}", "{a} is placed higher than {b}", "above {b} is {a}",
              "{b} is below {a}", "{b} lies underneath {a}", "{a} sits over {b}"],
    "below": ["{a} is below {b}", "{a} lies underneath {b}", "{a} is placed lower than {b}", "below {b} is {a}",
              "{b} is above {a}", "{b} floats above {a}", "{a} sits under {b}"],
    "above_left": ["{a} is above and to the left of {b}", "{a} sits to the upper left of {b}",
                   "up and to the left of {b} is {a}", "{b} is below and to the right of {a}",
                   "{a} is diagonally up-left of {b}"],
    "above_right": ["{a} is above and to the right of {b}", "{a} sits to the upper right of {b}",
                    "up and to the right of {b} is {a}", "{b} is below and to the left of {a}",
                    "{a} is diagonally up-right of {b}"],
    "below_left": ["{a} is below and to the left of {b}", "{a} sits to the lower left of {b}",
                   "down and to the left of {b} is {a}", "{b} is above and to the right of {a}",
                   "{a} is diagonally down-left of {b}"],
    "below_right": ["{a} is below and to the right of {b}", "{a} sits to the lower right of {b}",
                    "down and to the right of {b} is {a}", "{b} is above and to the left of {a}",
                    "{a} is diagonally down-right of {b}"],
    "in_front_of": ["{a} is in front of {b}", "{a} partly covers {b}", "{a} overlaps {b} from the front",
                    "{b} is partly hidden behind {a}", "{b} is behind {a}"],
    "behind": ["{a} is behind {b}", "{a} is partly hidden behind {b}", "{a} peeks out from behind {b}",
               "{b} partly covers {a}", "{b} is in front of {a}"],
    "bigger": ["{a} is bigger than {b}", "{a} is larger than {b}", "{b} is smaller than {a}",
               "{a} looks bigger than {b}", "{b} is tinier than {a}"],
    "smaller": ["{a} is smaller than {b}", "{a} is tinier than {b}", "{b} is bigger than {a}",
                "{a} looks smaller than {b}", "{b} is larger than {a}"],
    "between": ["{a} is between {b} and {c}", "{a} sits midway between {b} and {c}",
                "between {b} and {c} lies {a}", "{a} is placed in between {b} and {c}",
                "{a} stands between {b} and {c}"],
    "at": ["{a} rests in the {region}", "{a} is in the {region} of the image", "in the {region} there is {a}",
           "{a} is placed at the {region}", "{a} sits in the {region}"],
}
REGION_WORDS = {
    "center": ["center", "middle"],
    "top-left corner": ["top-left corner", "upper left corner"],
    "top-right corner": ["top-right corner", "upper right corner"],
    "bottom-left corner": ["bottom-left corner", "lower left corner"],
    "bottom-right corner": ["bottom-right corner", "lower right corner"],
    "top edge": ["top edge", "top middle"],
    "bottom edge": ["bottom edge", "bottom middle"],
    "left edge": ["left edge", "middle of the left side"],
    "right edge": ["right edge", "middle of the right side"],
}
OPENERS = ["", "An image of simple shapes on a white background. ", "A flat drawing on a white canvas. ",
           "A minimal scene. ", "Several shapes on a plain white background. "]
JOINS = [". ", "; ", ", and ", ". "]
N_STYLE = 16  # style slots per relation: template, region word, join, size mention


@dataclass(frozen=True)
class Style:
    """Random choices that fix the wording; the same style words a scene and its perturbation alike."""
    values: tuple[int, ...]
    opener: int

    @classmethod
    def draw(cls, rng: np.random.Generator, n_relations: int) -> "Style":
        return cls(tuple(int(v) for v in rng.integers(0, 1 << 30, size=4 * max(n_relations, 1) + 16)),
                   int(rng.integers(len(OPENERS))))

    def pick(self, slot: int, n: int) -> int:
        return self.values[slot % len(self.values)] % n


def _mention(scene: Scene, i: int, seen: set[int], with_size: bool) -> str:
    o = scene.objects[i]
    if i in seen:
        return f"the {o.colour} {o.shape}"
    seen.add(i)
    size = f"{o.size} " if with_size else ""
    return f"a {size}{o.colour} {o.shape}"


def clause(scene: Scene, rel: Relation, style: Style, slot: int, seen: set[int]) -> str:
    """One relation in words; ``slot`` indexes the style's choices for this relation."""
    tpl = TEMPLATES[rel.kind][style.pick(4 * slot, len(TEMPLATES[rel.kind]))]
    with_size = style.pick(4 * slot + 2, 2) == 0
    names = {}
    # mention objects in the order they appear in the template
    order = sorted(range(len(rel.objects)), key=lambda k: tpl.find("{" + "abc"[k] + "}"))
    for k in order:
        names["abc"[k]] = _mention(scene, rel.objects[k], seen, with_size)
    region = ""
    if rel.region is not None:
        words = REGION_WORDS[rel.region]
        region = words[style.pick(4 * slot + 1, len(words))]
    return tpl.format(region=region, **names)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def describe(scene: Scene, style: Style) -> str:
    """The prompt for a scene: every relation once, then any object no relation names."""
    return describe_with_spans(scene, style)[0]


def describe_with_spans(scene: Scene, style: Style) -> tuple[str, list[tuple[int, int]]]:
    """:func:`describe`'s prompt and the character span of each relation's clause in it (in the
    order of ``scene.relations``)."""
    seen: set[int] = set()
    text = OPENERS[style.opener]
    spans: list[tuple[int, int]] = []
    for slot, rel in enumerate(scene.relations):
        words = clause(scene, rel, style, slot, seen)
        if slot == 0:
            words = _cap(words)
        else:
            join = JOINS[style.pick(4 * slot + 3, len(JOINS))]
            text += join
            if join.startswith("."):
                words = _cap(words)
        spans.append((len(text), len(text) + len(words)))
        text += words
    for i in range(len(scene.objects)):
        if i not in seen:
            text += (". There is also " + _mention(scene, i, seen, True) if scene.relations or i > 0
                     else _cap(_mention(scene, i, seen, True)))
    return text + ".", spans


def relation_text(scene: Scene, rel: Relation) -> str:
    """A plain, canonical statement of one relation (used for perturbation records and judges)."""
    names = [f"the {scene.objects[i].colour} {scene.objects[i].shape}" for i in rel.objects]
    tpl = TEMPLATES[rel.kind][0]
    return tpl.format(a=names[0], b=names[1] if len(names) > 1 else "", c=names[2] if len(names) > 2 else "",
                      region=rel.region or "")
