"""Grow a saved tiny Qwen2.5-VL backbone deeper without changing what it computes (block expansion).

The world's two backbone sizes check the paper's backbone-scaling result (Qwen2.5-VL-3B 89.1 % ->
7B 95.8 %). Pretraining the larger size from random weights for as long as the small one had costs
hours of this CPU, so the larger size is *grown* from the small one, as LLaMA Pro grows a language
model: after each original block a copy of it is inserted whose output projections (attention
``o_proj`` / ``proj`` and the MLP's ``down_proj``, weights and biases) are zero. A zeroed block
adds nothing to the residual stream, so the grown model computes exactly what the small one did
(tested), and continued pretraining teaches the new blocks; their other weights start as the copied
block's, so they are not dead. Both the text decoder and the vision tower can grow; the width, the
tokenizer, the image processor and the optional position features (``posfeat``) are kept.

Original block ``i`` lands at index ``i * factor`` (``factor`` = new depth / old depth, an integer),
its copies right after it. :func:`grown_index` maps old layer indices to new ones, e.g. for the
pretraining's attention-hint layers.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

TEXT_ZERO = ("self_attn.o_proj", "mlp.down_proj")      # writes of a decoder layer into the residual stream
VISION_ZERO = ("attn.proj", "mlp.down_proj")           # writes of a vision block


def growth_factor(old: int, new: int, what: str) -> int:
    """``new / old`` as an integer >= 1, or a ConfigError naming ``what``."""
    if old < 1 or new < old or new % old:
        raise ConfigError(f"{what}: can grow {old} blocks to a multiple of {old} (>= {old}), not to {new}")
    return new // old


def grown_index(i: int, factor: int) -> int:
    """Where original block ``i`` sits after growing by ``factor``."""
    return i * factor


def _expand(blocks: torch.nn.ModuleList, factor: int, zero: tuple[str, ...]) -> torch.nn.ModuleList:
    out = []
    for blk in blocks:
        out.append(blk)
        for _ in range(factor - 1):
            new = copy.deepcopy(blk)
            for name in zero:
                lin = new.get_submodule(name)
                torch.nn.init.zeros_(lin.weight)
                if lin.bias is not None:
                    torch.nn.init.zeros_(lin.bias)
            out.append(new)
    return torch.nn.ModuleList(out)


def grow_model(model: Any, text_layers: int, vision_depth: int) -> Any:
    """Grow a loaded ``Qwen2_5_VLForConditionalGeneration`` in place to ``text_layers`` decoder layers
    and ``vision_depth`` vision blocks; returns it (its config updated to match)."""
    cfg = model.config
    tc, vc = cfg.text_config, cfg.vision_config
    ft = growth_factor(tc.num_hidden_layers, text_layers, "text_layers")
    fv = growth_factor(vc.depth, vision_depth, "vision_depth")
    lm, visual = model.model.language_model, model.model.visual
    lm.layers = _expand(lm.layers, ft, TEXT_ZERO)
    visual.blocks = _expand(visual.blocks, fv, VISION_ZERO)
    for i, layer in enumerate(lm.layers):                 # each layer knows its index (attention caches)
        layer.self_attn.layer_idx = i
    types = list(getattr(tc, "layer_types", None) or ["full_attention"] * tc.num_hidden_layers)
    tc.layer_types = [t for t in types for _ in range(ft)]
    tc.num_hidden_layers = text_layers
    # full-attention vision blocks: an original full block and its copies stay full
    full = set(vc.fullatt_block_indexes)
    vc.fullatt_block_indexes = [grown_index(i, fv) + j for i in sorted(full) for j in range(fv)]
    visual.fullatt_block_indexes = vc.fullatt_block_indexes
    vc.depth = vision_depth
    return model


def grow_backbone(src: str | os.PathLike, out: str | os.PathLike, text_layers: int, vision_depth: int) -> Path:
    """Load the backbone folder ``src`` (or ``asset:NAME``), grow it and save it to ``out`` (a folder
    that loads like the original: ``from_pretrained`` + ``posfeat.attach_if_present``)."""
    from .pretrain import load_backbone, resolve_backbone, save_backbone

    path = resolve_backbone(str(src))
    model, tok, ip = load_backbone(path)
    grow_model(model, text_layers, vision_depth)
    dest = Path(out)
    save_backbone(model, tok, ip, dest, meta={"grown_from": str(src), "text_layers": text_layers,
                                              "vision_depth": vision_depth})
    return dest


__all__ = ["grow_backbone", "grow_model", "grown_index", "growth_factor"]
