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

Curriculum: during the first ``curriculum`` share of the run, most samples are easy -- 2-3 objects,
left/right/above/below only, canonical wording -- then the full world distribution.

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
from dataclasses import dataclass
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


@dataclass
class PretrainConfig:
    size: str = "small"
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
    curriculum: float = 0.25         # share of the run with mostly easy samples (decays to 0)
    pool: int = 1500                 # layouts kept; each is re-used under flips/transposes/new names
    pool_refresh: int = 2            # new layouts per step
    w_truth: float = 1.0
    w_vqa: float = 1.0
    w_mention: float = 1.0
    w_mention_mid: float = 0.5
    w_lm: float = 0.1
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


def _relabel(rng: np.random.Generator, objs: Sequence[Obj]) -> list[Obj]:
    names = [(c, s) for c in COLOURS for s in SHAPES]
    idx = rng.choice(len(names), size=len(objs), replace=False)
    return [Obj(names[k][1], names[k][0], o.size, o.x, o.y, o.depth) for o, k in zip(objs, idx)]


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
    def word(self, text: Scene, rel: Relation, seen: set[int], easy: bool, cap: bool) -> tuple[str, list[tuple[int, int]]]:
        """The clause and, per object, (char offset of the last char of its name, object index)."""
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
        marks = []
        for j in rel.objects:
            o = text.objects[j]
            pos = s.find(f"{o.colour} {o.shape}")
            marks.append((pos + len(o.colour) + 1 + len(o.shape) - 1, j))   # the shape word
            if self.colour_marks:
                marks.append((pos + len(o.colour) - 1, j))                  # the colour word (an easier first hop)
        return s, marks

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
        mentions = []
        for q in range(len(text_scene.objects)):
            o = text_scene.objects[q]
            if q:
                s += ", " if rng.random() < 0.7 else " and "
            art = "the " if rng.random() < 0.5 else f"a {o.size + ' ' if rng.random() < 0.5 else ''}"
            base = len(s) + len(art)
            s += f"{art}{o.colour} {o.shape}"
            targets = self._mention_target(image, text_scene, q)
            mentions.append((base + len(o.colour) + len(o.shape), *targets))
            if self.colour_marks:
                mentions.append((base + len(o.colour) - 1, *targets))
        s += "."
        lm = (start, len(s)) if n_absent == 0 else None
        s += "<|im_end|>\n<|im_start|>assistant\n"
        return Sample(render(image, 64), s, [], mentions, [], lm, "list")

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
            rels = self.clauses(image, text, k, easy, float(rng.uniform(0, 2 * cfg.p_false)))
            if rels:
                return self._statements(image, text, rels, easy, cfg)
        raise RuntimeError("could not sample a scene with usable relations in 20 tries")

    def _vqa(self, image: Scene, text: Scene, rels: list[tuple[Relation, int]], easy: bool) -> Sample:
        s = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        truth, mentions, answers = [], [], []
        for q, (rel, t) in enumerate(rels):
            if q:
                s += "<|im_start|>user\n"
            clause, marks = self.word(text, rel, set(), easy, cap=(not easy) and self.rng.random() < 0.5)
            base = len(s)
            s += clause
            truth.append((len(s) - 1, t))
            for c, j in marks:
                mentions.append((base + c, *self._mention_target(image, text, j)))
            s += " ?<|im_end|>\n<|im_start|>assistant\n"
            answers.append((len(s), 0 if t else 1))
            s += ("yes" if t else "no") + "<|im_end|>\n"
        return Sample(render(image, 64), s, truth, mentions, answers, None, "vqa")

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
        truth, mentions = [], []
        for q, (rel, t) in enumerate(rels):
            cap = True
            if q:
                join = JOINS[int(rng.integers(len(JOINS)))] if not easy else ". "
                s += join
                cap = join.startswith(".")
            clause, marks = self.word(text, rel, seen, easy, cap)
            base = len(s)
            s += clause
            truth.append((len(s) - 1, t))
            for c, j in marks:
                mentions.append((base + c, *self._mention_target(image, text, j)))
        s += "."
        end = len(s)
        s += "<|im_end|>\n<|im_start|>assistant\n"
        all_true = all(t for _, t in rels)
        lm = (start, end) if all_true and rng.random() < cfg.p_caption_lm else None
        return Sample(render(image, 64), s, truth, mentions, [], lm, "statements")


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


def collate(samples: Sequence[Sample], tok: Any, image_processor: Any, yes_no_ids: tuple[int, int]) -> Batch:
    from .backbone import IMAGE_PAD, image_token_counts

    im = image_processor(images=[s.image.convert("RGB") for s in samples], return_tensors="pt")
    counts = image_token_counts(im["image_grid_thw"], image_processor.merge_size)
    rows, truth, mention, answer, acls, lm = [], [], [], [], [], []
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

    pad_id = tok.convert_tokens_to_ids(IMAGE_PAD)
    inputs = {"input_ids": input_ids, "attention_mask": att, "mm_token_type_ids": (input_ids == pad_id).to(torch.int32),
              "pixel_values": im["pixel_values"], "image_grid_thw": im["image_grid_thw"]}
    return Batch(inputs, shifted(truth, 3), shifted(mention, 6), shifted(answer, 3),
                 torch.tensor(acls, dtype=torch.long), shifted(lm, 3))


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
    out = model.model(**b.inputs, output_hidden_states=True, use_cache=False)
    h = out.last_hidden_state
    mid = out.hidden_states[len(out.hidden_states) // 2]
    logs: dict[str, float] = {}
    loss = h.new_zeros(())
    if len(b.truth):
        z = probes.truth(h[b.truth[:, 0], b.truth[:, 1]]).squeeze(-1)
        lt = F.binary_cross_entropy_with_logits(z, b.truth[:, 2].float())
        loss = loss + cfg.w_truth * lt
        logs["truth"] = lt.item()
        logs["truth_acc"] = ((z > 0).long() == b.truth[:, 2]).float().mean().item()
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
        correct = n = tc = tn = mx = my = mn = 0
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
        init_tiny(init_dir, size=cfg.size, seed=cfg.seed)
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(init_dir), dtype=torch.float32)
    pf = posfeat.new(model, seed=cfg.seed)
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
    posfeat.attach_if_present(sm.vlm, backbone)
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
