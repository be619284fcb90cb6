"""Stage 0 of the world generator's pretraining: teach the text encoders the world's language.

FLUX.1-dev conditions a transformer on *pretrained* text encoders (T5-XXL, CLIP-L) that it keeps
frozen. The world's tiny encoders start from random weights, and learning the language only through
the flow-matching loss is slow: early samples mix the colours and shapes of a prompt's objects.
This stage gives them the world's equivalent of language pretraining, from prompts alone (no
images, so it costs seconds per thousand prompts):

* **T5, per token** (a "scene parse"): every token of an object's mention ("red square", also
  "the red square" later in the prompt) predicts that object's colour, shape and size (cross
  entropy), and, when the mention sits in a relation's clause, where the object is *relative to the
  clause's other objects*: ``(dx, dy, dz)`` = its centre and draw-order rank minus their mean (for
  "at <region>" the image centre), regressed with weight ``where_weight``. The prompt fixes the
  sign of these offsets ("a red square left of a blue circle": the square's dx < 0, the circle's
  dx > 0), so each mention's state learns which side of its partner it goes — something the
  image tokens (2D RoPE) can read. Absolute positions, the target before, are only loosely fixed by
  a prompt (the solver samples them) and a 2-layer T5 did not learn them (RMSE = their spread).
* **Attention hint** (optional, ``hint_weight``): learning that relative place from the loss
  alone stalls at chance (a mention's state must gather its clause's relation words, 1 of 128
  positions at initialisation, and the side it stands on). So, as the world VLM's attention hints
  do (:mod:`spatialt2i.reward.attn_hints`), two heads of the first T5 layer are told where to look:
  head 0 at the clause's relation words after the mention, head 1 at those before it
  (:func:`context_hint_loss`). Measured in the README of ``assets/world-generator``.
* **CLIP, pooled**: the multi-hot set of the prompt's colours and shapes (binary cross entropy).

The heads are small linear layers used only here; the encoders keep their classes and are saved
with the pipeline as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from spatialt2i.gen.grounding import mention_spans
from spatialt2i.world.vocab import COLOURS, SHAPES, SIZES

_COLOURS = {c: i for i, c in enumerate(COLOURS)}
_SHAPES = {s: i for i, s in enumerate(SHAPES)}
_SIZES = {s: i for i, s in enumerate(SIZES)}


@dataclass
class ParseTargets:
    """Flattened (sample, token) rows of object mentions and their object's attributes."""
    batch: torch.Tensor    # (K,) sample index
    token: torch.Tensor    # (K,) T5 token index
    colour: torch.Tensor   # (K,) class ids
    shape: torch.Tensor
    size: torch.Tensor
    where: torch.Tensor    # (K, 3) dx, dy, d(rank) from the clause's other objects (0 where not in a clause)
    fixed: torch.Tensor    # (K, 3) bool: the clause fixes that offset's sign (only these are targets)
    context: torch.Tensor  # (K, T): the clause's words that name no object (its relation words), +1 after
                           # the mention token, -1 before it, 0 elsewhere
    bag: torch.Tensor      # (B, n_colours + n_shapes) multi-hot

    def __len__(self) -> int:
        return int(self.batch.numel())


_FIXED = {"left_of": (1, 0, 0), "right_of": (1, 0, 0), "above": (0, 1, 0), "below": (0, 1, 0),
          "above_left": (1, 1, 0), "above_right": (1, 1, 0), "below_left": (1, 1, 0), "below_right": (1, 1, 0),
          "in_front_of": (0, 0, 1), "behind": (0, 0, 1)}


def fixed_axes(rel: Any) -> tuple[bool, bool, bool]:
    """Which of (dx, dy, d(rank)) a relation's words fix the sign of for its objects: left/right fix x,
    above/below y, the diagonals both, in front/behind the draw order, "at <region>" the axes on
    which the region is off-centre; size relations and "between" none."""
    if rel.kind == "at":
        from spatialt2i.world.vocab import REGIONS

        col, row = REGIONS[rel.region]
        return col != 1, row != 1, False
    return tuple(bool(v) for v in _FIXED.get(rel.kind, (0, 0, 0)))


def relative_place(scene: Any, rel: Any, i: int, rank: dict[int, float]) -> tuple[float, float, float]:
    """Object ``i``'s centre and draw-order rank minus the mean of ``rel``'s other objects (for a
    relation with no other object, "at <region>": minus the image centre, rank offset 0)."""
    o = scene.objects[i]
    others = [j for j in rel.objects if j != i]
    if not others:
        return o.x - 0.5, o.y - 0.5, 0.0
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return (o.x - mean([scene.objects[j].x for j in others]), o.y - mean([scene.objects[j].y for j in others]),
            rank[i] - mean([rank[j] for j in others]))


def parse_targets(scenes: Sequence[Any], prompts: Sequence[str], tokenizer: Any, max_length: int,
                  clause_spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> ParseTargets:
    """Targets for placed ``scenes`` and their ``prompts`` as the T5 tokenizer pads them to
    ``max_length``; ``clause_spans[b][r]`` = the character span of relation ``r``'s clause in prompt
    ``b`` (:func:`spatialt2i.world.text.describe_with_spans`); without them no mention gets a
    ``where`` target."""
    if len(scenes) != len(prompts) or (clause_spans is not None and len(clause_spans) != len(prompts)):
        raise ValueError(f"got {len(scenes)} scenes, {len(prompts)} prompts and "
                         f"{'no' if clause_spans is None else len(clause_spans)} clause spans")
    enc = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    return_offsets_mapping=True)
    rows: list[tuple] = []
    bag = torch.zeros(len(scenes), len(COLOURS) + len(SHAPES))
    for b, (scene, prompt) in enumerate(zip(scenes, prompts)):
        if not scene.placed:
            raise ValueError(f"scene {b} is not placed: the parse targets need object positions")
        spans = list(clause_spans[b]) if clause_spans is not None else []
        if spans and len(spans) != len(scene.relations):
            raise ValueError(f"prompt {b}: {len(spans)} clause spans for {len(scene.relations)} relations")
        n = len(scene.objects)
        order = sorted(range(n), key=lambda i: scene.objects[i].depth)
        rank = {i: (order.index(i) / (n - 1) if n > 1 else 0.5) for i in range(n)}
        offsets = enc["offset_mapping"][b]
        named = [sp for o in scene.objects for sp in mention_spans(prompt, o.colour, o.shape)]
        context = [_relation_tokens(offsets, span, named) for span in spans]
        for i, o in enumerate(scene.objects):
            bag[b, _COLOURS[o.colour]] = 1.0
            bag[b, len(COLOURS) + _SHAPES[o.shape]] = 1.0
            for a, z in mention_spans(prompt, o.colour, o.shape):
                r = next((r for r, (ca, cz) in enumerate(spans) if ca <= a and z <= cz), None)
                rel = scene.relations[r] if r is not None else None
                where = relative_place(scene, rel, i, rank) if rel is not None else (0.0, 0.0, 0.0)
                fixed = fixed_axes(rel) if rel is not None else (False, False, False)
                for t, (s, e) in enumerate(offsets):
                    if e > s and s < z and e > a:  # the token overlaps the mention (padding never does)
                        rows.append((b, t, _COLOURS[o.colour], _SHAPES[o.shape], _SIZES[o.size], where, fixed,
                                     [(u, 1.0 if u > t else -1.0) for u in context[r]] if r is not None else []))
    cols = list(zip(*rows)) if rows else [()] * 8
    long = lambda c: torch.tensor(c, dtype=torch.long)  # noqa: E731
    return ParseTargets(long(cols[0]), long(cols[1]), long(cols[2]), long(cols[3]), long(cols[4]),
                        torch.tensor(cols[5], dtype=torch.float32).reshape(-1, 3),
                        torch.tensor(cols[6], dtype=torch.bool).reshape(-1, 3), _context_rows(cols[7], max_length),
                        bag)


def _relation_tokens(offsets: Sequence[tuple[int, int]], clause: tuple[int, int],
                     named: Sequence[tuple[int, int]]) -> list[int]:
    """Tokens inside the ``clause`` span that overlap no object mention (``named`` spans)."""
    a, z = clause
    return [t for t, (s, e) in enumerate(offsets) if e > s and a <= s and e <= z
            and not any(s < nz and e > na for na, nz in named)]


def _context_rows(rows: Sequence[list[tuple[int, float]]], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length)
    for k, marks in enumerate(rows):
        for u, v in marks:
            out[k, u] = v
    return out


class SceneParseHeads(nn.Module):
    """Linear read-outs of the T5 token states and the CLIP pooled vector (pretraining only)."""

    def __init__(self, t5_dim: int, clip_dim: int) -> None:
        super().__init__()
        self.colour = nn.Linear(t5_dim, len(COLOURS))
        self.shape = nn.Linear(t5_dim, len(SHAPES))
        self.size = nn.Linear(t5_dim, len(SIZES))
        self.where = nn.Linear(t5_dim, 3)
        self.bag = nn.Linear(clip_dim, len(COLOURS) + len(SHAPES))


def side_accuracy(pred: torch.Tensor, want: torch.Tensor, fixed: torch.Tensor) -> dict[str, float]:
    """Share of the ``fixed`` x/y offsets (rows, 3) where ``pred`` has ``want``'s sign -- does a
    mention know which side of its partner it goes? -- and the same for the draw order."""
    hit = (pred.sign() == want.sign()) & fixed
    n = fixed.sum(0).clamp_min(1)
    return {"side_acc": float(hit[:, :2].sum() / n[:2].sum()), "order_acc": float(hit[:, 2].sum() / n[2])}


def context_hint_loss(attn: torch.Tensor, targets: ParseTargets) -> torch.Tensor:
    """How a mention finds out which relation it is in and on which side of the relation words it
    stands: for each mention token in a clause, head 0 of ``attn`` ((B, heads >= 2, T, T)
    probabilities) should attend to the clause's relation words *after* it and head 1 to those
    *before* it: ``mean (1 - mass)^2`` over the (row, head) pairs that have such words."""
    terms = []
    for head, sign in ((0, 1.0), (1, -1.0)):
        mask = (targets.context == sign).float()
        rows = mask.sum(-1) > 0
        if rows.any():
            a = attn[targets.batch[rows], head, targets.token[rows]]      # (K', T)
            terms.append((1.0 - (a * mask[rows]).sum(-1)).pow(2))
    return torch.cat(terms).mean() if terms else attn.sum() * 0.0


def parse_loss(heads: SceneParseHeads, t5_states: torch.Tensor, clip_pooled: torch.Tensor,
               targets: ParseTargets, where_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of the scene parse: CE on colour/shape/size over the mention tokens + ``where_weight`` x
    MSE of the relative place on the offsets a clause fixes (:func:`fixed_axes`) + BCE of the pooled bag. Returns the loss
    and accuracies for the log."""
    bag_logits = heads.bag(clip_pooled)
    loss = F.binary_cross_entropy_with_logits(bag_logits, targets.bag)
    stats = {"bag_acc": float(((bag_logits > 0).float() == targets.bag).float().mean())}
    if len(targets):
        h = t5_states[targets.batch, targets.token]
        lc, ls, lz = heads.colour(h), heads.shape(h), heads.size(h)
        loss = loss + F.cross_entropy(lc, targets.colour) + F.cross_entropy(ls, targets.shape) \
            + F.cross_entropy(lz, targets.size)
        stats.update({
            "colour_acc": float((lc.argmax(-1) == targets.colour).float().mean()),
            "shape_acc": float((ls.argmax(-1) == targets.shape).float().mean()),
            "size_acc": float((lz.argmax(-1) == targets.size).float().mean()),
        })
        if targets.fixed.any():
            pred, m = heads.where(h), targets.fixed
            mse = (pred - targets.where)[m].pow(2).mean()
            loss = loss + where_weight * mse
            stats.update({"where_rmse": float(mse.detach().sqrt()),
                          **side_accuracy(pred.detach(), targets.where, m)})
    return loss, stats


class TextStage:
    """The stage's trainable state (both encoders of ``pipe`` + the heads, one AdamW) and its step.
    ``hint_weight`` > 0 adds :func:`context_hint_loss` on the first T5 layer's attention (the T5
    then runs with eager attention, which returns the probabilities)."""

    def __init__(self, pipe: Any, lr: float, where_weight: float, max_length: int, hint_weight: float = 0.0) -> None:
        self.pipe = pipe
        self.heads = SceneParseHeads(pipe.text_encoder_2.config.d_model,
                                     pipe.text_encoder.config.hidden_size).to(pipe.text_encoder_2.device)
        self.params = [q for m in (pipe.text_encoder_2, pipe.text_encoder, self.heads) for q in m.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.lr, self.where_weight, self.max_length, self.hint_weight = lr, where_weight, max_length, hint_weight

    def encode(self, prompts: Sequence[str], attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """T5 token states, CLIP pooled vector (as ``FluxPipeline.encode_prompt`` computes them) and,
        when asked, the first T5 layer's attention probabilities."""
        from spatialt2i.gen.fm_data import encode_ids, tokenize_prompts

        t5_ids, clip_ids = tokenize_prompts(self.pipe, prompts, self.max_length)
        return encode_ids(self.pipe, t5_ids, clip_ids, attentions)

    def step(self, scenes: Sequence[Any], prompts: Sequence[str], clause_spans: Sequence | None = None,
             lr_factor: float = 1.0) -> tuple[float, dict]:
        p = self.pipe
        p.text_encoder_2.train()
        p.text_encoder.train()
        from spatialt2i.gen.fm_data import to_device

        targets = to_device(parse_targets(scenes, prompts, p.tokenizer_2, self.max_length, clause_spans),
                            p.text_encoder_2.device)
        hint = self.hint_weight > 0
        embeds, pooled, attn = self.encode(prompts, attentions=hint)
        loss, stats = parse_loss(self.heads, embeds, pooled, targets, self.where_weight)
        if hint:
            lh = context_hint_loss(attn, targets)
            loss = loss + self.hint_weight * lh
            stats["hint"] = float(lh.detach())
        for g in self.opt.param_groups:
            g["lr"] = self.lr * lr_factor
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return float(loss.detach()), stats

    def state_dict(self) -> dict:
        return {"heads": self.heads.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.heads.load_state_dict(state["heads"])
        self.opt.load_state_dict(state["opt"])
