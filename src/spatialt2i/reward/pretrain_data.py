"""World pretraining data of the tiny VLM backbone: samples (image + worded clauses + targets).

:class:`WorldSampler` takes scenes from its pool of solved layouts (``reward/pretrain_scenes.py``) and
words them like the world's prompts -- object lists, relation statements (some clauses false) and yes/no
questions -- with the targets of ``reward/pretrain.py`` (clause truth, per-mention gather, comparison,
matching) and of the attention hints (``reward/attn_hints.py``). Batching them: ``reward/pretrain_batch.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..world.render import render
from ..world.sample import _state, true_relations
from ..world.scene import Obj, Relation, Scene
from ..world.text import JOINS, OPENERS, REGION_WORDS, TEMPLATES
from ..world.truth import relation_holds
from ..world.vocab import COLOURS, FLIP, OPPOSITE_REGION, SHAPES, SIZES
from .backbone import REWARD_TOKEN
from .occlusion import object_occlusion, occlusion_maps
from .pretrain_scenes import AXIS, GROUP_OF, LayoutPool, _visible
from .prompt import DEFAULT_INSTRUCTION

if TYPE_CHECKING:
    from .pretrain import PretrainConfig

GROUP_WEIGHTS = {"axis": 0.3, "diagonal": 0.15, "placement": 0.14, "depth": 0.12, "size": 0.12, "between": 0.17}
SIZE_NAMES = tuple(SIZES)
NCELL = 8
N_MENTION = 2 * NCELL + len(SIZE_NAMES) + 1
CMP_LEVEL = 0.04                     # |centre difference| below this counts as level


def group_weights_of(over: dict[str, float] | None) -> dict[str, float]:
    """:data:`GROUP_WEIGHTS` with ``over`` on top (relative weights of the relation groups asked about)."""
    w = dict(GROUP_WEIGHTS)
    for g, v in (over or {}).items():
        if g not in GROUP_WEIGHTS:
            raise ValueError(f"group_weights: unknown relation group {g!r} (one of {', '.join(GROUP_WEIGHTS)})")
        if not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"group_weights.{g}: must be a number >= 0, got {v!r}")
        w[g] = float(v)
    if not any(w.values()):
        raise ValueError("group_weights: at least one relation group needs a weight > 0")
    return w


# ----------------------------------------------------------------------------------------------------
# data: clauses, samples, targets
# ----------------------------------------------------------------------------------------------------

@dataclass
class Clause:
    text: str
    truth: int                               # 1 true, 0 false
    mentions: list[tuple[int, int]]          # (char offset of the mention's last char, image object or -1)


@dataclass
class Sample:
    image: Any
    text: str                                # full chat text with one <|image_pad|> placeholder
    truth: list[tuple[int, int]]             # (char of the clause's last char, 0/1)
    mentions: list[tuple[int, ...]]          # (char, present, xcell, ycell, size, hidden, hiding); -1: unknown
    answers: list[tuple[int, int]]           # (char of the answer's first char, 0 yes / 1 no)
    lm_span: tuple[int, int] | None          # chars whose tokens get the LM loss
    kind: str
    # attention hints (reward/attn_hints.py): (shape char, colour char, box in the image or None)
    grounds: list[tuple[int, int, tuple[float, float, float, float] | None]] = field(default_factory=list)
    # (query char, query predicts the answer starting there, shape char of each role, (cmp x, cmp y))
    # cmp = where role a lies from role b along the axis: 0 before, 1 level, 2 after; -1 unknown
    roles: list[tuple[int, bool, tuple[int, ...], tuple[int, int]]] = field(default_factory=list)
    # image-text matching: (char of the <reward> token, 1 if every clause is true)
    itm: list[tuple[int, int]] = field(default_factory=list)
    # pixel maps of reward/occlusion.py (colour hidden, colour hiding it), when the sampler makes them
    occlusion: tuple[np.ndarray, np.ndarray] | None = None


def _canonical(rel: Relation) -> Relation:
    """An axis relation stated with "left of" / "above" (right_of(a, b) -> left_of(b, a))."""
    canon = {"right_of": "left_of", "below": "above"}
    if rel.kind in canon:
        return Relation(canon[rel.kind], rel.objects[::-1])
    return rel


class WorldSampler:
    """Training/eval samples: scenes from ``layouts`` (a :class:`LayoutPool` on the sampler's own ``rng``),
    worded into clauses, questions and object lists with their targets."""

    def __init__(self, tokenizer: Any, seed: int, pool: int = 1500, refresh: int = 2, colour_marks: bool = True,
                 group_weights: dict[str, float] | None = None, p_overlap: float = 0.0,
                 occlusion: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.colour_marks = colour_marks
        self.tok = tokenizer
        self.layouts = LayoutPool(self.rng, pool, refresh, p_overlap)
        self.p_canonical = 0.0       # share of easy clauses in canonical wording (set by the curriculum)
        self.weights = group_weights_of(group_weights)
        self.occlusion = occlusion   # make the targets of reward/occlusion.py
        self._occ: tuple[Scene | None, list[tuple[int, int]]] = (None, [])

    # -- relations and truth
    @staticmethod
    def judge(image: Scene, text: Scene, rel: Relation) -> int | None:
        """Truth in ``image`` of ``rel`` stated about ``text``'s names: 1, 0 (beyond doubt) or None."""
        where = {(o.colour, o.shape): i for i, o in enumerate(image.objects)}
        mapped = []
        for j in rel.objects:
            o = text.objects[j]
            if (o.colour, o.shape) not in where:
                return 0
            mapped.append(where[(o.colour, o.shape)])
        r = Relation(rel.kind, tuple(mapped), rel.region)
        if relation_holds(image, r, 1.0):
            return 1
        if not relation_holds(image, r, -1.0):
            return 0
        return None

    def _false_of(self, rel: Relation, n: int) -> Relation:
        rng = self.rng
        if rel.kind in FLIP:
            return Relation(FLIP[rel.kind], rel.objects)
        if rel.kind == "at":
            if rng.random() < 0.5:
                return Relation("at", rel.objects, OPPOSITE_REGION[rel.region])
            regs = [r for r in REGION_WORDS if r != rel.region]
            return Relation("at", rel.objects, regs[int(rng.integers(len(regs)))])
        a, b, c = rel.objects
        return Relation("between", (b, a, c)) if rng.random() < 0.5 else Relation("between", (c, b, a))

    def clauses(self, image: Scene, text: Scene, k: int, easy: bool, p_false: float) -> list[tuple[Relation, int]]:
        rng = self.rng
        cands = [r for r in true_relations(image, 1.0) if _visible(image, r)]
        if easy:
            cands = [r for r in cands if r.kind in AXIS]
        by_group: dict[str, list[Relation]] = {}
        for r in cands:
            by_group.setdefault(GROUP_OF[r.kind], []).append(r)
        out: list[tuple[Relation, int]] = []
        used: set[tuple] = set()
        by_group = {g: v for g, v in by_group.items() if self.weights[g] > 0}
        for _ in range(4 * k):
            if len(out) >= k or not by_group:
                break
            groups = sorted(by_group)
            w = np.array([self.weights[g] for g in groups])
            g = groups[int(rng.choice(len(groups), p=w / w.sum()))]
            rel = by_group[g][int(rng.integers(len(by_group[g])))]
            if easy and rng.random() < self.p_canonical:
                # canonical words only ("left of", "above"); a false clause swaps the two objects, so
                # that truth is the plain comparison, before the wording's direction is learned
                rel = _canonical(rel)
                if rng.random() < p_false:
                    rel = Relation(rel.kind, rel.objects[::-1])
            else:
                rel = _state(rel, rng)
                if rng.random() < p_false:
                    rel = self._false_of(rel, len(image.objects))
            key = (frozenset(rel.objects), GROUP_OF[rel.kind])
            if key in used:
                continue
            t = self.judge(image, text, rel)
            if t is None:
                continue
            used.add(key)
            out.append((rel, t))
        return out

    # -- wording
    def word(self, text: Scene, rel: Relation, seen: set[int], easy: bool,
             cap: bool) -> tuple[str, list[tuple[int, int, int]], tuple[int, ...]]:
        """The clause; per role, (last char of the shape word, last char of the colour word, object); and
        the chars of the relation's own words (everything outside the object names)."""
        rng = self.rng
        tpls = TEMPLATES[rel.kind]
        tpl = tpls[0] if easy else tpls[int(rng.integers(len(tpls)))]
        with_size = (not easy) and rng.random() < 0.5
        order = sorted(range(len(rel.objects)), key=lambda q: tpl.find("{" + "abc"[q] + "}"))
        names = {}
        for q in order:
            j = rel.objects[q]
            o = text.objects[j]
            if j in seen or easy:
                names["abc"[q]] = f"the {o.colour} {o.shape}"
            else:
                names["abc"[q]] = f"a {o.size + ' ' if with_size else ''}{o.colour} {o.shape}"
            seen.add(j)
        region = ""
        if rel.region is not None:
            words = REGION_WORDS[rel.region]
            region = words[0] if easy else words[int(rng.integers(len(words)))]
        s = tpl.format(region=region, **names)
        if cap:
            s = s[:1].upper() + s[1:]
        in_name = np.zeros(len(s), dtype=bool)
        for name in names.values():
            p = s.lower().find(name.lower())
            in_name[p:p + len(name)] = True
        rel_chars = tuple(i for i, ch in enumerate(s) if ch.isalnum() and not in_name[i])
        names_at = []
        for j in rel.objects:
            o = text.objects[j]
            pos = s.find(f"{o.colour} {o.shape}")
            names_at.append((pos + len(o.colour) + len(o.shape), pos + len(o.colour) - 1, j))
        return s, names_at, rel_chars

    def _mark(self, image: Scene, text: Scene, base: int, names_at: list[tuple[int, int, int]],
              mentions: list, grounds: list) -> tuple[int, ...]:
        """Gather targets and ground hints of one clause's mentions; returns their shape-word chars."""
        shapes = []
        for cs, cc, j in names_at:
            tgt = self._mention_target(image, text, j)
            mentions.append((base + cs, *tgt))                 # the shape word
            if self.colour_marks:
                mentions.append((base + cc, *tgt))             # the colour word (an easier first hop)
            grounds.append((base + cs, base + cc, self._box(image, text, j)))
            shapes.append(base + cs)
        return tuple(shapes)

    def _text_scene(self, image: Scene, p_swap: float) -> Scene:
        """The scene the text talks about: usually the image's, sometimes with two colours swapped."""
        rng = self.rng
        objs = list(image.objects)
        if len(objs) >= 2 and rng.random() < p_swap:
            for _ in range(6):
                a, b = (int(v) for v in rng.choice(len(objs), 2, replace=False))
                oa, ob = objs[a], objs[b]
                if oa.colour == ob.colour:
                    continue
                new = list(objs)
                new[a] = Obj(oa.shape, ob.colour, oa.size, oa.x, oa.y, oa.depth)
                new[b] = Obj(ob.shape, oa.colour, ob.size, ob.x, ob.y, ob.depth)
                if len({(o.colour, o.shape) for o in new}) == len(new):
                    return Scene(tuple(new))
        return image

    @staticmethod
    def _box(image: Scene, text: Scene, j: int) -> tuple[float, float, float, float] | None:
        o = text.objects[j]
        for im in image.objects:
            if (im.colour, im.shape) == (o.colour, o.shape):
                return (im.x - im.half, im.y - im.half, im.x + im.half, im.y + im.half)
        return None

    def _compare(self, image: Scene, text: Scene, rel: Relation) -> tuple[int, int]:
        """Relation-agnostic comparison target of a clause: where the first object lies from the second
        along x and y (0 smaller, 1 within ``CMP_LEVEL``, 2 larger); (-1, -1) if either is absent."""
        if len(rel.objects) < 2:
            return (-1, -1)
        ba, bb = self._box(image, text, rel.objects[0]), self._box(image, text, rel.objects[1])
        if ba is None or bb is None:
            return (-1, -1)
        dx = (ba[0] + ba[2] - bb[0] - bb[2]) / 2
        dy = (ba[1] + ba[3] - bb[1] - bb[3]) / 2
        return tuple(0 if d < -CMP_LEVEL else (2 if d > CMP_LEVEL else 1) for d in (dx, dy))

    def _mention_target(self, image: Scene, text: Scene, j: int) -> tuple[int, ...]:
        o = text.objects[j]
        occ = self._occluded(image)
        for k, im in enumerate(image.objects):
            if (im.colour, im.shape) == (o.colour, o.shape):
                return (1, min(NCELL - 1, int(im.x * NCELL)), min(NCELL - 1, int(im.y * NCELL)),
                        SIZE_NAMES.index(im.size), *(occ[k] if occ else (-1, -1)))
        return (0, -1, -1, -1, -1, -1)

    def _occluded(self, image: Scene) -> list[tuple[int, int]] | None:
        """Per image object (hidden, hiding) when the sampler makes occlusion targets (cached per image)."""
        if not self.occlusion:
            return None
        if self._occ[0] is not image:
            self._occ = (image, object_occlusion(image))
        return self._occ[1]

    def _sample(self, image: Scene, *args: Any) -> Sample:
        """The Sample of ``image`` rendered at 64 px, with its occlusion maps when asked for."""
        return Sample(render(image, 64), *args, occlusion=occlusion_maps(image) if self.occlusion else None)

    def object_list(self, easy: bool, cfg: PretrainConfig) -> Sample:
        """The image, then its objects named in random order (some absent ones among them).

        The densest gather signal: a target at almost every word, and nothing to compare yet.
        With a single object the gather needs no content match at all (the first rung of the curriculum).
        """
        rng = self.rng
        image = self.layouts.scene(easy, min_k=1)
        present = {(o.colour, o.shape) for o in image.objects}
        objs = list(image.objects)
        n_absent = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
        names = [(c, sh) for c in COLOURS for sh in SHAPES if (c, sh) not in present]
        extra = [names[int(i)] for i in rng.choice(len(names), n_absent, replace=False)]
        items = [(o.colour, o.shape, o.size) for o in objs] + [(c, sh, SIZE_NAMES[int(rng.integers(3))]) for c, sh in extra]
        order = rng.permutation(len(items))
        text_scene = Scene(tuple(Obj(sh, c, sz, 0.5, 0.5) for c, sh, sz in (items[i] for i in order)))
        s = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        start = len(s)
        mentions, grounds = [], []
        for q in range(len(text_scene.objects)):
            o = text_scene.objects[q]
            if q:
                s += ", " if rng.random() < 0.7 else " and "
            art = "the " if rng.random() < 0.5 else f"a {o.size + ' ' if rng.random() < 0.5 else ''}"
            base = len(s) + len(art)
            s += f"{art}{o.colour} {o.shape}"
            self._mark(image, text_scene, base, [(len(o.colour) + len(o.shape), len(o.colour) - 1, q)],
                       mentions, grounds)
        s += "."
        lm = (start, len(s)) if n_absent == 0 else None
        s += "<|im_end|>\n<|im_start|>assistant\n"
        return self._sample(image, s, [], mentions, [], lm, "list", grounds)

    def sample(self, easy: bool, vqa: bool, cfg: PretrainConfig, n_questions: int | None = None) -> Sample:
        rng = self.rng
        for _ in range(20):
            image = self.layouts.scene(easy)
            text = image if easy else self._text_scene(image, cfg.p_name_swap)
            if vqa:
                nq = n_questions or int(rng.integers(1, cfg.max_questions + 1))
                rels = self.clauses(image, text, nq, easy, 0.5)
                if len(rels) < nq:
                    continue
                # balance yes/no
                return self._vqa(image, text, rels, easy)
            k = int(rng.integers(1, (3 if easy else cfg.max_clauses) + 1))
            # many statements all true or with a single false clause: the pairs' hardest case
            u = rng.random()
            p_f = 0.0 if u < 0.4 else (1.0 / k if u < 0.8 else float(rng.uniform(0, 2 * cfg.p_false)))
            rels = self.clauses(image, text, k, easy, p_f)
            if rels:
                return self._statements(image, text, rels, easy, cfg)
        raise RuntimeError("could not sample a scene with usable relations in 20 tries")

    def _vqa(self, image: Scene, text: Scene, rels: list[tuple[Relation, int]], easy: bool) -> Sample:
        s = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        truth, mentions, answers, grounds, roles = [], [], [], [], []
        for q, (rel, t) in enumerate(rels):
            if q:
                s += "<|im_start|>user\n"
            clause, names_at, rel_chars = self.word(text, rel, set(), easy, cap=(not easy) and self.rng.random() < 0.5)
            base = len(s)
            s += clause
            truth.append((len(s) - 1, t))
            shapes = self._mark(image, text, base, names_at, mentions, grounds)
            cmp = self._compare(image, text, rel)
            rc = tuple(base + c for c in rel_chars)
            roles.append((len(s) - 1, False, shapes, cmp, rc))
            s += " ?<|im_end|>\n<|im_start|>assistant\n"
            answers.append((len(s), 0 if t else 1))
            roles.append((len(s), True, shapes, cmp, rc))
            s += ("yes" if t else "no") + "<|im_end|>\n"
        return self._sample(image, s, truth, mentions, answers, None, "vqa", grounds, roles)

    def _statements(self, image: Scene, text: Scene, rels: list[tuple[Relation, int]], easy: bool,
                    cfg: PretrainConfig) -> Sample:
        rng = self.rng
        s = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        if rng.random() < cfg.p_instruction:
            s += DEFAULT_INSTRUCTION
        start = len(s)
        if not easy:
            s += OPENERS[int(rng.integers(len(OPENERS)))]
        seen: set[int] = set()
        truth, mentions, grounds, roles = [], [], [], []
        for q, (rel, t) in enumerate(rels):
            cap = True
            if q:
                join = JOINS[int(rng.integers(len(JOINS)))] if not easy else ". "
                s += join
                cap = join.startswith(".")
            clause, names_at, rel_chars = self.word(text, rel, seen, easy, cap)
            base = len(s)
            s += clause
            truth.append((len(s) - 1, t))
            roles.append((len(s) - 1, False, self._mark(image, text, base, names_at, mentions, grounds),
                          self._compare(image, text, rel), tuple(base + c for c in rel_chars)))
        s += "."
        end = len(s)
        s += "<|im_end|>\n<|im_start|>assistant\n" + REWARD_TOKEN
        all_true = all(t for _, t in rels)
        lm = (start, end) if all_true and rng.random() < cfg.p_caption_lm else None
        return self._sample(image, s, truth, mentions, [], lm, "statements", grounds, roles,
                      [(len(s) - 1, int(all_true))])
