"""Pretrain the world's base generator: a tiny Flux pipeline trained on rendered world scenes.

``spatialt2i world pretrain --out DIR`` runs two stages on scenes drawn fresh every step:

1. **VAE** — an ``AutoencoderKL`` (3 blocks: VAE scale factor 4, 16 latent channels, so 64 px
   images give 16x16 latents = 64 packed image tokens) learns to reconstruct scenes. It is fully
   convolutional (no mid-block attention), so it trains on random crops (cheap) and then encodes
   whole images. After this stage its ``shift_factor``/``scaling_factor`` are set from latent
   statistics so that the flow-matching targets have unit scale.
2. **Flow matching** — the ``FluxTransformer2DModel`` plus both text encoders (T5 and CLIP) learn
   the rectified-flow velocity ``noise - x0`` at ``x_t = (1 - t) x0 + t noise``, with ``t`` drawn
   logit-normal and shifted by Flux's dynamic shift for 64 tokens (the distribution the sampler
   visits). The loss goes through :meth:`FluxGenerator.forward`, the same call sampling and RL use.
   A short curriculum starts with 1-2 objects and few relations and widens to the full prompt mix.
   Optional: a token grounding loss (``grounding_weight``, :mod:`spatialt2i.gen.grounding`) that
   puts the attention of each object's words inside the object's pixels, and an EMA of the
   weights (``ema_decay``) that is evaluated and saved.

Each stage is budgeted in minutes of wall time (``--minutes`` is the total). Every few minutes a
training state (all weights, optimiser, step, data RNG) is written to ``DIR/train_state/`` so a
killed run resumes with ``--resume``; metrics go to TensorBoard (``DIR/logs``) and a JSON-lines
log. The final pipeline is saved with ``save_pretrained`` in ``DIR`` and loads with
``FluxPipeline.from_pretrained(DIR)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spatialt2i.gen.pretrain_config import (
    DEFAULT_MAX_SEQUENCE_LENGTH, SHIPPED_GENERATOR, DataConfig, ModelConfig, PretrainConfig, load_config,
    world_generator_path)
from spatialt2i.gen.scene_stream import SceneStream, to_pixels

__all__ = ["DEFAULT_MAX_SEQUENCE_LENGTH", "SHIPPED_GENERATOR", "DataConfig", "ModelConfig", "PretrainConfig",
           "Pretrainer", "SceneStream", "build_pipeline", "load_config", "pretrain", "to_pixels",
           "world_generator_path"]


# ---------------------------------------------------------------------------------------- model
def build_pipeline(cfg: PretrainConfig):
    """A random-init tiny FluxPipeline with this config's sizes (tokenizers built offline)."""
    from diffusers import AutoencoderKL, FluxPipeline

    from spatialt2i.gen.tiny import LATENT_CHANNELS, build_tiny_flux_pipeline

    m = cfg.model
    base = build_tiny_flux_pipeline(
        seed=cfg.seed, vae_blocks=len(m.vae_channels), num_layers=m.num_layers,
        num_single_layers=m.num_single_layers, heads=m.heads, head_dim=m.head_dim,
        joint_dim=m.joint_dim, pooled_dim=m.pooled_dim, guidance_embeds=m.guidance_embeds)
    torch.manual_seed(cfg.seed + 1)
    groups = math.gcd(*m.vae_channels) if len(m.vae_channels) > 1 else m.vae_channels[0]
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(m.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(m.vae_channels),
        block_out_channels=tuple(m.vae_channels), layers_per_block=1,
        latent_channels=LATENT_CHANNELS, norm_num_groups=min(8, groups), sample_size=cfg.image_size,
        mid_block_add_attention=False,  # fully convolutional: trains on crops
        scaling_factor=1.0, shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False)
    pipe = FluxPipeline(scheduler=base.scheduler, vae=vae, text_encoder=base.text_encoder,
                        tokenizer=base.tokenizer, text_encoder_2=base.text_encoder_2,
                        tokenizer_2=base.tokenizer_2, transformer=base.transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
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


def finetune_decoder(vae: torch.nn.Module, cfg: PretrainConfig, progress: Any = None) -> dict[str, torch.Tensor]:
    """Fine-tune a copy of ``vae``'s decoder for ``cfg.decoder_steps`` on frozen-encoder latents.

    Depends only on the VAE it is given and ``cfg`` (its own data stream, seeded from
    ``cfg.seed``), so it gives the same result whenever it runs. Returns the new VAE state dict.
    """
    import copy

    vae = copy.deepcopy(vae).float()
    vae.train()
    for q in vae.parameters():
        q.requires_grad_(False)
    params = list(vae.decoder.parameters())
    for q in params:
        q.requires_grad_(True)
    stream = SceneStream(cfg, cfg.seed + 777)
    gen = torch.Generator().manual_seed(cfg.seed + 778)
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    std = 1.0 / float(vae.config.scaling_factor)
    c, n = cfg.vae_crop, cfg.image_size
    losses = []
    for step in range(cfg.decoder_steps):
        _, imgs, _ = stream.batch(cfg.vae_batch)
        x = to_pixels(imgs)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            z = z + cfg.decoder_latent_noise * std * torch.randn(z.shape, generator=gen)
        # crop in latent space (factor = VAE scale factor) and the matching pixels
        f = n // z.shape[-1]
        zc, xc = [], []
        for i in range(z.shape[0]):
            oy, ox = (int(v) for v in stream.rng.integers(0, (n - c) // f + 1, size=2))
            zc.append(z[i, :, oy:oy + c // f, ox:ox + c // f])
            xc.append(x[i, :, oy * f:oy * f + c, ox * f:ox * f + c])
        z, x = torch.stack(zc), torch.stack(xc)
        for g in opt.param_groups:
            g["lr"] = cfg.decoder_lr * _lr_factor(step, cfg.decoder_steps, 20, 0.05)
        rec = vae.decode(z).sample
        w = 1.0 + (cfg.vae_object_weight - 1.0) * (x < 0.99).any(1, keepdim=True).float()
        err = rec - x
        loss = ((err.abs() + err.pow(2)) * w).sum() / (w.sum() * 3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None and (step + 1) % cfg.log_every == 0:
            progress(step + 1, float(np.mean(losses)))
            losses = []
    vae.eval()
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


# ---------------------------------------------------------------------------------------- trainer
def _quiet() -> None:
    """Silence the per-batch "truncated to 77 CLIP tokens" warnings (CLIP only gives the pooled vector)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


class Pretrainer:
    """Two-stage pretraining with checkpoints, resume, TensorBoard and JSON-lines metrics."""

    def __init__(self, cfg: PretrainConfig, out: str | Path, resume: bool = False, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(out)
        self.state_dir = self.out / "train_state"
        self.progress = progress
        self.out.mkdir(parents=True, exist_ok=True)
        _quiet()
        self.pipe = build_pipeline(cfg)
        self.stream = SceneStream(cfg, cfg.seed + 12345)
        self.stage = "vae"
        self.step = 0           # step within the current stage
        self.elapsed = {"vae": 0.0, "fm": 0.0}
        self.vae_opt = torch.optim.AdamW(self.pipe.vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        self.fm_opt = torch.optim.AdamW([
            {"params": list(self.pipe.transformer.parameters()), "lr": cfg.lr, "base_lr": cfg.lr},
            {"params": list(self.pipe.text_encoder_2.parameters()) + list(self.pipe.text_encoder.parameters()),
             "lr": cfg.text_lr, "base_lr": cfg.text_lr},
        ], weight_decay=0.0)
        self._recorders: list = []        # attention recorders (grounding loss), set in the flow-matching stage
        self._ground_losses: list[float] = []
        self.ema = None
        if cfg.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self._fm_params(), decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup)
        self.history: list[dict] = []
        if resume and (self.state_dir / "state.pt").is_file():
            self._load_state()
        elif (self.out / "model_index.json").exists() and not resume:
            pass  # a finished pipeline there gets overwritten at the end
        (self.out / "pretrain_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        self._tb = None
        self._log = open(self.out / "metrics.jsonl", "a")

    def _fm_params(self) -> list[torch.nn.Parameter]:
        p = self.pipe
        return [q for m in (p.transformer, p.text_encoder_2, p.text_encoder) for q in m.parameters()]

    @contextlib.contextmanager
    def ema_weights(self):
        """Swap the EMA weights in for the block (evaluation, saving); the training weights come back."""
        if self.ema is None:
            yield
            return
        params = self._fm_params()
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield
        finally:
            self.ema.restore(params)

    # ------------------------------------------------------------ state
    def _save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        p = self.pipe
        state = {
            "stage": self.stage, "step": self.step, "elapsed": self.elapsed,
            "vae": p.vae.state_dict(), "transformer": p.transformer.state_dict(),
            "t5": p.text_encoder_2.state_dict(), "clip": p.text_encoder.state_dict(),
            "vae_config": {"scaling_factor": p.vae.config.scaling_factor, "shift_factor": p.vae.config.shift_factor},
            "vae_opt": self.vae_opt.state_dict(), "fm_opt": self.fm_opt.state_dict(),
            "data_rng": self.stream.state(), "torch_rng": torch.get_rng_state(),
            "config": dataclasses.asdict(self.cfg),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }
        tmp = self.state_dir / "state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.state_dir / "state.pt")

    def _load_state(self) -> None:
        s = torch.load(self.state_dir / "state.pt", map_location="cpu", weights_only=False)
        p = self.pipe
        p.vae.load_state_dict(s["vae"])
        p.transformer.load_state_dict(s["transformer"])
        p.text_encoder_2.load_state_dict(s["t5"])
        p.text_encoder.load_state_dict(s["clip"])
        p.vae.register_to_config(**s["vae_config"])
        self.vae_opt.load_state_dict(s["vae_opt"])
        self.fm_opt.load_state_dict(s["fm_opt"])
        self.stream.set_state(s["data_rng"])
        if self.ema is not None and s.get("ema") is not None:
            self.ema.load_state_dict(s["ema"])
        torch.set_rng_state(s["torch_rng"])
        self.stage, self.step, self.elapsed = s["stage"], int(s["step"]), dict(s["elapsed"])
        self._say(f"resumed: stage {self.stage}, step {self.step}, "
                  f"{sum(self.elapsed.values()) / 60:.1f} min done")

    # ------------------------------------------------------------ logging
    def _say(self, msg: str) -> None:
        if self.progress:
            print(f"[pretrain {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def _metric(self, tag: str, values: dict[str, float], step: int) -> None:
        rec = {"stage": tag, "step": step, "time_min": round(sum(self.elapsed.values()) / 60, 3), **values}
        self.history.append(rec)
        self._log.write(json.dumps(rec) + "\n")
        self._log.flush()
        try:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.out / "logs"))
            gstep = step if tag.startswith("vae") else step + 1_000_000
            for k, v in values.items():
                self._tb.add_scalar(f"{tag}/{k}", v, gstep)
        except Exception:  # tensorboard missing: the JSON-lines log still has everything
            self._tb = False

    # ------------------------------------------------------------ stage 1: VAE
    def vae_budget_s(self) -> float:
        if self.cfg.vae_steps > 0:  # the steps decide; the whole budget is only a cap
            return self.cfg.minutes * 60
        return self.cfg.minutes * 60 * self.cfg.vae_share

    def fm_budget_s(self) -> float:
        if self.cfg.fm_steps > 0 or self.cfg.vae_steps > 0:
            return max(0.0, self.cfg.minutes * 60 - self.elapsed["vae"])
        return self.cfg.minutes * 60 * (1 - self.cfg.vae_share)

    def _vae_more(self) -> bool:
        if self.cfg.vae_steps > 0 and self.step >= self.cfg.vae_steps:
            return False
        return self.elapsed["vae"] < self.vae_budget_s()

    def _fm_more(self) -> bool:
        if self.cfg.fm_steps > 0 and self.step >= self.cfg.fm_steps:
            return False
        if self.cfg.fm_stop > 0 and self.step >= self.cfg.fm_stop:
            return False
        return self.elapsed["fm"] < self.fm_budget_s()

    def _vae_step(self) -> float:
        cfg, vae = self.cfg, self.pipe.vae
        _, imgs, _ = self.stream.batch(cfg.vae_batch)
        x = to_pixels(imgs)
        c = cfg.vae_crop
        if c < cfg.image_size:
            rng = self.stream.rng
            crops = []
            for i in range(x.shape[0]):
                oy, ox = (int(v) for v in rng.integers(0, cfg.image_size - c + 1, size=2))
                crops.append(x[i, :, oy:oy + c, ox:ox + c])
            x = torch.stack(crops)
        for g in self.vae_opt.param_groups:
            g["lr"] = cfg.vae_lr * _lr_factor(self.step, max(1, self._vae_total_steps()), 50, 0.05)
        post = vae.encode(x).latent_dist
        z = post.sample()
        rec = vae.decode(z).sample
        # L1 + MSE keep flat colours exact and edges sharp; object pixels weigh more than the
        # white background (which would otherwise dominate); KL keeps the latent well scaled
        w = 1.0 + (cfg.vae_object_weight - 1.0) * (x < 0.99).any(1, keepdim=True).float()
        err = rec - x
        l_rec = ((err.abs() + err.pow(2)) * w).sum() / (w.sum() * 3)
        kl = post.kl().mean() / z[0].numel()
        loss = l_rec + cfg.kl_weight * kl
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 5.0)
        self.vae_opt.step()
        return float(l_rec.detach())

    def _vae_total_steps(self) -> int:
        # fixed steps, or estimated from the measured rate so the cosine schedule ends with the budget
        if self.cfg.vae_steps > 0:
            return self.cfg.vae_steps
        rate = getattr(self, "_vae_rate", None)
        return int(self.vae_budget_s() / rate) if rate else 10_000

    @torch.no_grad()
    def vae_check(self, n: int = 64, seed: int = 777) -> dict[str, float]:
        """Oracle on VAE reconstructions of held-out scenes: presence and all-correct (upper bounds)."""
        from spatialt2i.gen.evaluate import heldout_scenes
        from spatialt2i.world.oracle import judge
        from spatialt2i.world.render import render

        vae = self.pipe.vae.eval()
        scenes, _ = heldout_scenes(n, seed=seed)
        imgs = np.stack([np.asarray(render(s, self.cfg.image_size)) for s in scenes])
        x = to_pixels(imgs)
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        out = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        v = [judge(s, o) for s, o in zip(scenes, out)]
        self.pipe.vae.train()
        return {"presence": float(np.mean([x.presence for x in v])),
                "all_correct": float(np.mean([x.all_correct for x in v])),
                "mse": float((rec - x).pow(2).mean())}

    @torch.no_grad()
    def set_latent_scale(self, n: int = 256) -> tuple[float, float]:
        """Set the VAE's shift/scaling factors from latent means of fresh scenes (unit-scale targets)."""
        vae = self.pipe.vae.eval()
        rng_state = self.stream.state()
        zs = []
        for _ in range(max(1, n // 64)):
            _, imgs, _ = self.stream.batch(64)
            zs.append(vae.encode(to_pixels(imgs)).latent_dist.mode())
        self.stream.set_state(rng_state)
        z = torch.cat(zs)
        shift, std = float(z.mean()), float(z.std())
        vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
        return shift, 1.0 / std

    # ------------------------------------------------------------ stage 2: flow matching
    def _fm_step(self, gen) -> float:
        from spatialt2i.gen.flux import pack_latents

        cfg, pipe = self.cfg, self.pipe
        total = self._fm_total_steps()
        easy = self.step < cfg.data.curriculum * total
        scenes, imgs, prompts = self.stream.batch(cfg.batch, easy=easy)
        with torch.no_grad():
            z = pipe.vae.encode(to_pixels(imgs)).latent_dist.mode()
            x0 = pack_latents((z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor)
        b = x0.shape[0]
        u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(b))
        sigma = shifted_sigmas(u.clamp(1e-4, 1 - 1e-4), x0.shape[1], pipe.scheduler.config)
        noise = torch.randn_like(x0)
        xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        guidance = torch.empty(b).uniform_(cfg.guidance_min, cfg.guidance_max)
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=torch.device("cpu"),
                                               max_sequence_length=cfg.max_sequence_length)
        v = gen.forward(xt, sigma, embeds, pooled, guidance)
        loss = fm_loss = (v - (noise - x0)).pow(2).mean()
        if cfg.grounding_weight > 0:
            from spatialt2i.gen.grounding import grounding_loss, grounding_targets

            tg = grounding_targets(scenes, prompts, pipe.tokenizer_2, cfg.max_sequence_length, cfg.image_size,
                                   2 * pipe.vae_scale_factor)
            lg = torch.stack([grounding_loss(r.img_to_txt, tg) for r in self._recorders]).mean()
            self._ground_losses.append(float(lg.detach()))
            loss = loss + cfg.grounding_weight * lg
        f = _lr_factor(self.step, max(1, total), cfg.warmup_steps, cfg.min_lr_ratio)
        for g in self.fm_opt.param_groups:
            g["lr"] = g["base_lr"] * f
        self.fm_opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [q for g in self.fm_opt.param_groups for q in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        self.fm_opt.step()
        if self.ema is not None:
            self.ema.step(params)
        return float(fm_loss.detach())

    def _fm_total_steps(self) -> int:
        if self.cfg.fm_steps > 0:
            return self.cfg.fm_steps
        rate = getattr(self, "_fm_rate", None)
        return int(self.fm_budget_s() / rate) if rate else 10_000

    def generator(self):
        from spatialt2i.gen.flux import FluxGenerator

        return FluxGenerator(self.pipe, height=self.cfg.image_size, width=self.cfg.image_size,
                             max_sequence_length=self.cfg.max_sequence_length, prompt_cache_size=0)

    def evaluate(self, n: int | None = None) -> dict[str, float]:
        from spatialt2i.gen.evaluate import evaluate_generator

        p = self.pipe
        for mod in (p.transformer, p.text_encoder, p.text_encoder_2):
            mod.eval()
        with self.ema_weights():
            res = evaluate_generator(self.generator(), n=n or self.cfg.eval_prompts, steps=self.cfg.eval_steps)
        for mod in (p.transformer, p.text_encoder, p.text_encoder_2):
            mod.train()
        return res

    # ------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        p = self.pipe
        last_ckpt = time.monotonic()
        # ---- stage 1
        if self.stage == "vae":
            p.vae.train()
            self._say(f"VAE stage: {self.vae_budget_s() / 60:.1f} min, batch {cfg.vae_batch} crops of {cfg.vae_crop} px")
            t_prev, losses = time.monotonic(), []
            while self._vae_more():
                losses.append(self._vae_step())
                self.step += 1
                now = time.monotonic()
                self.elapsed["vae"] += now - t_prev
                t_prev = now
                self._vae_rate = self.elapsed["vae"] / self.step
                if self.step % cfg.log_every == 0:
                    self._metric("vae", {"loss": float(np.mean(losses))}, self.step)
                    self._say(f"vae step {self.step} loss {np.mean(losses):.4f} "
                              f"({self.elapsed['vae'] / 60:.1f}/{self.vae_budget_s() / 60:.1f} min)")
                    losses = []
                if now - last_ckpt > cfg.checkpoint_minutes * 60:
                    self._save_state()
                    last_ckpt, t_prev = time.monotonic(), time.monotonic()
            shift, scale = self.set_latent_scale()
            chk = self.vae_check()
            self._metric("vae_check", chk, self.step)
            self._say(f"VAE done after {self.step} steps: shift {shift:.3f} scale {scale:.3f}; oracle on "
                      f"reconstructions: presence {chk['presence']:.3f} all-correct {chk['all_correct']:.3f}")
            p.vae.eval()
            for q in p.vae.parameters():
                q.requires_grad_(False)
            self.stage, self.step = "fm", 0
            self._save_state()
            last_ckpt = time.monotonic()
        # ---- stage 2
        p.vae.eval()
        for q in p.vae.parameters():
            q.requires_grad_(False)
        for mod in (p.transformer, p.text_encoder, p.text_encoder_2):
            mod.train()
        gen = self.generator()
        if cfg.grounding_weight > 0:
            from spatialt2i.gen.grounding import install_recorders

            self._recorders = install_recorders(p.transformer)
        self._say(f"flow-matching stage: {self.fm_budget_s() / 60:.1f} min, batch {cfg.batch}")
        t_prev, losses = time.monotonic(), []
        last_eval = self.elapsed["fm"]
        while self._fm_more():
            losses.append(self._fm_step(gen))
            self.step += 1
            now = time.monotonic()
            self.elapsed["fm"] += now - t_prev
            t_prev = now
            self._fm_rate = self.elapsed["fm"] / self.step
            if self.step % cfg.log_every == 0:
                vals = {"loss": float(np.mean(losses)), "lr": self.fm_opt.param_groups[0]["lr"]}
                if self._ground_losses:
                    vals["grounding"] = float(np.mean(self._ground_losses))
                self._metric("fm", vals, self.step)
                self._say(f"fm step {self.step} loss {vals['loss']:.4f} "
                          + (f"grounding {vals['grounding']:.3f} " if "grounding" in vals else "")
                          + f"({self.elapsed['fm'] / 60:.1f}/{self.fm_budget_s() / 60:.1f} min)")
                losses, self._ground_losses = [], []
            if cfg.eval_minutes > 0 and self.elapsed["fm"] - last_eval > cfg.eval_minutes * 60:
                res = self.evaluate()
                self._metric("eval", {k: v for k, v in res.items() if isinstance(v, float)}, self.step)
                self._say(f"eval @ step {self.step}: presence {res['presence']:.3f} "
                          f"all-correct {res['all_correct']:.3f}")
                last_eval = self.elapsed["fm"]
                t_prev = time.monotonic()
            if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                self._save_state()
                last_ckpt = t_prev = time.monotonic()
        self._save_state()
        if cfg.decoder_steps > 0:
            self._say(f"decoder stage: {cfg.decoder_steps} steps (encoder frozen)")
            t0 = time.monotonic()
            sd = finetune_decoder(p.vae, cfg, lambda st, loss: (
                self._metric("decoder", {"loss": loss}, st),
                self._say(f"decoder step {st} loss {loss:.4f}")))
            p.vae.load_state_dict(sd)
            self.elapsed["decoder"] = time.monotonic() - t0
            chk = self.vae_check()
            self._metric("decoder_check", chk, cfg.decoder_steps)
            self._say(f"decoder done: oracle on reconstructions: presence {chk['presence']:.3f} "
                      f"all-correct {chk['all_correct']:.3f}")
        self.save(self.out)
        res = self.evaluate()
        self._metric("final", {k: v for k, v in res.items() if isinstance(v, float)}, self.step)
        self._say(f"done: {self.step} flow-matching steps; presence {res['presence']:.3f} "
                  f"all-correct {res['all_correct']:.3f}; saved to {self.out}")
        if self._tb:
            self._tb.close()
        self._log.close()
        return {"steps": self.step, "minutes": sum(self.elapsed.values()) / 60, **res}

    def save(self, out: str | Path, dtype: torch.dtype = torch.float32) -> None:
        """Save the pipeline (EMA weights when on) with ``save_pretrained``; fp16 halves the size and
        loads back to fp32."""
        p = self.pipe
        for mod in (p.transformer, p.text_encoder, p.text_encoder_2, p.vae):
            mod.eval()
        with self.ema_weights():
            if dtype != torch.float32:
                p.to(dtype)
            p.save_pretrained(str(out))
            if dtype != torch.float32:
                p.to(torch.float32)


def pretrain(out: str | Path, cfg: PretrainConfig | None = None, *, resume: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Run both stages and save the pipeline in ``out``; returns the final figures."""
    return Pretrainer(cfg or PretrainConfig(), out, resume=resume, progress=progress).run()
