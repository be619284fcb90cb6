"""Zero-shot judge from a (pretrained) Qwen2.5-VL, without any reward training.

The baseline that mirrors the paper's zero-shot Qwen2.5-VL rows. Two scores of (prompt, image):

* ``yesno`` -- the prompt is cut into clauses (at ". ", "; ", ", and "); each clause is asked as a
  one-turn question "<clause> ?" and the score is the mean over clauses of
  log P(yes) - log P(no) (first answer token);
* ``allyes`` -- the same questions; the score is the log-probability that every clause is answered
  yes, taking the answers as independent: the sum over clauses of log sigma(log P(yes) - log P(no)).
  A clause the model is sure of adds about 0 whatever its margin, so one broken relation among many
  is not drowned by the others' margins;
* ``logp`` -- the mean log-likelihood per token of the prompt given the image.

A pair counts as correct when the chosen image scores higher than the rejected one. The same code
works for any Qwen2.5-VL (it only uses the tokenizer, the image processor and the LM head).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from .backbone import IMAGE_PAD, encode
from .prompt import DEFAULT_INSTRUCTION

_SPLIT = re.compile(r"(?:\.\s+|;\s+|,\s+and\s+)")


def split_clauses(prompt: str) -> list[str]:
    parts = [p.strip().rstrip(".").strip() for p in _SPLIT.split(prompt.strip())]
    return [p for p in parts if p]


@dataclass
class Pairs:
    prompts: list[str]
    chosen: list[Image.Image]
    rejected: list[Image.Image]
    n_perturbations: list[int | None]


def load_pairs(root: str | os.PathLike, split: str = "test", n: int = 0) -> Pairs:
    """The first ``n`` (0: all) good pairs of a pair dataset split."""
    from .collate import iter_pair_batches

    out = Pairs([], [], [], [])
    for b in iter_pair_batches(root, split, batch_size=64):
        out.prompts += b.prompts
        out.chosen += b.chosen
        out.rejected += b.rejected
        out.n_perturbations += b.n_perturbations
        if n and len(out.prompts) >= n:
            break
    if n:
        out = Pairs(out.prompts[:n], out.chosen[:n], out.rejected[:n], out.n_perturbations[:n])
    if not out.prompts:
        raise ValueError(f"{root}: no pairs in split {split!r}")
    return out


def _yes_no_ids(tok: Any) -> tuple[int, int]:
    from .pretrain_batch import answer_ids
    return answer_ids(tok)


@torch.no_grad()
def yesno_scores(model: Any, tok: Any, ip: Any, prompts: Sequence[str], images: Sequence[Image.Image],
                 bs: int = 64, aggregate: str = "mean") -> torch.Tensor:
    """Per prompt, over its clauses: the mean of log P(yes) - log P(no) (``aggregate="mean"``) or the
    sum of log sigma(log P(yes) - log P(no)) (``"all"``: log P(every clause is true))."""
    yes, no = _yes_no_ids(tok)
    texts, imgs, owner = [], [], []
    for i, (p, im) in enumerate(zip(prompts, images)):
        for c in split_clauses(p) or [p]:
            texts.append(f"<|im_start|>user\n<|vision_start|>{IMAGE_PAD}<|vision_end|>{c} ?<|im_end|>\n"
                         f"<|im_start|>assistant\n")
            imgs.append(im)
            owner.append(i)
    vals = []
    for k in range(0, len(texts), bs):
        enc = encode(tok, ip, texts[k:k + bs], imgs[k:k + bs])
        h = model.model(**enc, use_cache=False).last_hidden_state[:, -1]
        lp = torch.log_softmax(model.lm_head(h).float(), -1)
        vals.append(lp[:, yes] - lp[:, no])
    v = torch.cat(vals)
    own = torch.tensor(owner)
    if aggregate == "all":
        return torch.zeros(len(prompts)).index_add_(0, own, torch.nn.functional.logsigmoid(v))
    out = torch.zeros(len(prompts)).index_add_(0, own, v)
    return out / torch.bincount(own, minlength=len(prompts)).clamp(min=1)


@torch.no_grad()
def logp_scores(model: Any, tok: Any, ip: Any, prompts: Sequence[str], images: Sequence[Image.Image],
                bs: int = 32, instruction: str = DEFAULT_INSTRUCTION) -> torch.Tensor:
    """Mean log-likelihood per prompt token, given the image (and the instruction)."""
    out = []
    for k in range(0, len(prompts), bs):
        ps, ims = list(prompts[k:k + bs]), list(images[k:k + bs])
        heads = [f"<|im_start|>user\n<|vision_start|>{IMAGE_PAD}<|vision_end|>{instruction}" for _ in ps]
        texts = [h + p + "<|im_end|>\n<|im_start|>assistant\n" for h, p in zip(heads, ps)]
        enc = encode(tok, ip, texts, ims)
        ids = enc["input_ids"]
        h = model.model(**enc, use_cache=False).last_hidden_state
        lp = torch.log_softmax(model.lm_head(h[:, :-1]).float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        tail = len(tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
        for r, p in enumerate(ps):
            n = len(tok(p, add_special_tokens=False)["input_ids"])
            L = ids.shape[1]
            seg = lp[r, L - 1 - tail - n:L - 1 - tail]
            out.append(seg.mean())
    return torch.stack(out)


def score(model: Any, tok: Any, ip: Any, prompts: Sequence[str], images: Sequence[Image.Image],
          mode: str = "yesno") -> torch.Tensor:
    if mode == "yesno":
        return yesno_scores(model, tok, ip, prompts, images)
    if mode == "allyes":
        return yesno_scores(model, tok, ip, prompts, images, aggregate="all")
    if mode == "logp":
        return logp_scores(model, tok, ip, prompts, images)
    raise ValueError(f"mode: unknown zero-shot mode {mode!r} (yesno, allyes or logp)")


def pair_accuracy(model: Any, tok: Any, ip: Any, pairs: Pairs, mode: str = "yesno") -> dict[str, float]:
    """Share of pairs whose chosen image outscores the rejected one: overall, 1 and 2-3 perturbations."""
    was = model.training
    model.eval()
    sc = score(model, tok, ip, pairs.prompts, pairs.chosen, mode)
    sr = score(model, tok, ip, pairs.prompts, pairs.rejected, mode)
    model.train(was)
    ok = (sc > sr).float()
    groups: dict[str, list[float]] = defaultdict(list)
    for v, n in zip(ok.tolist(), pairs.n_perturbations):
        groups["acc"].append(v)
        groups["acc_1" if n == 1 else "acc_2_3"].append(v)
    return {k: sum(v) / len(v) for k, v in groups.items()}
