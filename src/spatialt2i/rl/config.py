"""Typed configuration of a GRPO run (``spatialt2i rl train --config world|flux-dev|FILE``).

Presets live in ``configs/rl-<name>.yaml``; ``load_rl_config("world")`` reads ``rl-world.yaml``.
Every check that can fail before the run starts does so here, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spatialt2i.config import PRESETS, from_dict, load_yaml
from spatialt2i.errors import ConfigError
from spatialt2i.rl.sde import DYNAMICS


@dataclass
class LoraSettings:
    rank: int = 32
    alpha: float = 32.0
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be >= 1, got {self.rank}")
        if not self.targets:
            raise ConfigError("lora.targets must name at least one module")


@dataclass
class SampleSettings:
    group_size: int = 24          # G samples per prompt, all on one rank
    steps: int = 6                # rollout steps (sigma 1 -> 0)
    dynamics: str = "flow_sde"
    noise_level: float = 0.9
    sde_steps: list[int] | None = None   # steps that get noise (None: all)
    guidance: float = 3.5         # distilled guidance embedding value
    true_cfg_scale: float = 1.0
    negative_prompt: str | None = None
    height: int = 512
    width: int = 512
    max_sequence_length: int = 512
    batch_size: int = 0           # samples per rollout pass (0: the whole group in one pass)

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"sample.group_size must be >= 2, got {self.group_size}")
        if self.steps < 1:
            raise ConfigError(f"sample.steps must be >= 1, got {self.steps}")
        if self.dynamics not in DYNAMICS or self.dynamics == "ode":
            raise ConfigError(f"sample.dynamics must be one of flow_sde, dance_sde, cps, got {self.dynamics!r}")
        if self.noise_level <= 0:
            raise ConfigError(f"sample.noise_level must be > 0 for RL rollouts, got {self.noise_level}")
        if self.sde_steps is not None and any(not 0 <= s < self.steps for s in self.sde_steps):
            raise ConfigError(f"sample.sde_steps {self.sde_steps} must lie in [0, {self.steps})")


@dataclass
class TrainSettings:
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0
    topk: int = 6                 # keep top-k and bottom-k of each group (0: all)
    normalise_over: str = "group"  # "group" or "kept"
    clip_range: float = 1e-4
    adv_clip: float = 5.0
    kl_coef: float = 0.0          # KL to the reference = the network with the LoRA disabled
    train_steps: list[int] | None = None  # rollout steps to train on (None: all but the last)
    micro_batch: int = 0          # samples per forward/backward pass (0: all kept samples)
    updates_per_iteration: int = 1  # optimizer steps per iteration (gradient accumulation inside)
    ema_decay: float = 0.0        # 0: no EMA of the LoRA weights
    # keep the rollout's autograd graph of the trained steps and backpropagate through it instead of
    # running those forward passes again: "auto" (small models, one update, most of the group kept),
    # "on" or "off" -- see rl.trainer.reuse_rollout_graph
    reuse_rollout_graph: str = "auto"
    # recompute each transformer block in backward (diffusers' checkpointing): full-size models at
    # 512 px need it to fit a micro-batch of all trained steps in GPU memory
    gradient_checkpointing: bool = False
    # cuDNN's fused attention on CUDA: off by default -- with torch 2.11 + CUDA 13 on an H200 its
    # backward hit an illegal memory access in the flux-dev update, which flash/memory-efficient
    # attention ran (benchmarks/fullscale_gpu.py --cudnn-attention reproduces the comparison)
    cudnn_attention: bool = False

    def __post_init__(self) -> None:
        if self.reuse_rollout_graph not in ("auto", "on", "off"):
            raise ConfigError(f"train.reuse_rollout_graph must be 'auto', 'on' or 'off', "
                              f"got {self.reuse_rollout_graph!r}")
        if self.normalise_over not in ("group", "kept"):
            raise ConfigError(f"train.normalise_over must be 'group' or 'kept', got {self.normalise_over!r}")
        if self.clip_range <= 0:
            raise ConfigError(f"train.clip_range must be > 0, got {self.clip_range}")
        if self.topk < 0:
            raise ConfigError(f"train.topk must be >= 0 (0 keeps the whole group), got {self.topk}")
        if self.updates_per_iteration < 1:
            raise ConfigError(f"train.updates_per_iteration must be >= 1, got {self.updates_per_iteration}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must have two entries, got {self.betas}")


@dataclass
class RewardSettings:
    kind: str = "oracle"          # oracle | spatialscore | http | red | mix
    path: str | None = None       # SpatialScore checkpoint (kind spatialscore)
    url: str | None = None        # reward server (kind http)
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    batch_size: int = 0
    weights: dict[str, float] = field(default_factory=dict)   # kind mix: {component kind: weight}
    presence_weight: float = 0.0  # oracle: reward = relation share + this x object presence
    soft_tau: float = 0.0         # oracle: > 0 grades each relation sigmoid(margin / soft_tau) instead of 0/1

    def __post_init__(self) -> None:
        kinds = ("oracle", "spatialscore", "http", "red", "mix")
        if self.kind not in kinds:
            raise ConfigError(f"reward.kind must be one of {', '.join(kinds)}, got {self.kind!r}")
        if self.kind == "mix" and not self.weights:
            raise ConfigError("reward.kind mix needs reward.weights, e.g. {oracle: 0.5, http: 0.5}")
        bad = set(self.weights) - set(kinds[:-1])
        if bad:
            raise ConfigError(f"reward.weights: unknown component(s) {sorted(bad)}")
        if self.retries < 0:
            raise ConfigError(f"reward.retries must be >= 0, got {self.retries}")
        if self.presence_weight < 0:
            raise ConfigError(f"reward.presence_weight must be >= 0, got {self.presence_weight}")
        if self.soft_tau < 0:
            raise ConfigError(f"reward.soft_tau must be >= 0 (0: relations count 0/1), got {self.soft_tau}")


@dataclass
class PromptSettings:
    min_objects: int = 2
    max_objects: int = 4
    min_relations: int = 1
    max_relations: int = 3
    heldout_seed: int = 20_260_224
    eval_prompts: int = 200

    def __post_init__(self) -> None:
        if not 2 <= self.min_objects <= self.max_objects <= 8:
            raise ConfigError(f"prompts: need 2 <= min_objects <= max_objects <= 8, got "
                              f"{self.min_objects}..{self.max_objects}")
        if not 1 <= self.min_relations <= self.max_relations:
            raise ConfigError(f"prompts: need 1 <= min_relations <= max_relations, got "
                              f"{self.min_relations}..{self.max_relations}")


@dataclass
class RLConfig:
    generator: str | None = None  # folder or hub id; None: the world's shipped base generator
    seed: int = 0
    iterations: int = 1000
    prompts_per_iteration: int = 1  # groups per iteration (over all ranks)
    eval_every: int = 0           # iterations between in-domain evals (0: only at the end)
    eval_steps: int = 6           # ODE steps of the eval sampler
    eval_batch: int = 50
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    sample: SampleSettings = field(default_factory=SampleSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        g, k = self.sample.group_size, self.train.topk
        if 2 * k > g:
            raise ConfigError(f"train.topk={k} exceeds half of sample.group_size={g}: top-{k} and "
                              f"bottom-{k} would overlap (need topk <= group_size / 2)")
        steps = self.trained_steps()
        if not steps:
            raise ConfigError(f"no rollout step to train on (sample.steps={self.sample.steps}, "
                              f"train.train_steps={self.train.train_steps})")
        noisy = set(range(self.sample.steps)) if self.sample.sde_steps is None else set(self.sample.sde_steps)
        if any(not 0 <= s < self.sample.steps for s in steps) or not set(steps) <= noisy:
            raise ConfigError(f"train.train_steps {steps} must be noisy rollout steps in [0, {self.sample.steps}) "
                              f"(sample.sde_steps {sorted(noisy)})")
        if self.sample.dynamics == "cps" and self.sample.steps - 1 in steps:
            raise ConfigError("train.train_steps: with cps dynamics the last step is deterministic; skip it")
        if self.iterations < 1 or self.prompts_per_iteration < 1:
            raise ConfigError("iterations and prompts_per_iteration must be >= 1")

    def trained_steps(self) -> list[int]:
        if self.train.train_steps is not None:
            return sorted({int(s) for s in self.train.train_steps})
        return list(range(max(self.sample.steps - 1, 1)))


def load_rl_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> RLConfig:
    """An :class:`RLConfig` from a preset name (``world``, ``flux-dev``) or a YAML file.

    ``overrides``: dotted keys (``{"train.topk": 0}``) applied on top of the file.
    """
    p = Path(name_or_path)
    if not p.exists() and (PRESETS / f"rl-{name_or_path}.yaml").exists():
        p = PRESETS / f"rl-{name_or_path}.yaml"
    elif not p.exists():
        names = sorted(f.stem[3:] for f in PRESETS.glob("rl-*.yaml"))
        raise ConfigError(f"rl config {str(name_or_path)!r}: no such file or preset (presets: {', '.join(names)})")
    data = load_yaml(p)
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a mapping")
        node[leaf] = value
    return from_dict(RLConfig, data, str(p))
