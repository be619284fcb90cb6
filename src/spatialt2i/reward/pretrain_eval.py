"""Held-out evaluation of the world VLM's pretraining: yes/no VQA accuracy (LM argmax over yes/no),
and the training probes' accuracies (clause truth, image-text match at ``<reward>``, comparison, the
8-cell position of each named object) on samples with their own seed and layouts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .pretrain_batch import collate
from .pretrain_data import GROUP_WEIGHTS, NCELL, Sample, WorldSampler

if TYPE_CHECKING:
    from .pretrain import PretrainConfig
    from .pretrain_losses import Probes


def make_eval_sets(tok: Any, cfg: PretrainConfig, n_questions: int, seed: int = 12345) -> dict[str, list[Sample]]:
    """Held-out samples (their own seed and layouts): single-question VQA (full and easy), statements, and
    VQA about in front of / behind only (rare in the full mix: it needs overlapping objects)."""
    occ = cfg.w_occlusion > 0
    sm = WorldSampler(tok, seed, pool=max(200, n_questions // 2), refresh=0, colour_marks=False, occlusion=occ)
    sm.layouts.fill()
    depth = WorldSampler(tok, seed + 1, pool=0, refresh=0, colour_marks=False,
                         group_weights={g: float(g == "depth") for g in GROUP_WEIGHTS}, p_overlap=1.0, occlusion=occ)
    depth.layouts.pool, depth.layouts.deep = sm.layouts.pool, sm.layouts.deep
    sets: dict[str, list[Sample]] = {"vqa": [], "vqa_easy": [], "statements": [], "vqa_depth": []}
    for name, easy, vqa, n, src in (("vqa", False, True, n_questions, sm), ("vqa_easy", True, True, n_questions // 2, sm),
                                    ("statements", False, False, n_questions // 4, sm),
                                    ("vqa_depth", False, True, n_questions // 3, depth)):
        if src is depth and not depth.layouts.deep:
            continue
        want = {0: n // 2, 1: n - n // 2}
        while len(sets[name]) < n:
            s = src.sample(easy, vqa, cfg, n_questions=1)
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
        correct = n = tc = tn = mx = my = mn = ic = inn = cc = cn = oc = on = 0
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
            known = ok & (b.mention[:, 6] >= 0) & (b.mention[:, 6:8].sum(-1) > 0)
            if cfg.w_occlusion > 0 and known.any():
                z = probes.occ_mention(h[b.mention[known, 0], b.mention[known, 1]])
                oc += ((z > 0).long() == b.mention[known, 6:8]).all(-1).sum().item()
                on += int(known.sum())
        if n:
            res[f"{name}_acc"] = correct / n
        if on:
            res[f"{name}_occ"] = oc / on
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
