"""Loading a Qwen2.5-VL backbone (local folder or hub id) and turning (text, image) into model inputs.

One path for every size: ``Qwen2_5_VLForConditionalGeneration.from_pretrained``,
``AutoTokenizer.from_pretrained`` and ``Qwen2VLImageProcessorPil.from_pretrained`` -- the same calls
load Qwen2.5-VL-7B from the hub and the world's tiny backbone from a folder.

transformers 5.x notes (see ``shared/notes/offline-tiny-models``):

- ``Qwen2_5_VLProcessor`` and the default (fast) Qwen image processor need torchvision, which this
  project must not install. :func:`encode` does the processor's work for images itself: it runs the
  PIL image processor, expands each ``<|image_pad|>`` to one token per merged patch and tokenises.
- It also emits ``mm_token_type_ids`` (1 on image tokens). Without it transformers 5.24 silently falls
  back to 1-D positions instead of Qwen's 3-D M-RoPE.
- Batches are left-padded, so the last position of every row is a real token.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from ..errors import SpatialT2IError

IMAGE_PAD = "<|image_pad|>"
REWARD_TOKEN = "<reward>"
QWEN_SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")

# A minimal Qwen-style chat template: used by the tiny tokenizer, and as a fallback for a
# tokenizer that ships none.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class ModelLoadError(SpatialT2IError, FileNotFoundError):
    """A model folder or hub id could not be found or loaded."""


def image_processor_class() -> type:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_model_source(name_or_path: str | os.PathLike, what: str = "model") -> str:
    """``name_or_path`` as a string; ``ModelLoadError`` naming it if it is neither a folder nor a hub id."""
    name = str(name_or_path)
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"{what}: {name} is a file, not a model folder")
        return str(p.resolve())
    if not _HUB_ID.fullmatch(name):
        raise ModelLoadError(f"{what}: {name}: no such model folder (nor a hub id of the form owner/name)")
    return name


def _chat_template_file(path: str) -> str | None:
    p = Path(path)
    if (p / "chat_template.jinja").is_file():
        return (p / "chat_template.jinja").read_text()
    if (p / "chat_template.json").is_file():
        return json.loads((p / "chat_template.json").read_text()).get("chat_template")
    return None


def load_tokenizer(name_or_path: str) -> Any:
    """The backbone's tokenizer, left-padding, with a chat template."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as e:
        raise ModelLoadError(f"tokenizer: cannot load from {name_or_path} ({e})") from None
    tok.padding_side = "left"
    if tok.chat_template is None:
        tok.chat_template = (_chat_template_file(name_or_path) if Path(name_or_path).is_dir() else None) \
            or CHAT_TEMPLATE
    return tok


def load_image_processor(name_or_path: str) -> Any:
    try:
        return image_processor_class().from_pretrained(name_or_path)
    except OSError as e:
        raise ModelLoadError(f"image processor: cannot load from {name_or_path} ({e})") from None


def load_vlm(name_or_path: str, dtype: torch.dtype = torch.float32) -> Any:
    from transformers import Qwen2_5_VLForConditionalGeneration

    try:
        return Qwen2_5_VLForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype)
    except OSError as e:
        raise ModelLoadError(f"backbone: cannot load Qwen2.5-VL from {name_or_path} ({e})") from None


def image_token_counts(image_grid_thw: torch.Tensor, merge_size: int) -> list[int]:
    """Tokens each image takes in the text: its patch count over ``merge_size**2``."""
    return (image_grid_thw.prod(-1) // merge_size ** 2).tolist()


def expand_image_pads(texts: Sequence[str], counts: Sequence[int]) -> list[str]:
    """Repeat each ``<|image_pad|>`` (in order over all texts) by its image's token count."""
    out, k = [], 0
    for t in texts:
        parts = t.split(IMAGE_PAD)
        s = parts[0]
        for rest in parts[1:]:
            if k >= len(counts):
                raise ValueError(f"texts: more {IMAGE_PAD} placeholders than images ({len(counts)})")
            s += IMAGE_PAD * counts[k] + rest
            k += 1
        out.append(s)
    if k != len(counts):
        raise ValueError(f"texts: {k} {IMAGE_PAD} placeholders for {len(counts)} images")
    return out


def encode(tokenizer: Any, image_processor: Any, texts: Sequence[str],
           images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """Model inputs for chat-formatted ``texts`` with one ``<|image_pad|>`` per image, left-padded.

    Equivalent to ``Qwen2_5_VLProcessor(text=texts, images=images, padding=True)`` for images.
    """
    im = image_processor(images=[img.convert("RGB") for img in images], return_tensors="pt")
    counts = image_token_counts(im["image_grid_thw"], image_processor.merge_size)
    enc = tokenizer(expand_image_pads(texts, counts), padding=True, return_tensors="pt")
    pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    mm = (enc["input_ids"] == pad_id).to(torch.int32)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "mm_token_type_ids": mm,
            "pixel_values": im["pixel_values"], "image_grid_thw": im["image_grid_thw"]}
