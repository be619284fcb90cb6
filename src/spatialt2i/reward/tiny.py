"""A tiny random-init Qwen2.5-VL for the built-in world, built fully offline.

``init_tiny(out_dir)`` writes a folder that loads through exactly the calls that load
Qwen2.5-VL-7B (``Qwen2_5_VLForConditionalGeneration``, ``AutoTokenizer``, the Qwen2-VL image
processor, all ``from_pretrained``):

- a byte-level BPE ``Qwen2Tokenizer`` trained here with ``tokenizers`` on the world's words
  (shapes, colours, sizes, regions, relation phrases), the reward instruction and chat words, with
  Qwen's chat and vision special tokens, the ``<reward>`` token and a minimal Qwen-style chat template;
- a ``Qwen2VLImageProcessorPil`` with patch 8 / merge 2 and ``min_pixels = max_pixels = 64*64``:
  every image is resized to 64x64, giving 8x8 patches and **16 visual tokens** (the stock patch 14
  would give 4 tokens for a 64 px image);
- the model, random init, in one of two sizes (``base`` larger than ``small``, for the backbone
  scaling check; the shipped ``base`` is grown from the shipped ``small``, :mod:`spatialt2i.reward.grow`).

Random weights do not understand spatial relations (``notes/world-reward-learnability.md``); the
world pretraining command starts from this folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..gen.tiny import world_corpus
from .backbone import CHAT_TEMPLATE, QWEN_SPECIALS, REWARD_TOKEN, image_processor_class
from .prompt import DEFAULT_INSTRUCTION

IMAGE_SIDE = 64
PATCH_SIZE = 8
MERGE_SIZE = 2

# Text model: head_dim = hidden / heads = 32, so mrope_section must sum to 16.
SIZES: dict[str, dict[str, Any]] = {
    "small": dict(hidden=128, layers=4, heads=4, kv_heads=2, mlp=384, vis_depth=2, vis_hidden=128, vis_heads=4,
                  vis_mlp=256),
    # twice the shipped small's depth at its width: grown from it (reward/grow.py) rather than trained from scratch
    "base": dict(hidden=128, layers=12, heads=4, kv_heads=2, mlp=384, vis_depth=4, vis_hidden=128, vis_heads=4,
                 vis_mlp=256),
}
CHAT_WORDS = ("system user assistant : you are a helpful assistant . yes no true false ? ! "
              "0 1 2 3 4 5 6 7 8 9 describe the image , please . rate the image from 0 to 10 .")


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """The world's sentences plus the reward instruction and chat words."""
    roles = [f"{r}\n" for r in ("system", "user", "assistant")] * 20
    return world_corpus(n=600, seed=seed, extra=[DEFAULT_INSTRUCTION] * 20 + [CHAT_WORDS] * 20 + roles)


def build_tokenizer(vocab_size: int = 600, seed: int = 0) -> Any:
    """A Qwen2 byte-level BPE tokenizer trained offline on :func:`tokenizer_corpus`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    specials = [*QWEN_SPECIALS, REWARD_TOKEN]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(tokenizer_corpus(seed), trainer)
    model = json.loads(bpe.to_str())["model"]
    # tokenizers 0.23 wants merges as tuples, not "a b" strings
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=None, bos_token=None,
                         eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=4096)
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_image_processor(patch: int = PATCH_SIZE) -> Any:
    side = IMAGE_SIDE * IMAGE_SIDE
    return image_processor_class()(patch_size=patch, merge_size=MERGE_SIZE, temporal_patch_size=2,
                                   min_pixels=side, max_pixels=side)


def build_config(tokenizer: Any, size: str = "small", layers: int = 0) -> Any:
    """A ``Qwen2_5_VLConfig`` of the given tiny size whose special ids match ``tokenizer``
    (``layers`` > 0 overrides the size's number of text layers)."""
    from transformers import Qwen2_5_VLConfig

    if size not in SIZES:
        raise ValueError(f"size: unknown tiny size {size!r} (choose from {sorted(SIZES)})")
    s = SIZES[size]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    head_dim = s["hidden"] // s["heads"]
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]   # 16 -> [4, 6, 6], like 64 -> [16, 24, 24]
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=s["hidden"], intermediate_size=s["mlp"],
                         num_hidden_layers=layers or s["layers"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["kv_heads"], max_position_embeddings=2048,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=mrope),
                         bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=s["vis_depth"], hidden_size=s["vis_hidden"], intermediate_size=s["vis_mlp"],
                           num_heads=s["vis_heads"], patch_size=s.get("patch", PATCH_SIZE), spatial_merge_size=MERGE_SIZE,
                           temporal_patch_size=2, window_size=IMAGE_SIDE * 2,
                           fullatt_block_indexes=[s["vis_depth"] - 1], out_hidden_size=s["hidden"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def init_tiny(out_dir: str | os.PathLike, size: str = "small", seed: int = 0, layers: int = 0) -> Path:
    """Build and save a random-init tiny Qwen2.5-VL, its tokenizer and image processor to ``out_dir``."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    tok = build_tokenizer(seed=seed)
    cfg = build_config(tok, size, layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    build_image_processor(SIZES[size].get("patch", PATCH_SIZE)).save_pretrained(out)
    return out
