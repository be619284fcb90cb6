"""Schedules of the generator's pretraining: the learning-rate factor and Flux's noise-level shift."""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    prog = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * prog))


def shifted_sigmas(u: torch.Tensor, image_seq_len: int, sched_cfg: Any) -> torch.Tensor:
    """Flux's time shift of ``u`` in (0, 1) for ``image_seq_len`` tokens (what the sampler visits)."""
    from spatialt2i.gen.flux import calculate_shift

    mu = calculate_shift(image_seq_len, sched_cfg.get("base_image_seq_len", 256),
                         sched_cfg.get("max_image_seq_len", 4096), sched_cfg.get("base_shift", 0.5),
                         sched_cfg.get("max_shift", 1.15))
    e = math.exp(mu)
    return e / (e + (1 / u - 1))
