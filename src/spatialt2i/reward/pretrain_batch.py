"""Batches of the tiny VLM's world pretraining: :func:`collate` tokenises samples of
``reward/pretrain_data.py`` and maps every target's character offset to its token position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .attn_hints import Hints, box_cell_weights
from .occlusion import NCOL, cell_targets
from .pretrain_data import Sample


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
    mention: torch.Tensor    # (m, 8): row, pos, present, x, y, size, hidden, hiding (-1: unknown)
    answer: torch.Tensor     # (a, 3): row, pos (predicting), target token id
    answer_cls: torch.Tensor  # (a,): 0 yes / 1 no
    lm: torch.Tensor         # (l, 3): row, pos (predicting), target token id
    itm: torch.Tensor        # (i, 3): row, pos of the <reward> token, 1 if every clause is true
    cmp: torch.Tensor        # (c, 4): row, clause-query pos, x comparison, y comparison (0/1/2)
    hints: Hints             # attention hint targets
    occ_pos: torch.Tensor    # (v, 2): row, pos of a visual token with occlusion targets
    occ_cells: torch.Tensor  # (v, 2 * NCOL): its targets (reward/occlusion.py)


def collate(samples: Sequence[Sample], tok: Any, image_processor: Any, yes_no_ids: tuple[int, int]) -> Batch:
    from .backbone import IMAGE_PAD, image_token_counts

    im = image_processor(images=[s.image.convert("RGB") for s in samples], return_tensors="pt")
    counts = image_token_counts(im["image_grid_thw"], image_processor.merge_size)
    merge = image_processor.merge_size
    pad_id = tok.convert_tokens_to_ids(IMAGE_PAD)
    rows, truth, mention, answer, acls, lm = [], [], [], [], [], []
    bind, ground, ground_tgt, img_start, role, itm, cmp = [], [], [], [], [], [], []
    occ_pos: list[tuple[int, int]] = []
    occ_cells: list[np.ndarray] = []
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
        for c, *tgt in s.mentions:
            mention.append((r, int(c2t[fix(c)]), *tgt))
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
        if s.occlusion is not None:
            occ_cells.append(cell_targets(*s.occlusion, gh // merge, gw // merge))
            occ_pos += [(r, img_start[-1] + k) for k in range(n_img)]
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
    occ = torch.from_numpy(np.concatenate(occ_cells)) if occ_cells else torch.zeros((0, 2 * NCOL))
    return Batch(inputs, shifted(truth, 3), shifted(mention, 8), shifted(answer, 3),
                 torch.tensor(acls, dtype=torch.long), shifted(lm, 3), shifted(itm, 3), shifted(cmp, 4), hints,
                 shifted(occ_pos, 2), occ)


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
