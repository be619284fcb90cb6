"""The world pretraining's losses: training-only probes on the backbone's hidden states, and one batch's
weighted sum of every objective (``forward_losses``; the objectives are described in ``reward/pretrain.py``).

The probes are never saved with the backbone: a continued run (``init_from``) starts fresh ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .attn_hints import default_layers, hint_losses
from .occlusion import NCOL
from .pretrain_batch import Batch
from .pretrain_data import NCELL, N_MENTION, SIZE_NAMES

if TYPE_CHECKING:
    from .pretrain import PretrainConfig

OCC_POS_WEIGHT = 8.0     # a cell's occlusion bits are ~2 % positive


class Probes(nn.Module):
    """Training-only linear probes: gather targets (mid and last layer) and clause truth (last layer)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mention_mid = nn.Linear(hidden, N_MENTION)
        self.mention = nn.Linear(hidden, N_MENTION)
        self.truth = nn.Linear(hidden, 1)
        self.itm = nn.Linear(hidden, 1)
        self.cmp = nn.Linear(hidden, 6)
        self.occ_cell = nn.Linear(hidden, 2 * NCOL)     # at the visual tokens entering the language model
        self.occ_mention = nn.Linear(hidden, 2)         # at a mention: hidden by another, hides another


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


def binary_probe_loss(probe: nn.Module, h: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
    """BCE of a 1-logit probe at ``rows`` (row, pos, label) of the hidden states ``h``; and its accuracy."""
    z = probe(h[rows[:, 0], rows[:, 1]]).squeeze(-1)
    return (F.binary_cross_entropy_with_logits(z, rows[:, 2].float()),
            ((z > 0).long() == rows[:, 2]).float().mean().item())


def occlusion_losses(probes: Probes, h0: torch.Tensor, h: torch.Tensor, b: Batch) -> tuple[torch.Tensor, dict]:
    """BCE of the occlusion probes: per visual token at the language model's input ``h0`` (positives are
    rare: weighted ``OCC_POS_WEIGHT``) and per present mention at the last layer ``h``; recall and accuracy."""
    loss, logs = h.new_zeros(()), {}
    if len(b.occ_pos):
        z = probes.occ_cell(h0[b.occ_pos[:, 0], b.occ_pos[:, 1]])
        loss = loss + F.binary_cross_entropy_with_logits(
            z, b.occ_cells, pos_weight=torch.full((z.shape[1],), OCC_POS_WEIGHT))
        pos = b.occ_cells > 0
        if pos.any():
            logs["occ_cell_recall"] = (z[pos] > 0).float().mean().item()
    known = (b.mention[:, 2] == 1) & (b.mention[:, 6] >= 0)
    if known.any():
        z = probes.occ_mention(h[b.mention[known, 0], b.mention[known, 1]])
        tgt = b.mention[known, 6:8].float()
        loss = loss + F.binary_cross_entropy_with_logits(z, tgt)
        any_pos = tgt.sum(-1) > 0
        if any_pos.any():
            logs["occ_mention_acc"] = ((z[any_pos] > 0).float() == tgt[any_pos]).all(-1).float().mean().item()
    logs["occ"] = loss.item()
    return loss, logs


def forward_losses(model: nn.Module, probes: Probes, b: Batch, cfg: PretrainConfig) -> tuple[torch.Tensor, dict]:
    out = model.model(**b.inputs, output_hidden_states=True, output_attentions=cfg.w_hint > 0, use_cache=False)
    h = out.last_hidden_state
    mid = out.hidden_states[len(out.hidden_states) // 2]
    logs: dict[str, float] = {}
    loss = h.new_zeros(())
    if cfg.w_hint > 0:
        layers = cfg.hint_layers or default_layers(len(out.attentions))
        lh, hl = hint_losses(out.attentions, b.hints, *layers)
        loss = loss + cfg.w_hint * lh
        logs.update(hl)
    for name, probe, rows, w in (("truth", probes.truth, b.truth, cfg.w_truth), ("itm", probes.itm, b.itm, cfg.w_itm)):
        if len(rows) and w > 0:
            lb, acc = binary_probe_loss(probe, h, rows)
            loss = loss + w * lb
            logs[name], logs[f"{name}_acc"] = lb.item(), acc
    if len(b.cmp) and cfg.w_cmp > 0:
        z = probes.cmp(h[b.cmp[:, 0], b.cmp[:, 1]])
        lc = F.cross_entropy(z[:, :3], b.cmp[:, 2]) + F.cross_entropy(z[:, 3:], b.cmp[:, 3])
        loss = loss + cfg.w_cmp * lc
        logs["cmp"] = lc.item()
        logs["cmp_acc"] = ((z[:, :3].argmax(-1) == b.cmp[:, 2]).float().mean().item()
                           + (z[:, 3:].argmax(-1) == b.cmp[:, 3]).float().mean().item()) / 2
    if cfg.w_occlusion > 0:
        lo, ol = occlusion_losses(probes, out.hidden_states[0], h, b)
        loss = loss + cfg.w_occlusion * lo
        logs.update(ol)
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
