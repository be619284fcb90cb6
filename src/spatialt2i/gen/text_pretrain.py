"""Stage 0 of the world generator's pretraining: teach the text encoders the world's language.

FLUX.1-dev conditions a transformer on *pretrained* text encoders (T5-XXL, CLIP-L) that it keeps
frozen. The world's tiny encoders start from random weights, and learning the language only through
the flow-matching loss is slow: early samples mix the colours and shapes of a prompt's objects.
This stage gives them the world's equivalent of language pretraining, from prompts alone (no
images, so it costs seconds per thousand prompts):

* **T5, per token** (a "scene parse"): every token of an object's mention ("red square", also
  "the red square" later in the prompt) predicts that object's colour, shape and size (cross
  entropy) and where the solver put it — centre ``x``, ``y`` and the draw-order rank (regression,
  weighted by ``where_weight``). The positions are samples of layouts that satisfy the prompt, so
  the regression learns their mean: a rough plan of the scene, not a correct one.
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

from spatialt2i.gen.grounding import mention_tokens
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
    where: torch.Tensor    # (K, 3) x, y in [0, 1] and draw-order rank in [0, 1]
    bag: torch.Tensor      # (B, n_colours + n_shapes) multi-hot

    def __len__(self) -> int:
        return int(self.batch.numel())


def parse_targets(scenes: Sequence[Any], prompts: Sequence[str], tokenizer: Any, max_length: int) -> ParseTargets:
    """Targets for placed ``scenes`` and their ``prompts`` as the T5 tokenizer pads them to ``max_length``."""
    if len(scenes) != len(prompts):
        raise ValueError(f"got {len(scenes)} scenes but {len(prompts)} prompts")
    enc = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    return_offsets_mapping=True)
    rows: list[tuple] = []
    bag = torch.zeros(len(scenes), len(COLOURS) + len(SHAPES))
    for b, (scene, prompt) in enumerate(zip(scenes, prompts)):
        if not scene.placed:
            raise ValueError(f"scene {b} is not placed: the parse targets need object positions")
        n = len(scene.objects)
        order = sorted(range(n), key=lambda i: scene.objects[i].depth)
        rank = {i: (order.index(i) / (n - 1) if n > 1 else 0.5) for i in range(n)}
        offsets = enc["offset_mapping"][b]
        for i, o in enumerate(scene.objects):
            bag[b, _COLOURS[o.colour]] = 1.0
            bag[b, len(COLOURS) + _SHAPES[o.shape]] = 1.0
            for t in mention_tokens(prompt, offsets, o.colour, o.shape):
                rows.append((b, t, _COLOURS[o.colour], _SHAPES[o.shape], _SIZES[o.size], o.x, o.y, rank[i]))
    cols = list(zip(*rows)) if rows else [()] * 8
    long = lambda c: torch.tensor(c, dtype=torch.long)  # noqa: E731
    return ParseTargets(long(cols[0]), long(cols[1]), long(cols[2]), long(cols[3]), long(cols[4]),
                        torch.tensor(list(zip(*cols[5:8])), dtype=torch.float32).reshape(-1, 3), bag)


class SceneParseHeads(nn.Module):
    """Linear read-outs of the T5 token states and the CLIP pooled vector (pretraining only)."""

    def __init__(self, t5_dim: int, clip_dim: int) -> None:
        super().__init__()
        self.colour = nn.Linear(t5_dim, len(COLOURS))
        self.shape = nn.Linear(t5_dim, len(SHAPES))
        self.size = nn.Linear(t5_dim, len(SIZES))
        self.where = nn.Linear(t5_dim, 3)
        self.bag = nn.Linear(clip_dim, len(COLOURS) + len(SHAPES))


def parse_loss(heads: SceneParseHeads, t5_states: torch.Tensor, clip_pooled: torch.Tensor,
               targets: ParseTargets, where_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of the scene parse: CE on colour/shape/size + ``where_weight`` x MSE on (x, y, rank) over
    the mention tokens, + BCE of the pooled bag. Returns the loss and accuracies for the log."""
    bag_logits = heads.bag(clip_pooled)
    loss = F.binary_cross_entropy_with_logits(bag_logits, targets.bag)
    stats = {"bag_acc": float(((bag_logits > 0).float() == targets.bag).float().mean())}
    if len(targets):
        h = t5_states[targets.batch, targets.token]
        lc, ls, lz = heads.colour(h), heads.shape(h), heads.size(h)
        where = torch.sigmoid(heads.where(h))
        mse = F.mse_loss(where, targets.where)
        loss = loss + F.cross_entropy(lc, targets.colour) + F.cross_entropy(ls, targets.shape) \
            + F.cross_entropy(lz, targets.size) + where_weight * mse
        stats.update({
            "colour_acc": float((lc.argmax(-1) == targets.colour).float().mean()),
            "shape_acc": float((ls.argmax(-1) == targets.shape).float().mean()),
            "size_acc": float((lz.argmax(-1) == targets.size).float().mean()),
            "where_rmse": float(mse.detach().sqrt()),
        })
    return loss, stats


class TextStage:
    """The stage's trainable state (both encoders of ``pipe`` + the heads, one AdamW) and its step."""

    def __init__(self, pipe: Any, lr: float, where_weight: float, max_length: int) -> None:
        self.pipe = pipe
        self.heads = SceneParseHeads(pipe.text_encoder_2.config.d_model, pipe.text_encoder.config.hidden_size)
        self.params = [q for m in (pipe.text_encoder_2, pipe.text_encoder, self.heads) for q in m.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.lr, self.where_weight, self.max_length = lr, where_weight, max_length

    def step(self, scenes: Sequence[Any], prompts: Sequence[str], lr_factor: float = 1.0) -> tuple[float, dict]:
        p = self.pipe
        p.text_encoder_2.train()
        p.text_encoder.train()
        targets = parse_targets(scenes, prompts, p.tokenizer_2, self.max_length)
        embeds, pooled, _ = p.encode_prompt(prompt=list(prompts), prompt_2=None, device=torch.device("cpu"),
                                            max_sequence_length=self.max_length)
        loss, stats = parse_loss(self.heads, embeds, pooled, targets, self.where_weight)
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
