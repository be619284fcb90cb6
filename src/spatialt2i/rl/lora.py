"""LoRA on the Flux transformer (peft), saved in diffusers' format.

:func:`save_lora` writes ``pytorch_lora_weights.safetensors`` with ``FluxPipeline.save_lora_weights``
(keys ``transformer.<module>.lora_A/B.weight`` plus the adapter's rank/alpha as metadata), so
``FluxPipeline.load_lora_weights(DIR)`` loads it on any Flux pipeline, FLUX.1-dev or the world's.
:func:`load_lora_into` puts such a file back into a transformer that already has the adapter
(resume), :func:`load_lora_pipeline` into a plain pipeline (benchmarks).

Without LoRA dropout, on fp32 CPU weights (:func:`fuse_lora`), every adapted linear computes
``x @ (W + s * B @ A)^T + bias``: one matmul per layer instead of three plus a scale and an add.
The merged weight is rebuilt on each call (a rank-r product, tiny next to the activations), so
sampling under ``no_grad`` and training replay with gradients run the very same arithmetic and the
gradients reach ``A`` and ``B``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from spatialt2i.errors import SpatialT2IError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER = "default"


class LoraLoadError(SpatialT2IError, ValueError):
    """A LoRA folder is missing or does not fit the transformer."""


def add_lora(transformer: torch.nn.Module, rank: int, alpha: float, targets: list[str],
             dropout: float = 0.0, seed: int = 0) -> list[torch.nn.Parameter]:
    """Freeze ``transformer`` and add a LoRA adapter; returns the trainable LoRA parameters.

    The random init of ``lora_A`` comes from ``seed`` (not the global RNG), so every rank of a
    multi-process run, and every run with the same seed, starts from the same adapter.
    """
    from peft import LoraConfig

    transformer.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=dropout,
                     init_lora_weights=True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer.add_adapter(cfg, adapter_name=ADAPTER)
    except ValueError as e:
        raise LoraLoadError(f"lora.targets {targets}: {e}") from e
    if dropout == 0:
        merged = _merged_lora_linear_class()
        for m in transformer.modules():
            if (type(m) is merged.__base__ and isinstance(m.base_layer, torch.nn.Linear)
                    and not m.fan_in_fan_out and not m.lora_variant and fuse_lora(m.base_layer.weight)):
                m.__class__ = merged
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()  # over a bf16/fp16 base the adapter still trains in fp32
        p.requires_grad_(True)
    return params


def fuse_lora(weight: torch.Tensor) -> bool:
    """Fold the adapter into the weight on each call (:func:`_merged_lora_linear_class`) only for fp32
    weights on the CPU: there one matmul beats three small ones. On a GPU at full size peft's own
    low-rank path is cheaper (the folded weight needs a full-size weight gradient in backward) and
    keeps a bf16 base's small LoRA deltas out of bf16 rounding."""
    return weight.dtype == torch.float32 and weight.device.type == "cpu"


@functools.cache
def _merged_lora_linear_class() -> type:
    from peft.tuners.lora import Linear as LoraLinear

    class MergedLoraLinear(LoraLinear):
        """peft's LoRA linear with the adapter folded into the weight on each call (no dropout)."""

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self.disable_adapters or self.merged or args or kwargs:
                return super().forward(x, *args, **kwargs)
            base = self.base_layer
            w = base.weight
            for name in self.active_adapters:
                if name in self.lora_A:
                    w = w + (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
            return F.linear(x, w, base.bias)

    return MergedLoraLinear


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer, adapter_name=ADAPTER).items()}


def save_lora(transformer: torch.nn.Module, out_dir: str | os.PathLike,
              state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the adapter (or ``state_dict``, e.g. EMA weights) in diffusers' Flux LoRA format."""
    from diffusers import FluxPipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = lora_state_dict(transformer) if state_dict is None else state_dict
    peft_cfg = transformer.peft_config[ADAPTER]
    meta = {"r": peft_cfg.r, "lora_alpha": peft_cfg.lora_alpha,
            "target_modules": sorted(peft_cfg.target_modules), "lora_dropout": peft_cfg.lora_dropout}
    FluxPipeline.save_lora_weights(str(out), transformer_lora_layers=sd, weight_name=WEIGHT_NAME,
                                   transformer_lora_adapter_metadata=meta)
    return out / WEIGHT_NAME


def read_lora(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``transformer.``-prefixed state dict of a saved LoRA folder (or file), prefix removed."""
    from safetensors.torch import load_file

    p = Path(path)
    f = p / WEIGHT_NAME if p.is_dir() else p
    if not f.is_file():
        raise LoraLoadError(f"LoRA path {path}: no {WEIGHT_NAME} found")
    sd = load_file(str(f))
    return {k[len("transformer."):]: v for k, v in sd.items() if k.startswith("transformer.")}


def load_lora_into(transformer: torch.nn.Module, path: str | os.PathLike) -> None:
    """Copy a saved LoRA into the transformer's existing adapter (same rank and targets)."""
    from peft.utils import set_peft_model_state_dict

    sd = read_lora(path)
    own = lora_state_dict(transformer)
    if set(sd) != set(own) or any(sd[k].shape != own[k].shape for k in own):
        raise LoraLoadError(f"LoRA {path} does not fit the transformer's adapter "
                            f"({len(sd)} tensors vs {len(own)} expected, or shapes differ)")
    result = set_peft_model_state_dict(transformer, sd, adapter_name=ADAPTER)
    if getattr(result, "unexpected_keys", None):
        raise LoraLoadError(f"LoRA {path}: unexpected keys {result.unexpected_keys[:5]}")


def load_lora_pipeline(pipe: Any, path: str | os.PathLike) -> None:
    """``pipe.load_lora_weights`` with a clear error naming the folder."""
    p = Path(path)
    if not (p / WEIGHT_NAME).is_file():
        raise LoraLoadError(f"LoRA path {path}: no {WEIGHT_NAME} (expected a folder written by save_lora)")
    try:
        pipe.load_lora_weights(str(p), weight_name=WEIGHT_NAME)
    except Exception as e:  # diffusers raises ValueError/KeyError/RuntimeError on mismatches
        raise LoraLoadError(f"could not load LoRA {path} into the pipeline: {e}") from e


@contextmanager
def adapter_disabled(transformer: torch.nn.Module) -> Iterator[None]:
    """The reference model: the same network with the LoRA adapter switched off."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()
