"""SpatialScore: a Qwen2.5-VL backbone with LoRA, a ``<reward>`` token and a Gaussian head.

The text is the chat template of one user turn (image, instruction + prompt) with the assistant
turn opened and ``<reward>`` as its first token. The last hidden state at ``<reward>`` goes through
an fp32 MLP head to (mu, log_sigma); mu is the reward.

Trainable: the LoRA adapter (language model; vision tower optional), the head, and the
``<reward>`` embedding row. The row is a separate fp32 parameter written over the embedding
output by a forward hook on the input embedding, rather than peft's ``trainable_token_indices``:
peft 0.21 rebuilds (``index_copy``) the whole embedding matrix on every forward, about 1 GB per
step for the 7B's 152k x 3584 matrix in bf16; the hook costs one ``where`` over the batch.

Checkpoint folder (``save_pretrained`` / ``from_pretrained``)::

    spatialscore.json          base model, LoRA settings, instruction, reward token, head size
    adapter/                   peft LoRA adapter (absent when the backbone is frozen)
    head.safetensors           head weights + the <reward> embedding row
    tokenizer files, preprocessor_config.json   (tokenizer includes <reward>)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from . import posfeat
from .backbone import (REWARD_TOKEN, ModelLoadError, check_model_source, encode, load_image_processor,
                       load_tokenizer, load_vlm)
from .head import GaussianHead
from .prompt import DEFAULT_INSTRUCTION, check_prompt, reward_text

CONFIG_NAME = "spatialscore.json"
HEAD_NAME = "head.safetensors"
ADAPTER_DIR = "adapter"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the language model's linear layers; optionally on the vision tower's attention too."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    vision: bool = False
    vision_targets: tuple[str, ...] = ("attn.qkv", "attn.proj")

    def target_regex(self) -> str:
        """A peft ``target_modules`` regex that matches only the intended modules."""
        alt = lambda names: "|".join(re.escape(n) for n in names)  # noqa: E731
        pats = [rf"(?:.*\.)?language_model\.layers\.\d+\.(?:.*\.)?(?:{alt(self.targets)})"]
        if self.vision:
            pats.append(rf"(?:.*\.)?visual\.blocks\.\d+\.(?:{alt(self.vision_targets)})")
        return "|".join(f"(?:{p})" for p in pats)


@dataclass
class SpatialScoreConfig:
    base_model: str
    lora: LoraSettings | None = field(default_factory=LoraSettings)  # None: backbone frozen
    instruction: str = DEFAULT_INSTRUCTION
    reward_token: str = REWARD_TOKEN
    head_hidden: int = 0  # 0: min(backbone hidden size, 1024)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["format_version"] = FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "SpatialScoreConfig":
        d = dict(d)
        d.pop("format_version", None)
        lora = d.pop("lora", None)
        try:
            lora_s = None if lora is None else LoraSettings(**{k: tuple(v) if isinstance(v, list) else v
                                                               for k, v in lora.items()})
            return cls(lora=lora_s, **d)
        except TypeError as e:
            raise ValueError(f"{where}: malformed SpatialScore config ({e})") from None


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """Backbone dtype: bf16 on CUDA and fp32 elsewhere unless given."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return dtype


class SpatialScore(nn.Module):
    """Reward model: ``forward(prompts, images) -> {"mu", "log_sigma", "sigma"}`` (batched, with grad)."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, image_processor: Any, config: SpatialScoreConfig,
                 reward_embedding: Tensor, head: GaussianHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self.reward_token_id = int(tokenizer.convert_tokens_to_ids(config.reward_token))
        self.reward_embedding = nn.Parameter(reward_embedding.detach().float().clone())
        self.head = head
        self._hook = self.vlm.get_input_embeddings().register_forward_hook(self._write_reward_embedding)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, base_model: str | os.PathLike, lora: LoraSettings | None = LoraSettings(),
                      instruction: str = DEFAULT_INSTRUCTION, head_hidden: int = 0,
                      reward_token: str = REWARD_TOKEN, device: str | torch.device = "cpu",
                      dtype: torch.dtype | str | None = None, seed: int = 0) -> "SpatialScore":
        """A fresh reward model (new LoRA adapter, new head) on a pretrained Qwen2.5-VL.

        ``lora=None`` freezes the whole backbone (only the head and the ``<reward>`` row train).
        """
        base = check_model_source(base_model, "reward backbone")
        config = SpatialScoreConfig(base_model=base, lora=lora,
                                    instruction=instruction, reward_token=reward_token, head_hidden=head_hidden)
        return cls._build(config, load_tokenizer(base), load_image_processor(base), None, torch.device(device),
                          dtype, seed, trainable=True)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, base_model: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                        trainable: bool = False) -> "SpatialScore":
        """Load a checkpoint written by :meth:`save_pretrained` (``base_model`` overrides the stored one)."""
        ckpt = Path(path).expanduser()
        if not (ckpt / CONFIG_NAME).is_file():
            what = "no such folder" if not ckpt.exists() else f"not a SpatialScore checkpoint (no {CONFIG_NAME})"
            raise ModelLoadError(f"reward model: {path}: {what}")
        config = SpatialScoreConfig.from_dict(json.loads((ckpt / CONFIG_NAME).read_text()), str(ckpt / CONFIG_NAME))
        if base_model is not None:
            config.base_model = str(base_model)
        config.base_model = check_model_source(config.base_model, f"reward backbone (from {ckpt / CONFIG_NAME})")
        return cls._build(config, load_tokenizer(str(ckpt)), load_image_processor(str(ckpt)), ckpt,
                          torch.device(device), dtype, 0, trainable)

    @classmethod
    def _build(cls, config: SpatialScoreConfig, tokenizer: Any, image_processor: Any, ckpt: Path | None,
               device: torch.device, dtype: torch.dtype | str | None, seed: int, trainable: bool) -> "SpatialScore":
        from peft import LoraConfig, PeftModel, get_peft_model
        from safetensors.torch import load_file

        vlm = load_vlm(config.base_model, resolve_dtype(dtype, device))
        # the tiny world backbone's optional visual position features (reward/posfeat.py); a no-op for
        # a hub id or a stock folder
        posfeat.attach_if_present(vlm, config.base_model)
        emb_row = add_reward_token(vlm, tokenizer, config.reward_token)
        hidden = vlm.config.text_config.hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = GaussianHead(hidden, config.head_hidden or min(hidden, 1024))
            if config.lora is None:
                backbone: nn.Module = vlm
            elif ckpt is not None:
                backbone = PeftModel.from_pretrained(vlm, str(ckpt / ADAPTER_DIR), is_trainable=trainable)
            else:
                lc = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                                target_modules=config.lora.target_regex(), bias="none")
                backbone = get_peft_model(vlm, lc)
        vlm.requires_grad_(False)
        if isinstance(backbone, PeftModel) and trainable:
            for n, p in backbone.named_parameters():
                p.requires_grad_("lora_" in n)
        model = cls(backbone, tokenizer, image_processor, config, emb_row, head)
        if ckpt is not None:
            state = load_file(str(ckpt / HEAD_NAME))
            model.reward_embedding.data.copy_(state.pop("reward_embedding"))
            model.head.load_state_dict(state)
        model.reward_embedding.requires_grad_(trainable)
        model.head.requires_grad_(trainable)
        return model.to(device)

    # ---- properties ---------------------------------------------------------------------------------
    @property
    def vlm(self) -> nn.Module:
        """The ``Qwen2_5_VLForConditionalGeneration`` (with LoRA layers injected, if any)."""
        from peft import PeftModel
        return self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone

    @property
    def device(self) -> torch.device:
        return self.reward_embedding.device

    @property
    def backbone_dtype(self) -> torch.dtype:
        return self.vlm.get_input_embeddings().weight.dtype

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        self.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---- forward ------------------------------------------------------------------------------------
    def _write_reward_embedding(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        mask = (args[0] == self.reward_token_id).unsqueeze(-1)
        return torch.where(mask, self.reward_embedding.to(output.dtype), output)

    def encode(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> dict[str, Tensor]:
        """Left-padded model inputs (on this model's device) for prompt/image pairs."""
        if len(prompts) != len(images):
            raise ValueError(f"prompts/images: {len(prompts)} prompts but {len(images)} images")
        if not prompts:
            raise ValueError("prompts: empty batch")
        for i, img in enumerate(images):
            if not isinstance(img, Image.Image):
                raise ValueError(f"images[{i}]: expected a PIL image, got {type(img).__name__}")
        texts = [reward_text(self.tokenizer, check_prompt(p, i, self.config.reward_token), self.config.instruction,
                             self.config.reward_token) for i, p in enumerate(prompts)]
        enc = encode(self.tokenizer, self.image_processor, texts, images)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        enc["pixel_values"] = enc["pixel_values"].to(self.backbone_dtype)
        return enc

    def forward(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> dict[str, Tensor]:
        enc = self.encode(prompts, images)
        hidden = self.vlm.model(**enc, use_cache=False).last_hidden_state
        pos = reward_positions(enc["input_ids"], self.reward_token_id)
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]
        mu, log_sigma = self.head(h.float())
        return {"mu": mu, "log_sigma": log_sigma, "sigma": torch.exp(log_sigma)}

    @torch.no_grad()
    def score(self, prompts: Sequence[str], images: Sequence[Image.Image],
              batch_size: int | None = None) -> dict[str, Tensor]:
        """``{"reward", "mu", "sigma"}`` as fp32 CPU tensors; no grad, eval mode, in chunks of ``batch_size``."""
        was_training = self.training
        self.eval()
        try:
            n = len(prompts)
            if len(images) != n:
                raise ValueError(f"prompts/images: {n} prompts but {len(images)} images")
            if n == 0:
                raise ValueError("prompts: empty batch")
            step = batch_size or max(n, 1)
            outs = [self(prompts[i:i + step], images[i:i + step]) for i in range(0, n, step)]
        finally:
            self.train(was_training)
        mu = torch.cat([o["mu"] for o in outs]).float().cpu()
        sigma = torch.cat([o["sigma"] for o in outs]).float().cpu()
        return {"reward": mu, "mu": mu, "sigma": sigma}

    # ---- saving -------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint folder atomically (to a temporary folder, then moved into place)."""
        from safetensors.torch import save_file

        out = Path(path).expanduser()
        if out.exists() and any(out.iterdir()) and not (out / CONFIG_NAME).is_file():
            raise FileExistsError(f"reward model: {out} exists and is not a SpatialScore checkpoint; not overwriting")
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if self.config.lora is not None:
            self.backbone.save_pretrained(str(tmp / ADAPTER_DIR), save_embedding_layers=False)
        state = {f"{k}": v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()}
        state["reward_embedding"] = self.reward_embedding.detach().float().cpu().contiguous()
        save_file(state, str(tmp / HEAD_NAME))
        self.tokenizer.save_pretrained(str(tmp))
        self.image_processor.save_pretrained(str(tmp))
        (tmp / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return out


def reward_positions(input_ids: Tensor, reward_token_id: int) -> Tensor:
    """Index of the ``<reward>`` token in each row; ``ValueError`` unless each row has exactly one."""
    mask = input_ids == reward_token_id
    counts = mask.sum(-1)
    if not bool((counts == 1).all()):
        bad = int((counts != 1).nonzero()[0, 0])
        raise ValueError(f"batch row {bad}: expected one reward token, found {int(counts[bad])}")
    return mask.to(torch.int64).argmax(-1)


def add_reward_token(vlm: nn.Module, tokenizer: Any, token: str) -> Tensor:
    """Ensure ``token`` is a special token of ``tokenizer`` with an embedding row; return that row's value.

    A token new to the tokenizer starts at the mean of the existing embedding rows (deterministic, so
    a checkpoint reloads identically); the matrix grows only if the id falls outside it (Qwen2.5-VL-7B
    has spare rows, so it does not).
    """
    from tokenizers import AddedToken

    emb = vlm.get_input_embeddings()
    existed = token in tokenizer.get_vocab()
    if not existed:
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    tid = int(tokenizer.convert_tokens_to_ids(token))
    n_old = emb.weight.shape[0]
    if tid >= n_old:
        vlm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb = vlm.get_input_embeddings()
    with torch.no_grad():
        if not existed:
            emb.weight[tid] = emb.weight[:min(n_old, tid)].float().mean(0).to(emb.weight.dtype)
        return emb.weight[tid].detach().float().clone()
