"""GRPO checkpoints on disk: ``OUT/checkpoints/iter-NNNNNN/`` = the LoRA in diffusers' format
(``lora/``, loadable by ``FluxPipeline.load_lora_weights``) + the trainer's state (``state.pt``:
iteration, optimizer, EMA, history, config). Written atomically (a temporary folder renamed into
place), the oldest pruned; a resume refuses a checkpoint whose run-shaping config differs."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from spatialt2i.errors import ConfigError
from spatialt2i.rl.lora import load_lora_into, save_lora

# config keys that must match for a resume to continue the same run
RUN_KEYS = ("sample", "train", "lora", "seed", "prompts_per_iteration")


def checkpoint_dirs(out: Path | None) -> list[Path]:
    """The complete checkpoints under ``out``, oldest first."""
    root = out / "checkpoints" if out is not None else None
    if root is None or not root.is_dir():
        return []
    return sorted(p for p in root.glob("iter-*") if (p / "state.pt").is_file())


def write_checkpoint(out: Path, iteration: int, transformer: Any, state: dict[str, Any], keep: int) -> Path:
    """Write ``checkpoints/iter-<iteration>`` atomically and keep only the newest ``keep`` (>= 1)."""
    root = out / "checkpoints"
    final = root / f"iter-{iteration:06d}"
    tmp = root / f".tmp-iter-{iteration:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_lora(transformer, tmp / "lora")
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(out)[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: str | Path, cfg: Any, transformer: Any) -> dict[str, Any]:
    """Load the checkpoint's LoRA into ``transformer`` and return its state; a :class:`ConfigError`
    when ``cfg`` differs from the checkpoint's in a run-shaping key."""
    path = Path(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    saved, now = state.get("config", {}), asdict(cfg)
    for key in RUN_KEYS:
        if key in saved and saved[key] != now[key]:
            raise ConfigError(f"resume from {path}: config key {key!r} differs from the checkpoint's "
                              f"({saved[key]} vs {now[key]})")
    load_lora_into(transformer, path / "lora")
    return state
