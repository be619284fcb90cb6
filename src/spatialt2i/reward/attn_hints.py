"""Attention hints: supervised attention for the world pretraining of the tiny VLM backbone.

The earlier trials (``shared/notes/world-reward-learnability.md``) found that a tiny random-init
Qwen2.5-VL learns *where* objects are and learns to *compare* two coordinates once they sit next to
the question, but does not form the step in between -- each object mention gathering its own
object's visual tokens by content -- in a CPU budget (an induction-style plateau). These hints
supervise that circuit directly, as cross-entropy on chosen heads' attention rows (the probes only
read hidden states; here the attention pattern itself is the target):

* ``bind``   -- layer ``l_bind``, head 0: a shape word attends to its colour word ("red" -> "star"),
  so that the next layer's query knows the whole name;
* ``ground`` -- layer ``l_ground``, head 0: a shape word of an object in the image attends to the
  visual tokens that the object covers (target = the object's box area in each merged-grid cell);
* ``role``   -- layer ``l_role``, heads 1..3: a clause's last token (and the token that predicts a
  VQA answer) attends to the shape word of the relation's first, second and third object (the
  relation's roles, whatever the wording's order);
* ``rel``    -- layer ``l_role``, head 0: the same query spreads its attention evenly over the
  clause's own relation words (everything outside the object names: "is to the left of"), so it
  knows which relation to check.

Nothing here is part of the saved model: it shapes how pretraining trains the stock classes. It needs
``attn_implementation="eager"`` so the model returns its attention weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EPS = 1e-6


def box_cell_weights(box: tuple[float, float, float, float], rows: int, cols: int) -> np.ndarray:
    """Share of a box (x0, y0, x1, y1 in [0, 1]) lying in each cell of a rows x cols grid, row-major.

    Sums to 1 (the box is clipped to the canvas first); a box of zero area gets all its weight in
    the cell holding its centre.
    """
    x0, y0, x1, y1 = (min(1.0, max(0.0, v)) for v in box)
    xs = np.clip(np.minimum(x1, (np.arange(cols) + 1) / cols) - np.maximum(x0, np.arange(cols) / cols), 0, None)
    ys = np.clip(np.minimum(y1, (np.arange(rows) + 1) / rows) - np.maximum(y0, np.arange(rows) / rows), 0, None)
    w = np.outer(ys, xs).reshape(-1)
    if w.sum() <= 0:
        w = np.zeros(rows * cols)
        cx, cy = min(cols - 1, int((x0 + x1) / 2 * cols)), min(rows - 1, int((y0 + y1) / 2 * rows))
        w[cy * cols + cx] = 1.0
    return w / w.sum()


@dataclass
class Hints:
    """Index tensors of one batch (positions already include the left padding)."""

    bind: torch.Tensor        # (n, 3): row, shape-word pos, colour-word pos
    ground: torch.Tensor      # (g, 2): row, shape-word pos
    ground_tgt: torch.Tensor  # (g, n_img): target distribution over the image's visual tokens
    img_start: torch.Tensor   # (B,): position of each row's first visual token
    role: torch.Tensor        # (r, 5): row, query pos, key pos of role a, b, c (-1: none)
    rel: torch.Tensor         # (q, 2): row, query pos
    rel_keys: torch.Tensor    # (q, K): positions of the clause's relation words (padded)
    rel_tgt: torch.Tensor     # (q, K): uniform weights over them (0 on padding)


def attention_ce(att: torch.Tensor, keys: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_k tgt[k] * log att[keys[k]]: ``att`` (n, T) rows of attention weights,
    ``keys`` (n, K) key positions, ``tgt`` (n, K) target weights (rows sum to 1)."""
    a = att.gather(1, keys).clamp_min(EPS)
    return -(tgt * a.log()).sum(-1).mean()


def hint_losses(attentions: tuple[torch.Tensor, ...], h: Hints, l_bind: int, l_ground: int,
                l_role: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The three hint losses (summed) and their values, from the model's per-layer attention weights
    (each (B, heads, T, T))."""
    dev = attentions[0].device
    total = torch.zeros((), device=dev)
    logs: dict[str, float] = {}
    if len(h.bind):
        att = attentions[l_bind][h.bind[:, 0], 0, h.bind[:, 1]]
        lb = attention_ce(att, h.bind[:, 2:3], torch.ones(len(h.bind), 1, device=dev))
        total = total + lb
        logs["h_bind"] = lb.item()
    if len(h.ground):
        att = attentions[l_ground][h.ground[:, 0], 0, h.ground[:, 1]]
        n_img = h.ground_tgt.shape[1]
        keys = h.img_start[h.ground[:, 0]][:, None] + torch.arange(n_img, device=dev)[None]
        lg = attention_ce(att, keys, h.ground_tgt)
        total = total + lg
        logs["h_ground"] = lg.item()
        logs["h_ground_mass"] = (att.gather(1, keys) * (h.ground_tgt > 0)).sum(-1).mean().item()
    if len(h.role):
        parts = []
        for q in range(3):
            ok = h.role[:, 2 + q] >= 0
            if ok.any():
                r = h.role[ok]
                att = attentions[l_role][r[:, 0], 1 + q, r[:, 1]]
                parts.append(attention_ce(att, r[:, 2 + q:3 + q], torch.ones(len(r), 1, device=dev)))
        lr = torch.stack(parts).mean()
        total = total + lr
        logs["h_role"] = lr.item()
    if len(h.rel):
        att = attentions[l_role][h.rel[:, 0], 0, h.rel[:, 1]]
        lw = attention_ce(att, h.rel_keys, h.rel_tgt)
        total = total + lw
        logs["h_rel"] = lw.item()
    return total, logs


def default_layers(n_layers: int) -> tuple[int, int, int]:
    """(bind, ground, role) layers: bind first, ground next, role in the middle, leaving the rest to
    compare and answer (4 layers -> 0, 1, 2; 6 layers -> 0, 1, 3)."""
    if n_layers < 3:
        raise ValueError(f"attention hints need at least 3 text layers, the model has {n_layers}")
    return 0, 1, max(2, n_layers // 2)
