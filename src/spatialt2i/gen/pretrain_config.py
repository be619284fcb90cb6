"""Configuration of the world generator's pretraining (``configs/world-generator.yaml``) and the
shipped generator's location."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spatialt2i.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_SEQUENCE_LENGTH = 128
SHIPPED_GENERATOR = Path(__file__).resolve().parent.parent / "assets" / "world-generator"


def world_generator_path() -> Path:
    """The shipped base generator (a FluxPipeline folder); an error if the package lacks it."""
    from spatialt2i.gen.flux import GeneratorLoadError

    if not (SHIPPED_GENERATOR / "model_index.json").is_file():
        raise GeneratorLoadError(f"the shipped world generator is missing from {SHIPPED_GENERATOR}; "
                                 f"make it with `spatialt2i world pretrain --out DIR`")
    return SHIPPED_GENERATOR


@dataclass
class ModelConfig:
    """Sizes of the tiny Flux parts (defaults: the issue's benchmark transformer, a light VAE)."""

    vae_channels: list[int] = field(default_factory=lambda: [16, 24, 32])
    latent_channels: int = 16       # the transformer's in_channels is 4x this (2x2 packing)
    num_layers: int = 2
    num_single_layers: int = 2
    heads: int = 4
    head_dim: int = 32
    joint_dim: int = 64
    pooled_dim: int = 32
    guidance_embeds: bool = True

    def __post_init__(self) -> None:
        if len(self.vae_channels) < 1 or any(c % 8 for c in self.vae_channels):
            raise ConfigError(f"model.vae_channels: need >= 1 entries, each a multiple of 8, got {self.vae_channels}")
        if self.latent_channels < 1:
            raise ConfigError(f"model.latent_channels must be >= 1, got {self.latent_channels}")


@dataclass
class DataConfig:
    """Training prompts: objects per scene and relations per prompt (``0`` = objects only)."""

    relations: dict[int, float] = field(default_factory=lambda: {0: 0.1, 1: 0.3, 2: 0.3, 3: 0.2, 4: 0.1})
    single_object: float = 0.1      # share of one-object scenes
    max_objects: int = 4
    curriculum: float = 0.15        # share of the flow-matching stage that uses only easy scenes
    curriculum_relations: dict[int, float] = field(default_factory=lambda: {0: 0.2, 1: 0.6, 2: 0.2})

    def __post_init__(self) -> None:
        for name in ("relations", "curriculum_relations"):
            d = getattr(self, name)
            if not d or any(int(k) < 0 or v < 0 for k, v in d.items()) or sum(d.values()) <= 0:
                raise ConfigError(f"data.{name}: expected {{count >= 0: weight >= 0}}, got {d!r}")
        if not 2 <= self.max_objects <= 8:
            raise ConfigError(f"data.max_objects must be 2..8, got {self.max_objects}")
        if not 0 <= self.single_object <= 1 or not 0 <= self.curriculum <= 1:
            raise ConfigError("data.single_object and data.curriculum must be in [0, 1]")


@dataclass
class PretrainConfig:
    seed: int = 0
    image_size: int = 64
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH
    minutes: float = 60.0           # total wall-time budget (both stages)
    vae_share: float = 0.17         # share of the budget for the VAE stage (when vae_steps is 0)
    vae_steps: int = 0              # > 0: fixed VAE steps (reproducible; the time budget is a cap)
    fm_steps: int = 0               # > 0: fixed flow-matching steps (ditto); the lr schedule spans them
    fm_stop: int = 0                # > 0: stop flow matching after this many steps (schedule unchanged)
    # text stage (before the VAE; gen/text_pretrain.py): the text encoders learn to parse prompts
    text_steps: int = 0             # > 0: this many steps of the scene-parse objective
    text_batch: int = 64
    text_stage_lr: float = 2e-3
    text_where_weight: float = 10.0  # weight of the relative-place regression
    text_hint_weight: float = 0.0   # > 0: mention tokens' first-layer attention to their clause's relation words
    init_vae: str | None = None     # a pipeline folder (its vae/) or a VAE folder: skip the VAE stage
    init_from: str | None = None    # a pipeline folder: every part starts from it (sizes from it, not `model`;
                                    # its VAE is kept: no VAE stage) -- to continue a trained generator
    # VAE stage
    vae_batch: int = 32
    vae_crop: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    vae_object_weight: float = 10.0  # loss weight of non-background pixels (the background is ~90 %)
    # decoder stage (after flow matching): the VAE decoder alone is fine-tuned on latents of the
    # frozen encoder, so the latent space the transformer learned stays the same
    decoder_steps: int = 0
    decoder_lr: float = 1e-3
    decoder_latent_noise: float = 0.1  # Gaussian noise on latents, x latent std: robust to generated latents
    # flow-matching stage
    batch: int = 32
    lr: float = 1e-3
    text_lr: float = 5e-4            # 0: the text encoders stay frozen in flow matching
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    guidance_min: float = 1.0
    guidance_max: float = 5.0
    grounding_weight: float = 0.0   # > 0: TokenCompose token loss on the double blocks (gen/grounding.py)
    object_weight: float = 1.0      # > 1: image tokens covering an object weigh this much in the loss
    text_dropout: float = 0.0       # share of empty prompts (an unconditional branch for true CFG)
    ema_decay: float = 0.0          # > 0: EMA of the transformer and text encoders (evaluated and saved)
    ema_warmup: bool = True         # decay ramps up as 1 - (1 + step)^-2/3 (diffusers' EMAModel warm-up)
    # where it runs
    device: str = "cpu"             # "cuda" (or "cuda:N"): every stage on that device; CPU paths stay fp32
    data_workers: int = 0           # > 0: flow-matching batches are rendered in this many processes
    # bookkeeping
    checkpoint_minutes: float = 5.0
    eval_minutes: float = 10.0
    eval_prompts: int = 64
    eval_steps: int = 6
    log_every: int = 20
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.image_size % 16:
            raise ConfigError(f"image_size must be a multiple of 16, got {self.image_size}")
        if self.minutes <= 0 or not 0 < self.vae_share < 1:
            raise ConfigError(f"minutes must be > 0 and vae_share in (0, 1), got {self.minutes}, {self.vae_share}")
        if self.data_workers < 0:
            raise ConfigError(f"data_workers must be >= 0, got {self.data_workers}")
        if self.vae_crop % 8 or self.vae_crop > self.image_size:
            raise ConfigError(f"vae_crop must be a multiple of 8 and <= image_size, got {self.vae_crop}")


def resolve_device(name: str) -> torch.device:
    """``device`` of the config as a torch device; a ConfigError names what is wrong with it."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device: {name!r} is not a torch device ({e})") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: {name!r}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but torch sees no CUDA device")
    return dev


def load_config(path_or_preset: str | Path = "world-generator", **overrides: Any) -> PretrainConfig:
    """The YAML preset (or file) as a :class:`PretrainConfig`, with keyword overrides on top."""
    from spatialt2i.config import from_dict, load_yaml

    data = load_yaml(path_or_preset)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(PretrainConfig, data, where=str(path_or_preset))
