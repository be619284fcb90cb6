"""Checkpoints of ``spatialt2i reward train``: ``OUT/checkpoints/step-NNNNNN/``, written to a temp folder and
renamed (a kill never leaves a half-written one), the newest ``keep`` kept.

Each holds the trainable parameters (fp32 safetensors) and the optimizer state -- or accelerate's own
sharded state under FSDP / DeepSpeed --, the scheduler and step (``state.pt``) and every rank's RNG
states, so a resumed run continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_PREFIX = "step-"


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    ckpts = sorted(ckpt_dir.glob(f"{CKPT_PREFIX}*")) if ckpt_dir.is_dir() else []
    return ckpts[-1] if ckpts else None


def save_checkpoint(ckpt_dir: Path, keep: int, acc: Any, model: Any, opt: Any, sched: Any, step: int,
                    extra: dict[str, Any]) -> None:
    """Write ``ckpt_dir/step-<step>`` (a collective: every rank calls it) and drop all but the newest ``keep``."""
    from accelerate.utils import DistributedType
    from safetensors.torch import save_file

    final = ckpt_dir / f"{CKPT_PREFIX}{step:06d}"
    tmp = ckpt_dir / f".tmp-{CKPT_PREFIX}{step:06d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{acc.process_index}.pt")
    if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        acc.save_state(str(tmp / "accelerate"))
    elif acc.is_main_process:
        m = acc.unwrap_model(model)
        save_file({n: p.detach().float().cpu().contiguous() for n, p in m.named_parameters() if p.requires_grad},
                  str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": opt.state_dict()}, tmp / "optimizer.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        torch.save({"step": step, "scheduler": sched.state_dict(), **extra}, tmp / "state.pt")
        os.replace(tmp, final)
        for old in sorted(ckpt_dir.glob(f"{CKPT_PREFIX}*"))[:-max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def load_checkpoint(ckpt: Path, acc: Any, model: Any, opt: Any, sched: Any) -> dict[str, Any]:
    """Restore parameters, optimizer, scheduler and this rank's RNG from ``ckpt``; returns its ``state.pt``."""
    from safetensors.torch import load_file

    if (ckpt / "accelerate").is_dir():
        acc.load_state(str(ckpt / "accelerate"))
    else:
        m = acc.unwrap_model(model)
        params = dict(m.named_parameters())
        with torch.no_grad():
            for n, v in load_file(str(ckpt / "trainable.safetensors")).items():
                params[n].copy_(v.to(params[n].dtype))
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=acc.device,
                                       weights_only=False)["optimizer"])
    state = torch.load(ckpt / "state.pt", weights_only=False)
    sched.load_state_dict(state["scheduler"])
    rng_file = ckpt / f"rng-{acc.process_index}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
