"""Generator adapter around diffusers' Flux components (FLUX.1-dev or the world's tiny Flux).

One :meth:`FluxGenerator.forward` gives the velocity for packed latents at a sigma; rollout
(:meth:`FluxGenerator.sample`) and training replay (:meth:`FluxGenerator.replay_step`) both go
through it, so with unchanged weights a replayed step has exactly the rollout's log-prob.

Everything mirrors ``FluxPipeline.__call__`` (diffusers 0.42): CLIP pooled + T5 sequence
prompt embeddings, 2x2 latent packing, ``img_ids``/``txt_ids``, the sigma schedule
``linspace(1, 1/n, n)`` shifted with ``mu = calculate_shift(image_seq_len)`` (FLUX.1-dev's
dynamic shift) plus a final 0, distilled guidance through the guidance embedding and optional
true CFG (``v = v_neg + scale * (v_pos - v_neg)``). With ``dynamics="ode"`` :meth:`sample`
reproduces ``FluxPipeline(...)`` for the same seeds (one generator per seed), steps and guidance.
The transformer pass is diffusers' own block by block, except that the last single block is
computed for the image tokens only (the model discards its text tokens' outputs;
:mod:`spatialt2i.gen.flux_forward`).

Latents along the trajectory are kept in fp32 (the SDE math is fp32); the transformer runs in its
own dtype (fp32 on CPU, bf16 on CUDA if loaded so). The latent layout (packing, ids, shift) is in
:mod:`spatialt2i.gen.latents`, the sampler's outputs in :mod:`spatialt2i.gen.trajectory` (both
re-exported here); loading and its errors are in :mod:`spatialt2i.gen.loading`. This file holds the
adapter itself (loading, properties, prompt encoding, schedule and noise, the forward, decoding);
the sampling and replay loops (:meth:`FluxGenerator.sample`, :meth:`FluxGenerator.replay`,
:meth:`FluxGenerator.replay_step`) are in :mod:`spatialt2i.gen.flux_sampling`, a mixin
``FluxGenerator`` inherits.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from spatialt2i.gen.flux_forward import transformer_velocity
from spatialt2i.gen.flux_sampling import FluxSampling
from spatialt2i.gen.latents import calculate_shift, image_ids, pack_latents, unpack_latents
from spatialt2i.gen.loading import GeneratorLoadError, check_flux_folder, load_flux_pipeline
from spatialt2i.gen.trajectory import PromptEmbeds, Trajectory

__all__ = ["DEFAULT_MAX_SEQUENCE_LENGTH", "FluxGenerator", "GeneratorLoadError", "PromptEmbeds", "Trajectory",
           "calculate_shift", "check_flux_folder", "image_ids", "pack_latents", "unpack_latents"]

DEFAULT_MAX_SEQUENCE_LENGTH = 512

log = logging.getLogger(__name__)


class _ClipTruncation(logging.Filter):
    """Holds back FluxPipeline's per-batch CLIP truncation warning (it prints every prompt's cut-off
    tail, padding included) and remembers that it fired; :meth:`FluxGenerator.encode_prompts` then
    says so once per generator, in one line."""

    def __init__(self) -> None:
        super().__init__()
        self.fired = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "truncated because CLIP" in record.getMessage():
            self.fired = True
            return False
        return True


@contextlib.contextmanager
def _clip_truncation():
    logger = logging.getLogger("diffusers.pipelines.flux.pipeline_flux")
    f = _ClipTruncation()
    logger.addFilter(f)
    try:
        yield f
    finally:
        logger.removeFilter(f)


class FluxGenerator(FluxSampling):
    """Flux text-to-image generator: prompt encoding (cached), one velocity forward, SDE sampling."""

    def __init__(
        self,
        pipe: Any,
        *,
        height: int = 512,
        width: int = 512,
        max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
        guidance_scale: float = 3.5,
        true_cfg_scale: float = 1.0,
        negative_prompt: str | None = None,
        prompt_cache_size: int = 1024,
    ) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

        if not isinstance(getattr(pipe, "transformer", None), FluxTransformer2DModel):
            raise GeneratorLoadError(f"{type(pipe).__name__} has no FluxTransformer2DModel; not a Flux pipeline")
        self.pipe = pipe
        self.height, self.width = int(height), int(width)
        self.max_sequence_length = int(max_sequence_length)
        self.guidance_scale = float(guidance_scale)
        self.true_cfg_scale = float(true_cfg_scale)
        self.negative_prompt = negative_prompt
        # a private scheduler copy: set_timesteps mutates state, the pipeline's own stays untouched
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        self._cache: OrderedDict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = int(prompt_cache_size)
        self._clip_warned = False
        self._ids: dict[tuple, torch.Tensor] = {}
        self.check_resolution(self.height, self.width)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, **kwargs: Any) -> "FluxGenerator":
        """Load a Flux pipeline from a local folder or a hub id; ``kwargs`` go to the constructor."""
        return cls(load_flux_pipeline(name_or_path, torch_dtype, device), **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipe.vae

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels) // 4

    @property
    def has_guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def check_resolution(self, height: int, width: int) -> None:
        m = 2 * self.vae_scale_factor
        if height % m or width % m or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {m} "
                             f"(2 x VAE scale factor), got {height}x{width}")

    def latent_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Unpacked latent (H, W) for an image size."""
        h, w = height or self.height, width or self.width
        return 2 * (h // (2 * self.vae_scale_factor)), 2 * (w // (2 * self.vae_scale_factor))

    def image_seq_len(self, height: int | None = None, width: int | None = None) -> int:
        lh, lw = self.latent_size(height, width)
        return (lh // 2) * (lw // 2)

    def img_ids(self, height: int | None = None, width: int | None = None) -> torch.Tensor:
        lh, lw = self.latent_size(height, width)
        key = ("img", lh, lw, self.device, self.dtype)
        if key not in self._ids:
            self._ids[key] = image_ids(lh // 2, lw // 2, self.device, self.dtype)
        return self._ids[key]

    def txt_ids(self, length: int) -> torch.Tensor:
        key = ("txt", length, self.device, self.dtype)
        if key not in self._ids:
            self._ids[key] = torch.zeros(length, 3, device=self.device, dtype=self.dtype)
        return self._ids[key]

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeds:
        """CLIP pooled + T5 sequence embeddings of ``prompts``; each distinct prompt is encoded once."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p) for p in prompts]
        msl = self.max_sequence_length
        missing = list(dict.fromkeys(p for p in prompts if (p, msl) not in self._cache))
        if missing:
            with _clip_truncation() as cut:
                embeds, pooled, _ = self.pipe.encode_prompt(prompt=missing, prompt_2=None, device=self.device,
                                                            max_sequence_length=msl)
            if cut.fired and not self._clip_warned:
                self._clip_warned = True
                log.warning("some prompts are longer than CLIP's %d tokens: its pooled vector sees their first %d "
                            "(T5 sees up to %d); said once per generator", self.pipe.tokenizer_max_length,
                            self.pipe.tokenizer_max_length, msl)
            for i, p in enumerate(missing):
                self._cache[(p, msl)] = (embeds[i].detach(), pooled[i].detach())
        rows = []
        for p in prompts:
            self._cache.move_to_end((p, msl))
            rows.append(self._cache[(p, msl)])
        while len(self._cache) > max(self._cache_size, len(set(prompts))):
            self._cache.popitem(last=False)
        return PromptEmbeds(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))

    def clear_prompt_cache(self) -> None:
        self._cache.clear()

    def negative_embeds(self, batch: int, negative_prompt: str | None = None) -> PromptEmbeds | None:
        neg = self.negative_prompt if negative_prompt is None else negative_prompt
        if neg is None:
            return None
        return self.encode_prompts([neg] * batch)

    # ------------------------------------------------------------------ schedule and noise
    def sigmas(self, steps: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """(steps + 1,) fp32 sigmas exactly as FluxPipeline sets them (last one 0)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        cfg = self.scheduler.config
        mu = calculate_shift(self.image_seq_len(height, width), cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                             cfg.get("max_shift", 1.15))
        base = np.linspace(1.0, 1 / steps, steps)
        if getattr(cfg, "use_flow_sigmas", False):
            base = None
        self.scheduler.set_timesteps(sigmas=base, mu=mu, device=self.device)
        return self.scheduler.sigmas.detach().to(torch.float32).clone()

    def initial_noise(self, seeds: Sequence[int], height: int | None = None, width: int | None = None,
                      generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Packed fp32 noise, one CPU generator per seed, drawn like FluxPipeline with a generator list."""
        lh, lw = self.latent_size(height, width)
        gens = list(generators) if generators is not None else [torch.Generator().manual_seed(int(s)) for s in seeds]
        noise = torch.cat([torch.randn((1, self.latent_channels, lh, lw), generator=g, device=g.device,
                                       dtype=torch.float32) for g in gens])
        return pack_latents(noise.to(self.device))

    # ------------------------------------------------------------------ the one forward
    def forward(
        self,
        latents: torch.Tensor,
        sigma: float | torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled: torch.Tensor,
        guidance: float | torch.Tensor | None = None,
        *,
        negative: PromptEmbeds | None = None,
        true_cfg_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> torch.Tensor:
        """Velocity (fp32, shape of ``latents``) for packed ``latents`` (B, seq, C) at ``sigma``.

        ``guidance``: the distilled-guidance embedding value (default ``guidance_scale``), ignored
        by models without a guidance embedding. True CFG runs when ``negative`` is given and the
        scale (default ``self.true_cfg_scale``) is > 1; the two branches go through the
        transformer as one batch.
        """
        b = latents.shape[0]
        dt = self.dtype
        t = torch.as_tensor(sigma, dtype=torch.float32, device=latents.device)
        t = (t.expand(b) if t.ndim == 0 else t.reshape(b)).to(dt)
        g = None
        if self.has_guidance_embeds:
            g = torch.as_tensor(self.guidance_scale if guidance is None else guidance,
                                dtype=torch.float32, device=latents.device)
            g = g.expand(b) if g.ndim == 0 else g.reshape(b)
        scale = self.true_cfg_scale if true_cfg_scale is None else float(true_cfg_scale)
        cfg = negative is not None and scale > 1
        x = latents.to(dt)
        enc, pool = prompt_embeds.to(dt), pooled.to(dt)
        if cfg:
            x = torch.cat([x, x])
            enc = torch.cat([enc, negative.prompt_embeds.to(dt)])
            pool = torch.cat([pool, negative.pooled.to(dt)])
            t = torch.cat([t, t])
            g = None if g is None else torch.cat([g, g])
        out = self._transformer(x, t, g, pool, enc, height, width)
        if cfg:
            pos, neg = out.float().chunk(2)
            return neg + scale * (pos - neg)
        return out.float()

    __call__ = forward

    def rotary(self, text_len: int, height: int | None = None, width: int | None = None) -> tuple[torch.Tensor, ...]:
        """The transformer's rotary (cos, sin) for ``text_len`` text tokens and the image tokens (cached)."""
        lh, lw = self.latent_size(height, width)
        key = ("rope", text_len, lh, lw, self.device, self.dtype)
        if key not in self._ids:
            ids = torch.cat([self.txt_ids(text_len), self.img_ids(height, width)])
            with torch.no_grad():
                self._ids[key] = tuple(self.transformer.pos_embed(ids))
        return self._ids[key]

    def _transformer(self, x: torch.Tensor, t: torch.Tensor, g: torch.Tensor | None, pool: torch.Tensor,
                     enc: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
        tr = self.transformer
        if tr.gradient_checkpointing or not tr.single_transformer_blocks:
            return tr(hidden_states=x, timestep=t, guidance=g, pooled_projections=pool, encoder_hidden_states=enc,
                      txt_ids=self.txt_ids(enc.shape[1]), img_ids=self.img_ids(height, width),
                      return_dict=False)[0]
        return transformer_velocity(tr, x, t, g, pool, enc, self.rotary(enc.shape[1], height, width))

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, height: int | None = None, width: int | None = None,
               output_type: str = "pt") -> Any:
        """Packed latents -> images: ``"pt"`` float (B, 3, H, W) in [0, 1], ``"pil"``, ``"np"``."""
        lh, lw = self.latent_size(height, width)
        z = unpack_latents(latents.float(), lh, lw)
        z = z / self.vae.config.scaling_factor + self.vae.config.shift_factor
        vae_param = next(self.vae.parameters())
        img = self.vae.decode(z.to(device=vae_param.device, dtype=vae_param.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(img, output_type=output_type)
