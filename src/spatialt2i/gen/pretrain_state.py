"""The world generator pretraining's resumable state: ``DIR/train_state/state.pt``.

One file holds everything a killed :class:`spatialt2i.gen.pretrain.Pretrainer` needs to continue
(``--resume``): the stage and step within it, the wall time spent per stage, all weights (VAE,
transformer, T5, CLIP) and the VAE's latent shift/scale, both optimisers, the EMA and text-stage
states when on, the scene stream's RNG and torch's RNG, and the config. It is written atomically
(a temporary file renamed into place).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from spatialt2i.gen.pretrain import Pretrainer

STATE_FILE = "state.pt"


def has_state(state_dir: Path) -> bool:
    """Whether ``state_dir`` holds a training state to resume from."""
    return (state_dir / STATE_FILE).is_file()


def save_state(tr: Pretrainer) -> None:
    """Write ``tr``'s training state to ``tr.state_dir`` (atomically)."""
    tr.state_dir.mkdir(parents=True, exist_ok=True)
    p = tr.pipe
    state = {
        "stage": tr.stage, "step": tr.step, "elapsed": tr.elapsed,
        "vae": p.vae.state_dict(), "transformer": p.transformer.state_dict(),
        "t5": p.text_encoder_2.state_dict(), "clip": p.text_encoder.state_dict(),
        "vae_config": {"scaling_factor": p.vae.config.scaling_factor, "shift_factor": p.vae.config.shift_factor},
        "vae_opt": tr.vae_opt.state_dict(), "fm_opt": tr.fm_opt.state_dict(),
        "data_rng": tr.stream.state(), "torch_rng": torch.get_rng_state(),
        "config": dataclasses.asdict(tr.cfg),
        "ema": tr.ema.state_dict() if tr.ema is not None else None,
        "text_stage": tr.text_stage.state_dict() if tr.text_stage is not None else None,
    }
    tmp = tr.state_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(tr.state_dir / STATE_FILE)


def load_state(tr: Pretrainer) -> None:
    """Restore ``tr``'s weights, optimisers, RNGs and progress from the state in ``tr.state_dir``."""
    s = torch.load(tr.state_dir / STATE_FILE, map_location="cpu", weights_only=False)
    p = tr.pipe
    p.vae.load_state_dict(s["vae"])
    p.transformer.load_state_dict(s["transformer"])
    p.text_encoder_2.load_state_dict(s["t5"])
    p.text_encoder.load_state_dict(s["clip"])
    p.vae.register_to_config(**s["vae_config"])
    tr.vae_opt.load_state_dict(s["vae_opt"])
    tr.fm_opt.load_state_dict(s["fm_opt"])
    tr.stream.set_state(s["data_rng"])
    if tr.ema is not None and s.get("ema") is not None:
        tr.ema.load_state_dict(s["ema"])
        tr.ema.to(tr.device)
    if tr.text_stage is not None and s.get("text_stage") is not None:
        tr.text_stage.load_state_dict(s["text_stage"])
    torch.set_rng_state(s["torch_rng"])
    tr.stage, tr.step = s["stage"], int(s["step"])
    tr.elapsed.update(s["elapsed"])
