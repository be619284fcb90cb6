"""Typed configuration of ``spatialt2i reward train`` (filled from ``configs/reward-*.yaml``).

Batch sizes are in *pairs*. ``batch_size`` is the global batch of one optimizer step; each process
runs ``micro_batch_size`` pairs per forward/backward, and the gradient accumulation steps follow:
``grad_accum = batch_size / (micro_batch_size * num_processes)`` (must divide exactly, so one process
and N processes with the same ``batch_size`` train the same model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import from_dict, load_yaml
from ..errors import ConfigError
from .model import LoraSettings

PRESET_ALIASES = {"world": "reward-world", "qwen7b": "reward-qwen7b"}
ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass
class LoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    vision: bool = False

    def settings(self) -> LoraSettings:
        return LoraSettings(r=self.r, alpha=self.alpha, dropout=self.dropout, targets=tuple(self.targets),
                            vision=self.vision)


@dataclass
class RewardTrainConfig:
    base_model: str                      # folder or hub id; "asset:NAME" = a backbone shipped in the package
    # Optional[...] rather than X | None: config._coerce recognises typing.Union only
    lora: Optional[LoraSection] = field(default_factory=LoraSection)   # null: frozen backbone, head only
    head_hidden: int = 0
    loss: str = "gaussian"               # gaussian (uncertainty-aware BT) | bt (BT on mu)
    gaussian_method: str = "probit"      # probit | quadrature | mc (see reward.losses)
    lr: float = 1e-4                     # LoRA learning rate
    head_lr: Optional[float] = None       # head + <reward> row (default: lr)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"             # cosine | constant (after warmup)
    batch_size: int = 32                 # global pairs per optimizer step
    micro_batch_size: int = 8            # pairs per process per forward
    epochs: float = 1.0
    max_steps: int = 0                   # > 0 overrides epochs
    max_minutes: float = 0.0             # > 0: stop (and save) after this much training time
    grad_clip: float = 1.0
    eval_every: int = 100                # optimizer steps; 0 = only at the end
    eval_pairs: int = 0                  # test pairs per periodic eval (0 = all)
    save_every: int = 100                # checkpoint every N steps; 0 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "auto"        # auto (bf16 on CUDA, fp32 on CPU) | no | bf16
    gradient_checkpointing: bool = True  # applied on CUDA only
    eval_split: str = "test"

    def __post_init__(self) -> None:
        for name in ("batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.loss not in ("gaussian", "bt"):
            raise ConfigError(f"loss: unknown loss {self.loss!r} (gaussian or bt)")
        if self.gaussian_method not in ("probit", "quadrature", "mc"):
            raise ConfigError(f"gaussian_method: unknown {self.gaussian_method!r} (probit, quadrature or mc)")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule: unknown {self.schedule!r} (cosine or constant)")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ConfigError(f"mixed_precision: unknown {self.mixed_precision!r} (auto, no or bf16)")
        if self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise ConfigError("lr/head_lr: must be > 0")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("epochs or max_steps: one must be > 0")

    def grad_accum(self, num_processes: int) -> int:
        per_step = self.micro_batch_size * num_processes
        if self.batch_size % per_step:
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                              f"{self.micro_batch_size} x {num_processes} process(es)")
        return self.batch_size // per_step

    def resolved_base_model(self) -> str:
        """``base_model`` with ``asset:NAME`` mapped to the package's ``assets/NAME`` folder."""
        return resolve_asset(self.base_model)


def resolve_asset(path: str) -> str:
    """``asset:NAME`` -> the package's ``assets/NAME`` folder; any other path unchanged."""
    return str(ASSETS / path.split(":", 1)[1]) if path.startswith("asset:") else path


def load_train_config(name_or_path: str, overrides: dict[str, Any] | None = None) -> RewardTrainConfig:
    """A preset (``world``, ``qwen7b``, ``reward-world`` ...) or YAML file, with ``overrides`` on top."""
    key = PRESET_ALIASES.get(name_or_path, name_or_path)
    data = load_yaml(key)
    data.update(overrides or {})
    return from_dict(RewardTrainConfig, data, str(name_or_path))
