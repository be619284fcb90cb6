"""A quick measurement of a pretrained world backbone: BT-train a fresh SpatialScore on a pair dataset.

:func:`finetune_probe` is how the backbones' READMEs measured "what does a short reward fine-tune
reach from this backbone" during pretraining experiments; the project's reward trainer is
``spatialt2i reward train`` and the maintained benchmark ``benchmarks/reward_world.py``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn


def pair_eval(score_model: nn.Module, pairs: Any, bs: int = 32) -> dict[str, float]:
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
    curve = [{"train_s": 0.0, "step": 0, **pair_eval(sm, test)}]
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
                              **pair_eval(sm, test)})
                log("finetune " + json.dumps(curve[-1]))
                last = train_s
            if done:
                break
    return curve
