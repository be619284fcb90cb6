"""Token grounding for the world generator's pretraining (opt-in, ``grounding_weight`` > 0).

In a Flux double block the image tokens attend jointly to the text and image tokens. A tiny
random-init generator learns slowly which image tokens should read which object's words, so its
early samples mix colours and shapes. Following TokenCompose (Wang et al., CVPR 2024, the
token loss), the attention that the image tokens give to an object's colour and shape words,
normalised over the image positions, should fall inside that object's pixels:

    a_t(p) = A(p, t) / sum_p' A(p', t),      L = mean over object words t of (1 - sum_{p in M_obj(t)} a_t(p))^2

where A is the image-to-text block of the attention probabilities (mean over heads) and M the
object's visible pixels on the image-token grid. The targets come from the rendered scene, so the
loss needs no model of its own; it is added to the flow-matching loss during pretraining only
(the saved pipeline keeps diffusers' own attention processors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections


@dataclass
class GroundingTargets:
    """Flattened (sample, text token, object) triples and the objects' token-grid masks."""
    batch: torch.Tensor    # (K,) sample index of each object word
    token: torch.Tensor    # (K,) text-token index of each object word
    obj: torch.Tensor      # (K,) row of ``masks`` for each object word
    masks: torch.Tensor    # (O, N_img) float 0/1: the object's visible pixels on the image-token grid

    def __len__(self) -> int:
        return int(self.batch.numel())


def token_grid_mask(pixels: np.ndarray, cell: int) -> np.ndarray:
    """(H, W) bool -> (H/cell * W/cell,) bool, row-major like Flux's packed latents: a cell is on
    when any of its pixels is."""
    h, w = pixels.shape
    if h % cell or w % cell:
        raise ValueError(f"image {h}x{w} is not a multiple of the token cell {cell}")
    return pixels.reshape(h // cell, cell, w // cell, cell).any(axis=(1, 3)).reshape(-1)


def object_tokens(scenes: Sequence[Any], image_size: int, cell: int) -> torch.Tensor:
    """(B, N_img) float 0/1: the packed image tokens that show some object of each scene."""
    from spatialt2i.world.render import id_map

    return torch.tensor(np.stack([token_grid_mask(id_map(s, image_size) > 0, cell) for s in scenes]),
                        dtype=torch.float32)


def mention_spans(prompt: str, colour: str, shape: str) -> list[tuple[int, int]]:
    """Character spans of "<colour> <shape>" (whole words) in ``prompt``."""
    pat = re.compile(rf"\b{re.escape(colour)} {re.escape(shape)}\b")
    return [m.span() for m in pat.finditer(prompt)]


def mention_tokens(prompt: str, offsets: Sequence[tuple[int, int]], colour: str, shape: str) -> list[int]:
    """Sorted indices of the tokens (``offsets``: the tokenizer's offset mapping of ``prompt``) that
    overlap any "<colour> <shape>" mention; padding and special tokens (empty spans) never do."""
    return sorted({t for a, z in mention_spans(prompt, colour, shape)
                   for t, (s, e) in enumerate(offsets) if e > s and s < z and e > a})


def grounding_targets(scenes: Sequence[Any], prompts: Sequence[str], tokenizer: Any, max_length: int,
                      image_size: int, cell: int) -> GroundingTargets:
    """Targets for a batch: each object's colour/shape word tokens (as the T5 encoder of the
    pipeline tokenizes ``prompts``: padded to ``max_length``) and its visible pixels (a scene's
    objects differ in colour or shape, so "<colour> <shape>" names one object)."""
    from spatialt2i.world.render import id_map

    enc = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    return_offsets_mapping=True)
    bs, ts, os_, masks = [], [], [], []
    for b, (scene, prompt) in enumerate(zip(scenes, prompts)):
        ids = id_map(scene, image_size)
        offsets = enc["offset_mapping"][b]
        for i, o in enumerate(scene.objects):
            mask = token_grid_mask(ids == i + 1, cell)
            if not mask.any():
                continue
            toks = mention_tokens(prompt, offsets, o.colour, o.shape)
            if not toks:
                continue
            masks.append(mask)
            for t in toks:
                bs.append(b), ts.append(t), os_.append(len(masks) - 1)
    n_img = (image_size // cell) ** 2
    return GroundingTargets(torch.tensor(bs, dtype=torch.long), torch.tensor(ts, dtype=torch.long),
                            torch.tensor(os_, dtype=torch.long),
                            torch.tensor(np.array(masks), dtype=torch.float32) if masks else torch.zeros(0, n_img))


def grounding_loss(img_to_txt: torch.Tensor, targets: GroundingTargets) -> torch.Tensor:
    """TokenCompose's token loss on ``img_to_txt`` (B, N_img, N_txt) attention probabilities."""
    if len(targets) == 0:
        return img_to_txt.sum() * 0.0
    a = img_to_txt[targets.batch, :, targets.token]                   # (K, N_img)
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
    inside = (a * targets.masks[targets.obj]).sum(-1)
    return (1.0 - inside).pow(2).mean()


class RecordingFluxAttnProcessor(FluxAttnProcessor):
    """diffusers' Flux joint attention with an explicit softmax, keeping the image-to-text
    probabilities (mean over heads) of the last call in ``img_to_txt`` (B, N_img, N_txt).
    The output equals :class:`FluxAttnProcessor`'s up to float rounding (test)."""

    def __init__(self) -> None:
        super().__init__()
        self.img_to_txt: torch.Tensor | None = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None) -> Any:
        if encoder_hidden_states is None or attention_mask is not None:
            raise ValueError("RecordingFluxAttnProcessor is for double (joint) blocks without an attention mask")
        q, k, v, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        q, k, v = (x.unflatten(-1, (-1, attn.head_dim)) for x in (q, k, v))
        eq, ek, ev = (x.unflatten(-1, (-1, attn.head_dim)) for x in (eq, ek, ev))
        q = torch.cat([attn.norm_added_q(eq), attn.norm_q(q)], dim=1)
        k = torch.cat([attn.norm_added_k(ek), attn.norm_k(k)], dim=1)
        v = torch.cat([ev, v], dim=1)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))             # (B, H, N, D)
        probs = torch.softmax((q @ k.transpose(-1, -2)) * attn.head_dim ** -0.5, dim=-1)
        n_txt = encoder_hidden_states.shape[1]
        self.img_to_txt = probs[:, :, n_txt:, :n_txt].mean(1)
        out = (probs @ v).transpose(1, 2).flatten(2, 3).to(q.dtype)
        enc_out, img_out = out.split_with_sizes([n_txt, out.shape[1] - n_txt], dim=1)
        img_out = attn.to_out[1](attn.to_out[0](img_out.contiguous()))
        return img_out, attn.to_add_out(enc_out.contiguous())


def install_recorders(transformer: Any) -> list[RecordingFluxAttnProcessor]:
    """Put a recording processor on each double block of ``transformer``; returns them in order."""
    procs = []
    for block in transformer.transformer_blocks:
        proc = RecordingFluxAttnProcessor()
        block.attn.set_processor(proc)
        procs.append(proc)
    return procs


def remove_recorders(transformer: Any) -> None:
    """Back to diffusers' default processor on the double blocks."""
    for block in transformer.transformer_blocks:
        block.attn.set_processor(FluxAttnProcessor())
