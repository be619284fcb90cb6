"""World pretraining of the tiny Qwen2.5-VL reward backbone (``spatialt2i world pretrain-vlm``).

The paper fine-tunes a *pretrained* VLM into SpatialScore; the world's backbone gets its
pretraining here, on freshly rendered scenes, with dense objectives (all teacher-forced, one
forward pass per batch):

* **statements** -- the image, then a prompt-like list of 1-8 relation clauses worded exactly like
  the world's prompts (``world.text`` templates, "a small red circle" / "the red circle" mentions,
  the same joins and openers, sometimes after the reward instruction). Some clauses are false:
  a true relation flipped (left <-> right, corner to corner, ...) and checked false beyond doubt, or
  a mention that names a colour+shape the image does not have (text-side colour swaps, like the
  ``attribute`` perturbation). Targets:

  - *clause truth* at the clause's last token (a linear probe, training only);
  - *gather* at each object mention (its shape word): the named object's x cell, y cell (8 each),
    size and whether it is in the image at all -- from the middle layer and from the last layer.
    This supervises the step the earlier trials could not learn ("gather each named object's
    position into the text by content"); coordinates are only targets, never inputs;
  - language modelling of the whole text when every clause is true (a caption).

* **VQA** -- 1-4 chat turns "<clause> ?" -> "yes"/"no" on one image (LM loss on the answer, plus
  the clause-truth probe at the clause's last token).

Optional objectives (the shipped presets turn them on; all off by default):

* ``w_hint`` -- *attention hints* (``reward/attn_hints.py``): chosen heads are told where to look --
  a shape word at its colour word, then at its object's visual tokens; a clause's last token (and
  the token that predicts a VQA answer) at the shape words of the relation's objects and, evenly,
  at its relation words. This is the step the earlier trials never formed by themselves.
* ``w_cmp`` -- at the same query tokens, a relation-agnostic comparison: does the first object lie
  before, level with or after the second along x and along y.
* ``w_itm`` -- statements end with the ``<reward>`` token, where a probe predicts whether every
  clause is true (image-text matching at the position the reward model reads).

Curriculum: during the first ``curriculum`` share of the run, most samples are easy -- 2-3 objects,
left/right/above/below only, canonical wording -- then the full world distribution, with
``p_easy_end`` of easy samples kept. For the first ``canonical`` share, easy clauses say only
"left of" / "above" and false ones swap the two objects, so truth is the plain comparison before
the wording's direction has to be learned.

Vision: the tiny model needs centred, normalised visual tokens with absolute (row, col) features
(``reward/posfeat.py``), an optional part that the saved folder carries and the full-scale path
never uses. The probes are not part of the saved model.

Metrics on held-out scenes every ``eval_every`` minutes: VQA yes/no accuracy (LM argmax over
yes/no; full distribution and easy), clause-truth probe accuracy, gather x/y accuracy, and the
zero-shot pair accuracy (``reward/zeroshot.py``) on a pair dataset's test split when one is given.
Training resumes from ``OUT/_train/state.pt`` after a kill (``--resume``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsatisfiableSceneError
from ..world.render import render
from ..world.sample import _state, random_scene, true_relations
from ..world.scene import Obj, Relation, Scene
from ..world.text import JOINS, OPENERS, REGION_WORDS, TEMPLATES
from ..world.truth import relation_holds
from ..world.vocab import COLOURS, FLIP, OPPOSITE_REGION, SHAPES, SIZES
from . import posfeat
from .attn_hints import Hints, box_cell_weights, default_layers, hint_losses
from .backbone import REWARD_TOKEN
from .prompt import DEFAULT_INSTRUCTION

AXIS = ("left_of", "right_of", "above", "below")
GROUPS = {"axis": AXIS, "diagonal": ("above_left", "above_right", "below_left", "below_right"),
          "placement": ("at",), "depth": ("in_front_of", "behind"), "size": ("bigger", "smaller"),
          "between": ("between",)}
GROUP_OF = {k: g for g, ks in GROUPS.items() for k in ks}
GROUP_WEIGHTS = {"axis": 0.3, "diagonal": 0.15, "placement": 0.14, "depth": 0.12, "size": 0.12, "between": 0.17}
SIZE_NAMES = tuple(SIZES)
NCELL = 8
N_MENTION = 2 * NCELL + len(SIZE_NAMES) + 1
STATE_DIR = "_train"
CMP_LEVEL = 0.04                     # |centre difference| below this counts as level


@dataclass
class PretrainConfig:
    size: str = "small"
    text_layers: int = 0             # > 0: override the size's number of text layers
    minutes: float = 45.0            # training time (evaluation excluded)
    batch: int = 24                  # sequences per step
    lr: float = 1e-3
    min_lr_frac: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.05
    p_list_start: float = 0.6        # share of object-list batches at the start (decays over the curriculum)
    p_list_end: float = 0.1          # ... and after it
    p_vqa: float = 0.4               # share of VQA batches among the rest (the others: statements)
    max_questions: int = 4
    max_clauses: int = 8
    p_false: float = 0.4             # chance that a clause is made false
    p_name_swap: float = 0.15        # chance that a sequence's text swaps two objects' colours
    p_instruction: float = 0.15      # statements preceded by the reward instruction
    colour_marks: bool = True        # gather targets on the colour word too, not only the shape word
    p_caption_lm: float = 1.0        # chance that a statements sequence with every clause true gets an LM loss
    curriculum: float = 0.25         # share of the run with mostly easy samples (decays to p_easy_end)
    coord_scale: float = 0.0         # fixed coordinate code on the visual tokens (reward/posfeat.py)
    canonical: float = 0.0           # share of the run over which easy clauses move from canonical wording to all
    p_easy_end: float = 0.0          # share of easy samples kept after the curriculum
    pool: int = 1500                 # layouts kept; each is re-used under flips/transposes/new names
    pool_refresh: int = 2            # new layouts per step
    w_truth: float = 1.0
    w_vqa: float = 1.0
    w_mention: float = 1.0
    w_mention_mid: float = 0.5
    w_lm: float = 0.1
    w_cmp: float = 0.0               # relation-agnostic comparison of a clause's first two objects
    w_itm: float = 0.0               # image-text matching at the <reward> token after statements
    w_hint: float = 0.0              # attention hints (reward/attn_hints.py); > 0 trains with eager attention
    eval_every: float = 5.0          # minutes of training between evaluations
    eval_questions: int = 400
    eval_pairs: int = 200            # zero-shot pairs (0: skip)
    checkpoint_every: float = 3.0    # minutes
    pairs_data: str = ""             # pair dataset for the zero-shot metric (test split)
    seed: int = 0
    threads: int = 1


def load_config(path_or_preset: str | None, **overrides: Any) -> PretrainConfig:
    from ..config import from_dict, load_yaml

    data = load_yaml(path_or_preset) if path_or_preset else {}
    cfg = from_dict(PretrainConfig, data, str(path_or_preset or "config"))
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


# ----------------------------------------------------------------------------------------------------
# data: scenes, clauses, targets
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
    mentions: list[tuple[int, int, int, int, int]]   # (char, present, xcell, ycell, size)
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


def _relabel(rng: np.random.Generator, objs: Sequence[Obj]) -> list[Obj]:
    names = [(c, s) for c in COLOURS for s in SHAPES]
    idx = rng.choice(len(names), size=len(objs), replace=False)
    return [Obj(names[k][1], names[k][0], o.size, o.x, o.y, o.depth) for o, k in zip(objs, idx)]


def _canonical(rel: Relation) -> Relation:
    """An axis relation stated with "left of" / "above" (right_of(a, b) -> left_of(b, a))."""
    canon = {"right_of": "left_of", "below": "above"}
    if rel.kind in canon:
        return Relation(canon[rel.kind], rel.objects[::-1])
    return rel


def _transform(rng: np.random.Generator, objs: Sequence[Obj]) -> list[Obj]:
    g = int(rng.integers(8))
    out = []
    for o in objs:
        x, y = o.x, o.y
        if g & 1:
            x = 1 - x
        if g & 2:
            y = 1 - y
        if g & 4:
            x, y = y, x
        out.append(o.at(x, y))
    return out


class WorldSampler:
    """Training/eval samples from a pool of solved layouts, varied by flips, transposes and new names."""

    def __init__(self, tokenizer: Any, seed: int, pool: int = 1500, refresh: int = 2, colour_marks: bool = True) -> None:
        self.rng = np.random.default_rng(seed)
        self.colour_marks = colour_marks
        self.tok = tokenizer
        self.pool_size, self.refresh = pool, refresh
        self.pool: list[tuple[Obj, ...]] = []
        self.p_canonical = 0.0       # share of easy clauses in canonical wording (set by the curriculum)

    # -- layouts
    def _layout(self) -> tuple[Obj, ...]:
        while True:
            try:
                return random_scene(self.rng).objects
            except UnsatisfiableSceneError:
                continue

    def fill(self, n: int | None = None) -> None:
        while len(self.pool) < (n or self.pool_size):
            self.pool.append(self._layout())

    def step(self) -> None:
        for _ in range(self.refresh):
            lay = self._layout()
            if len(self.pool) < self.pool_size:
                self.pool.append(lay)
            else:
                self.pool[int(self.rng.integers(len(self.pool)))] = lay

    def scene(self, easy: bool, min_k: int = 2) -> Scene:
        rng = self.rng
        objs = list(self.pool[int(rng.integers(len(self.pool)))])
        if easy:
            k = int(rng.integers(min_k, 4))
            keep = sorted(rng.choice(len(objs), size=min(k, len(objs)), replace=False))
            objs = [objs[i] for i in keep]
        elif rng.random() < 0.25 and len(objs) > 2:
            k = int(rng.integers(2, len(objs) + 1))
            keep = sorted(rng.choice(len(objs), size=k, replace=False))
            objs = [objs[i] for i in keep]
        objs = _relabel(rng, _transform(rng, objs))
        return Scene(tuple(objs))

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
        cands = true_relations(image, 1.0)
        if easy:
            cands = [r for r in cands if r.kind in AXIS]
        by_group: dict[str, list[Relation]] = {}
        for r in cands:
            by_group.setdefault(GROUP_OF[r.kind], []).append(r)
        out: list[tuple[Relation, int]] = []
        used: set[tuple] = set()
        for _ in range(4 * k):
            if len(out) >= k or not by_group:
                break
            groups = sorted(by_group)
            w = np.array([GROUP_WEIGHTS[g] for g in groups])
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

    def _mention_target(self, image: Scene, text: Scene, j: int) -> tuple[int, int, int, int]:
        o = text.objects[j]
        for im in image.objects:
            if (im.colour, im.shape) == (o.colour, o.shape):
                return (1, min(NCELL - 1, int(im.x * NCELL)), min(NCELL - 1, int(im.y * NCELL)),
                        SIZE_NAMES.index(im.size))
        return (0, -1, -1, -1)

    def object_list(self, easy: bool, cfg: PretrainConfig) -> Sample:
        """The image, then its objects named in random order (some absent ones among them).

        The densest gather signal: a target at almost every word, and nothing to compare yet.
        With a single object the gather needs no content match at all (the first rung of the curriculum).
        """
        rng = self.rng
        image = self.scene(easy, min_k=1)
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
        return Sample(render(image, 64), s, [], mentions, [], lm, "list", grounds)

    def sample(self, easy: bool, vqa: bool, cfg: PretrainConfig, n_questions: int | None = None) -> Sample:
        rng = self.rng
        for _ in range(20):
            image = self.scene(easy)
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
        return Sample(render(image, 64), s, truth, mentions, answers, None, "vqa", grounds, roles)

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
        return Sample(render(image, 64), s, truth, mentions, [], lm, "statements", grounds, roles,
                      [(len(s) - 1, int(all_true))])


# ----------------------------------------------------------------------------------------------------
# batching
# ----------------------------------------------------------------------------------------------------

def _char_to_token(offsets: Sequence[tuple[int, int]], n_chars: int) -> np.ndarray:
    m = np.full(n_chars + 1, -1, dtype=np.int64)
    for i, (a, b) in enumerate(offsets):
        if b > a:
            m[a:b] = i
    return m


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    truth: torch.Tensor      # (n, 3): row, pos, label
    mention: torch.Tensor    # (m, 6): row, pos, present, x, y, size
    answer: torch.Tensor     # (a, 3): row, pos (predicting), target token id
    answer_cls: torch.Tensor  # (a,): 0 yes / 1 no
    lm: torch.Tensor         # (l, 3): row, pos (predicting), target token id
    itm: torch.Tensor        # (i, 3): row, pos of the <reward> token, 1 if every clause is true
    cmp: torch.Tensor        # (c, 4): row, clause-query pos, x comparison, y comparison (0/1/2)
    hints: Hints             # attention hint targets


def collate(samples: Sequence[Sample], tok: Any, image_processor: Any, yes_no_ids: tuple[int, int]) -> Batch:
    from .backbone import IMAGE_PAD, image_token_counts

    im = image_processor(images=[s.image.convert("RGB") for s in samples], return_tensors="pt")
    counts = image_token_counts(im["image_grid_thw"], image_processor.merge_size)
    merge = image_processor.merge_size
    pad_id = tok.convert_tokens_to_ids(IMAGE_PAD)
    rows, truth, mention, answer, acls, lm = [], [], [], [], [], []
    bind, ground, ground_tgt, img_start, role, itm, cmp = [], [], [], [], [], [], []
    rel_q, rel_keys = [], []
    for r, (s, n_img) in enumerate(zip(samples, counts)):
        # expand the placeholder; shift every char offset after it
        ph = s.text.index(IMAGE_PAD)
        shift = (n_img - 1) * len(IMAGE_PAD)
        text = s.text[:ph] + IMAGE_PAD * n_img + s.text[ph + len(IMAGE_PAD):]
        fix = lambda c: c + shift if c > ph else c  # noqa: E731
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        ids = enc["input_ids"]
        c2t = _char_to_token(enc["offset_mapping"], len(text))
        rows.append(ids)
        for c, t in s.truth:
            truth.append((r, int(c2t[fix(c)]), t))
        for c, t in s.itm:
            itm.append((r, int(c2t[fix(c)]), t))
        for c, pres, x, y, sz in s.mentions:
            mention.append((r, int(c2t[fix(c)]), pres, x, y, sz))
        for c, cls in s.answers:
            p = int(c2t[fix(c)])
            answer.append((r, p - 1, ids[p]))
            acls.append(cls)
        if s.lm_span is not None:
            a, b = int(c2t[fix(s.lm_span[0])]), int(c2t[fix(s.lm_span[1] - 1)])
            for p in range(max(a, 1), b + 1):
                lm.append((r, p - 1, ids[p]))
        img_start.append(ids.index(pad_id))
        _, gh, gw = (int(v) for v in im["image_grid_thw"][r])
        for cs, cc, box in s.grounds:
            ps, pc = int(c2t[fix(cs)]), int(c2t[fix(cc)])
            if pc != ps:
                bind.append((r, ps, pc))
            if box is not None:
                ground.append((r, ps))
                ground_tgt.append(box_cell_weights(box, gh // merge, gw // merge))
        for qc, is_answer, shapes, (cx, cy), rel_chars in s.roles:
            keys = [int(c2t[fix(c)]) for c in shapes] + [-1] * (3 - len(shapes))
            qpos = int(c2t[fix(qc)]) - int(is_answer)
            role.append((r, qpos, *keys))
            rel_q.append((r, qpos))
            rel_keys.append(sorted({int(c2t[fix(c)]) for c in rel_chars}))
            if cx >= 0:
                cmp.append((r, qpos, cx, cy))
    L = max(len(x) for x in rows)
    pad = tok.pad_token_id
    input_ids = torch.full((len(rows), L), pad, dtype=torch.long)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    offs = []
    for r, ids in enumerate(rows):
        o = L - len(ids)
        offs.append(o)
        input_ids[r, o:] = torch.tensor(ids)
        att[r, o:] = 1

    def shifted(lst: list[tuple], n: int) -> torch.Tensor:
        if not lst:
            return torch.zeros((0, n), dtype=torch.long)
        t = torch.tensor(lst, dtype=torch.long)
        t[:, 1] += torch.tensor([offs[r] for r in t[:, 0].tolist()])
        return t

    n_img = max(counts)
    tgt = torch.zeros((len(ground_tgt), n_img))
    for i, w in enumerate(ground_tgt):
        tgt[i, :len(w)] = torch.from_numpy(w)
    role_t = shifted(role, 5)
    if len(role_t):
        keys = role_t[:, 2:]
        role_t[:, 2:] = torch.where(keys >= 0, keys + torch.tensor(offs)[role_t[:, 0]][:, None], keys)
    bind_t = shifted(bind, 3)
    if len(bind_t):
        bind_t[:, 2] += torch.tensor(offs)[bind_t[:, 0]]
    rel_q_t = shifted(rel_q, 2)
    k = max((len(v) for v in rel_keys), default=1)
    rk = torch.zeros((len(rel_keys), k), dtype=torch.long)
    rt = torch.zeros((len(rel_keys), k))
    for i, v in enumerate(rel_keys):
        rk[i, :len(v)] = torch.tensor(v, dtype=torch.long) + offs[rel_q[i][0]]
        rt[i, :len(v)] = 1.0 / len(v)
    hints = Hints(bind_t, shifted(ground, 2), tgt, torch.tensor(img_start) + torch.tensor(offs), role_t,
                  rel_q_t, rk, rt)
    inputs = {"input_ids": input_ids, "attention_mask": att, "mm_token_type_ids": (input_ids == pad_id).to(torch.int32),
              "pixel_values": im["pixel_values"], "image_grid_thw": im["image_grid_thw"]}
    return Batch(inputs, shifted(truth, 3), shifted(mention, 6), shifted(answer, 3),
                 torch.tensor(acls, dtype=torch.long), shifted(lm, 3), shifted(itm, 3), shifted(cmp, 4), hints)


def answer_ids(tok: Any) -> tuple[int, int]:
    """Ids of the first token of "yes" and of "no" after the assistant line."""
    out = []
    for w in ("yes", "no"):
        s = "<|im_start|>assistant\n" + w
        enc = tok(s, return_offsets_mapping=True, add_special_tokens=False)
        c2t = _char_to_token(enc["offset_mapping"], len(s))
        out.append(enc["input_ids"][int(c2t[len(s) - len(w)])])
    if out[0] == out[1]:
        raise ValueError("tokenizer: 'yes' and 'no' start with the same token")
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------------
# model pieces
# ----------------------------------------------------------------------------------------------------

class Probes(nn.Module):
    """Training-only linear probes: gather targets (mid and last layer) and clause truth (last layer)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mention_mid = nn.Linear(hidden, N_MENTION)
        self.mention = nn.Linear(hidden, N_MENTION)
        self.truth = nn.Linear(hidden, 1)
        self.itm = nn.Linear(hidden, 1)
        self.cmp = nn.Linear(hidden, 6)


def mention_loss(logits: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    pres, x, y, sz = tgt[:, 2], tgt[:, 3], tgt[:, 4], tgt[:, 5]
    lp = F.binary_cross_entropy_with_logits(logits[:, -1], pres.float())
    ok = pres == 1
    if ok.any():
        lx = F.cross_entropy(logits[ok, :NCELL], x[ok])
        ly = F.cross_entropy(logits[ok, NCELL:2 * NCELL], y[ok])
        ls = F.cross_entropy(logits[ok, 2 * NCELL:2 * NCELL + len(SIZE_NAMES)], sz[ok])
        accx = (logits[ok, :NCELL].argmax(-1) == x[ok]).float().mean().item()
        accy = (logits[ok, NCELL:2 * NCELL].argmax(-1) == y[ok]).float().mean().item()
    else:
        lx = ly = ls = logits.sum() * 0
        accx = accy = float("nan")
    return lp + lx + ly + 0.5 * ls, {"x": accx, "y": accy}


def forward_losses(model: nn.Module, probes: Probes, b: Batch, cfg: PretrainConfig) -> tuple[torch.Tensor, dict]:
    out = model.model(**b.inputs, output_hidden_states=True, output_attentions=cfg.w_hint > 0, use_cache=False)
    h = out.last_hidden_state
    mid = out.hidden_states[len(out.hidden_states) // 2]
    logs: dict[str, float] = {}
    loss = h.new_zeros(())
    if cfg.w_hint > 0:
        lh, hl = hint_losses(out.attentions, b.hints, *default_layers(len(out.attentions)))
        loss = loss + cfg.w_hint * lh
        logs.update(hl)
    if len(b.truth):
        z = probes.truth(h[b.truth[:, 0], b.truth[:, 1]]).squeeze(-1)
        lt = F.binary_cross_entropy_with_logits(z, b.truth[:, 2].float())
        loss = loss + cfg.w_truth * lt
        logs["truth"] = lt.item()
        logs["truth_acc"] = ((z > 0).long() == b.truth[:, 2]).float().mean().item()
    if len(b.itm):
        z = probes.itm(h[b.itm[:, 0], b.itm[:, 1]]).squeeze(-1)
        li = F.binary_cross_entropy_with_logits(z, b.itm[:, 2].float())
        loss = loss + cfg.w_itm * li
        logs["itm"] = li.item()
        logs["itm_acc"] = ((z > 0).long() == b.itm[:, 2]).float().mean().item()
    if len(b.cmp) and cfg.w_cmp > 0:
        z = probes.cmp(h[b.cmp[:, 0], b.cmp[:, 1]])
        lc = F.cross_entropy(z[:, :3], b.cmp[:, 2]) + F.cross_entropy(z[:, 3:], b.cmp[:, 3])
        loss = loss + cfg.w_cmp * lc
        logs["cmp"] = lc.item()
        logs["cmp_acc"] = ((z[:, :3].argmax(-1) == b.cmp[:, 2]).float().mean().item()
                           + (z[:, 3:].argmax(-1) == b.cmp[:, 3]).float().mean().item()) / 2
    if len(b.mention):
        lm_, acc = mention_loss(probes.mention(h[b.mention[:, 0], b.mention[:, 1]]), b.mention)
        lmid, accm = mention_loss(probes.mention_mid(mid[b.mention[:, 0], b.mention[:, 1]]), b.mention)
        loss = loss + cfg.w_mention * lm_ + cfg.w_mention_mid * lmid
        logs.update(mention=lm_.item(), x_acc=acc["x"], y_acc=acc["y"], x_mid=accm["x"])
    if len(b.answer):
        logits = model.lm_head(h[b.answer[:, 0], b.answer[:, 1]])
        la = F.cross_entropy(logits.float(), b.answer[:, 2])
        loss = loss + cfg.w_vqa * la
        logs["vqa"] = la.item()
    if len(b.lm):
        logits = model.lm_head(h[b.lm[:, 0], b.lm[:, 1]])
        ll = F.cross_entropy(logits.float(), b.lm[:, 2])
        loss = loss + cfg.w_lm * ll
        logs["lm"] = ll.item()
    logs["loss"] = loss.item()
    return loss, logs


# ----------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------

def make_eval_sets(tok: Any, cfg: PretrainConfig, n_questions: int, seed: int = 12345) -> dict[str, list[Sample]]:
    """Held-out samples (their own seed and layouts): single-question VQA (full and easy) and statements."""
    sm = WorldSampler(tok, seed, pool=max(200, n_questions // 2), refresh=0, colour_marks=False)
    sm.fill()
    sets: dict[str, list[Sample]] = {"vqa": [], "vqa_easy": [], "statements": []}
    for name, easy, vqa, n in (("vqa", False, True, n_questions), ("vqa_easy", True, True, n_questions // 2),
                               ("statements", False, False, n_questions // 4)):
        want = {0: n // 2, 1: n - n // 2}
        while len(sets[name]) < n:
            s = sm.sample(easy, vqa, cfg, n_questions=1)
            if vqa:
                cls = s.answers[0][1]
                if want[cls] <= 0:
                    continue
                want[cls] -= 1
            sets[name].append(s)
    return sets


@torch.no_grad()
def evaluate(model: nn.Module, probes: Probes, tok: Any, ip: Any, sets: dict[str, list[Sample]],
             yes_no: tuple[int, int], cfg: PretrainConfig, bs: int = 32) -> dict[str, float]:
    model.eval()
    res: dict[str, float] = {}
    for name, samples in sets.items():
        correct = n = tc = tn = mx = my = mn = ic = inn = cc = cn = 0
        for i in range(0, len(samples), bs):
            b = collate(samples[i:i + bs], tok, ip, yes_no)
            out = model.model(**b.inputs, use_cache=False)
            h = out.last_hidden_state
            if len(b.answer):
                lg = model.lm_head(h[b.answer[:, 0], b.answer[:, 1]])[:, list(yes_no)]
                correct += (lg.argmax(-1) == b.answer_cls).sum().item()
                n += len(b.answer)
            if len(b.truth):
                z = probes.truth(h[b.truth[:, 0], b.truth[:, 1]]).squeeze(-1)
                tc += ((z > 0).long() == b.truth[:, 2]).sum().item()
                tn += len(b.truth)
            if len(b.itm):
                z = probes.itm(h[b.itm[:, 0], b.itm[:, 1]]).squeeze(-1)
                ic += ((z > 0).long() == b.itm[:, 2]).sum().item()
                inn += len(b.itm)
            if len(b.cmp):
                z = probes.cmp(h[b.cmp[:, 0], b.cmp[:, 1]])
                cc += ((z[:, :3].argmax(-1) == b.cmp[:, 2]).sum() + (z[:, 3:].argmax(-1) == b.cmp[:, 3]).sum()).item()
                cn += 2 * len(b.cmp)
            ok = b.mention[:, 2] == 1
            if ok.any():
                lg = probes.mention(h[b.mention[ok, 0], b.mention[ok, 1]])
                mx += (lg[:, :NCELL].argmax(-1) == b.mention[ok, 3]).sum().item()
                my += (lg[:, NCELL:2 * NCELL].argmax(-1) == b.mention[ok, 4]).sum().item()
                mn += int(ok.sum())
        if n:
            res[f"{name}_acc"] = correct / n
        if tn:
            res[f"{name}_truth_probe"] = tc / tn
        if inn:
            res[f"{name}_itm"] = ic / inn
        if cn:
            res[f"{name}_cmp"] = cc / cn
        if mn:
            res[f"{name}_x"] = mx / mn
            res[f"{name}_y"] = my / mn
    model.train()
    return res


# ----------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------

def _lr_factor(step: int, progress: float, cfg: PretrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    cos = cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return warm * cos


def save_backbone(model: nn.Module, tok: Any, ip: Any, out: Path, meta: dict | None = None) -> None:
    """``save_pretrained`` folder (+ posfeat files); written to a temp folder, then swapped in."""
    tmp = out.parent / (out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    posfeat.save(model, tmp)
    tok.save_pretrained(tmp)
    ip.save_pretrained(tmp)
    if meta is not None:
        (tmp / "pretrain.json").write_text(json.dumps(meta, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    keep = {STATE_DIR, "metrics.jsonl", "train.log", "README.md", "best"}
    for p in out.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for p in tmp.iterdir():
        shutil.move(str(p), str(out / p.name))
    tmp.rmdir()


def load_backbone(path: str | os.PathLike) -> tuple[nn.Module, Any, Any]:
    from .backbone import load_image_processor, load_tokenizer

    model = posfeat.load_vlm(str(path))
    return model, load_tokenizer(str(path)), load_image_processor(str(path))


def pretrain(out_dir: str | os.PathLike, cfg: PretrainConfig, resume: bool = False,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    from .backbone import load_image_processor, load_tokenizer
    from .tiny import init_tiny

    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    state_dir = out / STATE_DIR
    state_file = state_dir / "state.pt"
    init_dir = state_dir / "init"
    if resume and state_file.is_file():
        log(f"resuming from {state_file}")
    else:
        if state_file.is_file() and not resume:
            raise FileExistsError(f"--out {out}: a run is already there (use --resume, or a new folder)")
        resume = False
        init_tiny(init_dir, size=cfg.size, seed=cfg.seed, layers=cfg.text_layers)
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(init_dir), dtype=torch.float32, attn_implementation="eager" if cfg.w_hint > 0 else None)
    pf = posfeat.new(model, seed=cfg.seed, coord_scale=cfg.coord_scale)
    pf.merge = model.config.vision_config.spatial_merge_size
    tok, ip = load_tokenizer(str(init_dir)), load_image_processor(str(init_dir))
    probes = Probes(model.config.text_config.hidden_size)
    params = list(model.parameters()) + list(pf.parameters()) + list(probes.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    yes_no = answer_ids(tok)
    sampler = WorldSampler(tok, cfg.seed, cfg.pool, cfg.pool_refresh, cfg.colour_marks)
    step, train_s, history, best = 0, 0.0, [], -1.0
    if resume:
        st = torch.load(state_file, weights_only=False)
        model.load_state_dict(st["model"])
        pf.load_state_dict(st["posfeat"])
        probes.load_state_dict(st["probes"])
        opt.load_state_dict(st["opt"])
        step, train_s, history, best = st["step"], st["train_s"], st["history"], st["best"]
        sampler.rng.bit_generator.state = st["rng"]
        sampler.pool = st["pool"]
        torch.set_rng_state(st["torch_rng"])
    t0 = time.time()
    sampler.fill()
    log(f"pool of {len(sampler.pool)} layouts in {time.time() - t0:.0f} s; "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params (+{sum(p.numel() for p in pf.parameters())} posfeat)")
    eval_sets = make_eval_sets(tok, cfg, cfg.eval_questions)
    pairs_eval = None

    def do_eval() -> dict[str, Any]:
        nonlocal pairs_eval
        te = time.time()
        m = evaluate(model, probes, tok, ip, eval_sets, yes_no, cfg)
        if pairs_eval is None and cfg.pairs_data and cfg.eval_pairs > 0:
            from .zeroshot import load_pairs
            try:  # the dataset may still be building: retried at the next evaluation
                pairs_eval = load_pairs(cfg.pairs_data, "test", cfg.eval_pairs)
            except Exception as e:  # noqa: BLE001
                log(f"zero-shot pairs not available yet ({e})")
        if pairs_eval is not None:
            from .zeroshot import pair_accuracy
            model.eval()
            m.update({f"zs_{k}": v for k, v in pair_accuracy(model, tok, ip, pairs_eval, mode="yesno").items()})
            model.train()
        m.update(step=step, train_s=round(train_s, 1), eval_s=round(time.time() - te, 1))
        return m

    total = cfg.minutes * 60
    last_eval, last_ckpt = train_s, train_s
    run_logs: list[dict] = []
    model.train()
    while train_s < total:
        ts = time.time()
        progress = train_s / total
        p_easy = max(0.0, 1.0 - progress / cfg.curriculum) * 0.9 if cfg.curriculum > 0 else 0.0
        p_easy = max(p_easy, cfg.p_easy_end)
        sampler.p_canonical = max(0.0, 1.0 - progress / cfg.canonical) if cfg.canonical > 0 else 0.0
        # one kind per batch (less padding): object lists (early), VQA or statements
        p_list = cfg.p_list_end + (cfg.p_list_start - cfg.p_list_end) * max(0.0, 1 - progress / cfg.curriculum)
        if sampler.rng.random() < p_list:
            samples = [sampler.object_list(sampler.rng.random() < p_easy, cfg) for _ in range(cfg.batch)]
        else:
            vqa_batch = sampler.rng.random() < cfg.p_vqa
            samples = [sampler.sample(sampler.rng.random() < p_easy, vqa_batch, cfg) for _ in range(cfg.batch)]
        sampler.step()
        b = collate(samples, tok, ip, yes_no)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, progress, cfg)
        loss, logs = forward_losses(model, probes, b, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        train_s += time.time() - ts
        run_logs.append(logs)
        if step % 10 == 0:
            avg = {k: float(np.nanmean([d[k] for d in run_logs if k in d])) for k in run_logs[-1]}
            log(f"step {step} t {train_s:.0f}s p_easy {p_easy:.2f} " + " ".join(f"{k} {v:.3f}" for k, v in avg.items()))
            run_logs = []
        final = train_s >= total
        if train_s - last_eval >= cfg.eval_every * 60 or final:
            m = do_eval()
            history.append(m)
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(m) + "\n")
            log("eval " + json.dumps(m))
            last_eval = train_s
            score = m.get("vqa_acc", 0.0)
            if score >= best:
                best = score
                save_backbone(model, tok, ip, out / "best", {"config": dataclasses.asdict(cfg), "metrics": m})
        if train_s - last_ckpt >= cfg.checkpoint_every * 60 or final:
            state_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "posfeat": pf.state_dict(), "probes": probes.state_dict(),
                        "opt": opt.state_dict(), "step": step, "train_s": train_s, "history": history,
                        "best": best, "rng": sampler.rng.bit_generator.state, "pool": sampler.pool,
                        "torch_rng": torch.get_rng_state()}, state_dir / "state.tmp")
            os.replace(state_dir / "state.tmp", state_file)
            last_ckpt = train_s
    meta = {"config": dataclasses.asdict(cfg), "steps": step, "train_s": round(train_s, 1), "history": history}
    save_backbone(model, tok, ip, out, meta)
    log(f"saved {out} after {step} steps / {train_s / 60:.1f} min")
    return meta


# ----------------------------------------------------------------------------------------------------
# the target: a short BT reward fine-tune (LoRA + head) from a pretrained backbone
# ----------------------------------------------------------------------------------------------------

def _pair_eval(score_model: nn.Module, pairs: Any, bs: int = 32) -> dict[str, float]:
    from .losses import pairwise_correct

    sc = score_model.score(pairs.prompts, pairs.chosen, batch_size=bs)["mu"]
    sr = score_model.score(pairs.prompts, pairs.rejected, batch_size=bs)["mu"]
    ok = pairwise_correct(sc, sr).float().tolist()
    one = [v for v, n in zip(ok, pairs.n_perturbations) if n == 1]
    many = [v for v, n in zip(ok, pairs.n_perturbations) if n != 1]
    return {"acc": sum(ok) / len(ok), "acc_1": sum(one) / max(1, len(one)), "acc_2_3": sum(many) / max(1, len(many)),
            "n": len(ok)}


def finetune_probe(backbone: str | os.PathLike, data: str | os.PathLike, minutes: float = 20.0,
                   batch_pairs: int = 16, lr: float = 1e-3, eval_every: float = 5.0, n_test: int = 0,
                   threads: int = 1, seed: int = 0, log: Callable[[str], None] = print) -> list[dict[str, float]]:
    """BT-train a fresh SpatialScore (LoRA r16 + head) on ``data``'s train split for ``minutes`` of
    training time; pairwise accuracy on its test split every ``eval_every`` minutes (eval time excluded).

    A measurement of the pretrained backbone, not the project's reward trainer (``reward train``).
    """
    from .collate import iter_pair_batches
    from .losses import bt_loss
    from .model import LoraSettings, SpatialScore
    from .zeroshot import load_pairs

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    sm = SpatialScore.from_backbone(str(backbone), lora=LoraSettings(), seed=seed)
    test = load_pairs(data, "test", n_test)
    params = sm.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    curve = [{"train_s": 0.0, "step": 0, **_pair_eval(sm, test)}]
    log("finetune " + json.dumps(curve[-1]))
    train_s, step, last, losses = 0.0, 0, 0.0, []
    total = minutes * 60
    sm.train()
    while train_s < total:
        for b in iter_pair_batches(data, "train", batch_pairs):
            if not len(b):
                continue
            ts = time.time()
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / 30)
            prompts, images = b.model_inputs()
            mu = sm(prompts, images)["mu"]
            n = len(b)
            loss = bt_loss(mu[:n], mu[n:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            losses.append(loss.item())
            train_s += time.time() - ts
            if step % 20 == 0:
                log(f"finetune step {step} t {train_s:.0f}s loss {np.mean(losses[-20:]):.4f}")
            done = train_s >= total
            if train_s - last >= eval_every * 60 or done:
                curve.append({"train_s": round(train_s, 1), "step": step, "loss": float(np.mean(losses[-50:])),
                              **_pair_eval(sm, test)})
                log("finetune " + json.dumps(curve[-1]))
                last = train_s
            if done:
                break
    return curve
