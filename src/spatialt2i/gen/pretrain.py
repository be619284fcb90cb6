"""Pretrain the world's base generator: a tiny Flux pipeline trained on rendered world scenes.

``spatialt2i world pretrain --out DIR`` runs up to three stages on scenes drawn fresh every step:

0. **Text encoders** (optional, ``text_steps`` > 0; :mod:`spatialt2i.gen.text_pretrain`) — the
   world's stand-in for pretrained T5/CLIP: a scene-parse objective on prompts alone. With
   ``text_lr: 0`` they then stay frozen in flow matching, as FLUX.1-dev's are.
1. **VAE** (skipped with ``init_vae`` or ``init_from``: reuse a trained one) — an ``AutoencoderKL`` (3 blocks: VAE scale factor 4, 16 latent channels, so 64 px
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
   puts the attention of each object's words inside the object's pixels, an EMA of the
   weights (``ema_decay``) that is evaluated and saved, a heavier loss on the image tokens that
   show objects (``object_weight``; the white background is most of every image), and empty
   prompts at a rate (``text_dropout``) so that the model can be sampled with true CFG.

Every stage runs on ``device`` (``--device cuda``; CPU paths stay fp32). On a GPU one core cannot
render and tokenise scenes as fast as the tiny transformer trains, so ``data_workers`` processes
make the flow-matching batches (:mod:`spatialt2i.gen.fm_data`). Each stage is budgeted in minutes
of wall time (``--minutes`` is the total). Every few minutes a training state (all weights,
optimiser, step, data RNG; :mod:`spatialt2i.gen.pretrain_state`) is written to ``DIR/train_state/``
so a killed run resumes with ``--resume``; metrics go to TensorBoard (``DIR/logs``) and a
JSON-lines log. The final pipeline is saved with ``save_pretrained`` in ``DIR`` and loads with
``FluxPipeline.from_pretrained(DIR)``.

This file holds the driver (:class:`Pretrainer`: setup, resume, logging, the text and VAE stages, the
run over all stages, saving); the flow-matching stage's step, budget, batches, EMA and evaluation are
in :mod:`spatialt2i.gen.pretrain_fm`, a mixin ``Pretrainer`` inherits.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spatialt2i.gen.pretrain_config import (
    DEFAULT_MAX_SEQUENCE_LENGTH, SHIPPED_GENERATOR, DataConfig, ModelConfig, PretrainConfig, load_config,
    resolve_device, world_generator_path)
from spatialt2i.gen.pretrain_fm import FlowMatchingStage
from spatialt2i.gen.pretrain_state import has_state, load_state, save_state
from spatialt2i.gen.scene_stream import SceneStream, to_pixels
from spatialt2i.gen.schedule import lr_factor
from spatialt2i.gen.tiny import build_world_pipeline
from spatialt2i.gen.vae_stage import finetune_decoder, latent_scale, reconstruction_check, vae_step
from spatialt2i.metrics_log import MetricsLog

__all__ = ["DEFAULT_MAX_SEQUENCE_LENGTH", "SHIPPED_GENERATOR", "DataConfig", "ModelConfig", "PretrainConfig",
           "Pretrainer", "SceneStream", "load_config", "pretrain", "to_pixels",
           "world_generator_path"]


# ---------------------------------------------------------------------------------------- trainer
def _quiet() -> None:
    """Silence the per-batch "truncated to 77 CLIP tokens" warnings (CLIP only gives the pooled vector)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


class Pretrainer(FlowMatchingStage):
    """Two-stage pretraining with checkpoints, resume, TensorBoard and JSON-lines metrics."""

    def __init__(self, cfg: PretrainConfig, out: str | Path, resume: bool = False, progress: bool = True) -> None:
        self.device = resolve_device(cfg.device)     # before anything is written
        self.cfg = cfg
        self.out = Path(out)
        self.state_dir = self.out / "train_state"
        self.progress = progress
        self.out.mkdir(parents=True, exist_ok=True)
        _quiet()
        self.pipe = build_world_pipeline(cfg).to(self.device)
        torch.manual_seed(cfg.seed + 2)       # noise, sigmas, guidance: a run is reproducible (init_from too)
        self.stream = SceneStream(cfg, cfg.seed + 12345)
        self.stage = "text" if cfg.text_steps > 0 else "vae"
        self.step = 0           # step within the current stage
        self.elapsed = {"text": 0.0, "vae": 0.0, "fm": 0.0}
        self.text_stage = None
        if cfg.text_steps > 0:
            from spatialt2i.gen.text_pretrain import TextStage

            self.text_stage = TextStage(self.pipe, cfg.text_stage_lr, cfg.text_where_weight, cfg.max_sequence_length,
                                        cfg.text_hint_weight)
        self.vae_opt = torch.optim.AdamW(self.pipe.vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        groups = [{"params": list(self.pipe.transformer.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}]
        if cfg.text_lr > 0:  # else the text encoders stay frozen, as FLUX.1-dev's are
            groups.append({"params": list(self.pipe.text_encoder_2.parameters())
                           + list(self.pipe.text_encoder.parameters()), "lr": cfg.text_lr, "base_lr": cfg.text_lr})
        self.fm_opt = torch.optim.AdamW(groups, weight_decay=0.0)
        self._batches = None              # FMBatches, made when the flow-matching stage starts
        self._recorders: list = []        # attention recorders (grounding loss), set in the flow-matching stage
        self._ground_losses: list[float] = []
        self.ema = None
        if cfg.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self._fm_params(), decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup)
        self.history: list[dict] = []
        if resume and has_state(self.state_dir):
            self._load_state()
        elif (self.out / "model_index.json").exists() and not resume:
            pass  # a finished pipeline there gets overwritten at the end
        (self.out / "pretrain_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        self._metrics = MetricsLog(self.out, tb_dir="logs")

    # ------------------------------------------------------------ state
    def _save_state(self) -> None:
        save_state(self)

    def _load_state(self) -> None:
        load_state(self)
        self._say(f"resumed: stage {self.stage}, step {self.step}, "
                  f"{sum(self.elapsed.values()) / 60:.1f} min done")

    # ------------------------------------------------------------ logging
    def _say(self, msg: str) -> None:
        if self.progress:
            print(f"[pretrain {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def _metric(self, tag: str, values: dict[str, float], step: int) -> None:
        rec = {"stage": tag, "step": step, "time_min": round(sum(self.elapsed.values()) / 60, 3), **values}
        self.history.append(rec)
        self._metrics.append("metrics.jsonl", rec)
        gstep = step if tag.startswith("vae") else step + 1_000_000
        self._metrics.scalars(gstep, {f"{tag}/{k}": v for k, v in values.items()})

    # ------------------------------------------------------------ stage 1: VAE
    def vae_budget_s(self) -> float:
        if self.cfg.vae_steps > 0:  # the steps decide; the whole budget is only a cap
            return self.cfg.minutes * 60
        return self.cfg.minutes * 60 * self.cfg.vae_share

    @property
    def vae_source(self) -> str | None:
        """Where a trained VAE came from (``init_vae`` or ``init_from``); None when this run trains it."""
        return self.cfg.init_vae or self.cfg.init_from

    def _vae_more(self) -> bool:
        if self.vae_source:
            return False
        if self.cfg.vae_steps > 0 and self.step >= self.cfg.vae_steps:
            return False
        return self.elapsed["vae"] < self.vae_budget_s()

    def _vae_total_steps(self) -> int:
        # fixed steps, or estimated from the measured rate so the cosine schedule ends with the budget
        if self.cfg.vae_steps > 0:
            return self.cfg.vae_steps
        rate = getattr(self, "_vae_rate", None)
        return int(self.vae_budget_s() / rate) if rate else 10_000

    # ------------------------------------------------------------ stage 0: text encoders
    def _run_text_stage(self) -> None:
        cfg = self.cfg
        self._say(f"text stage: {cfg.text_steps} steps of the scene-parse objective, batch {cfg.text_batch}")
        t_prev, losses, stats = time.monotonic(), [], []
        last_ckpt = t_prev
        while self.step < cfg.text_steps:
            scenes, prompts, spans = self.stream.described(cfg.text_batch)
            loss, st = self.text_stage.step(scenes, prompts, spans, lr_factor(self.step, cfg.text_steps, 50, 0.05))
            losses.append(loss), stats.append(st)
            self.step += 1
            now = time.monotonic()
            self.elapsed["text"] += now - t_prev
            t_prev = now
            if self.step % cfg.log_every == 0 or self.step == cfg.text_steps:
                vals = {"loss": float(np.mean(losses)),
                        **{k: float(np.mean([x[k] for x in stats if k in x])) for k in stats[-1]}}
                self._metric("text", vals, self.step)
                self._say(f"text step {self.step} " + " ".join(f"{k} {v:.3f}" for k, v in vals.items()))
                losses, stats = [], []
            if now - last_ckpt > cfg.checkpoint_minutes * 60:
                self._save_state()
                last_ckpt = t_prev = time.monotonic()
        for mod in (self.pipe.text_encoder, self.pipe.text_encoder_2):
            mod.eval()

    # ------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        p = self.pipe
        last_ckpt = time.monotonic()
        # ---- stage 0 (optional): the text encoders learn the world's language
        if self.stage == "text":
            self._run_text_stage()
            self.stage, self.step = "vae", 0
            self._save_state()
            last_ckpt = time.monotonic()
        # ---- stage 1
        if self.stage == "vae":
            p.vae.train()
            if not self.vae_source:
                self._say(f"VAE stage: {self.vae_budget_s() / 60:.1f} min, batch {cfg.vae_batch} crops of "
                          f"{cfg.vae_crop} px")
            t_prev, losses = time.monotonic(), []
            while self._vae_more():
                lr = cfg.vae_lr * lr_factor(self.step, max(1, self._vae_total_steps()), 50, 0.05)
                losses.append(vae_step(p.vae, self.vae_opt, self.stream, cfg, lr))
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
            if self.vae_source:  # trained elsewhere: keep its latent shift/scale
                shift, scale = p.vae.config.shift_factor, p.vae.config.scaling_factor
            else:
                shift, scale = latent_scale(p.vae, self.stream)
            chk = reconstruction_check(p.vae, cfg.image_size)
            self._metric("vae_check", chk, self.step)
            self._say(f"VAE {'loaded from ' + self.vae_source if self.vae_source else f'done after {self.step} steps'}: "
                      f"shift {shift:.3f} scale {scale:.3f}; oracle on "
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
        self._fm_train_mode()
        gen = self.generator()
        if cfg.grounding_weight > 0:
            from spatialt2i.gen.grounding import install_recorders

            self._recorders = install_recorders(p.transformer)
        self._fm_batches()
        self._say(f"flow-matching stage: {self.fm_budget_s() / 60:.1f} min, batch {cfg.batch}"
                  + (f", {cfg.data_workers} data workers" if cfg.data_workers else "") + f", on {self.device}")
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
                          + f"({self.elapsed['fm'] / 60:.1f}/{self.fm_budget_s() / 60:.1f} min, "
                          f"{self.step * cfg.batch / max(self.elapsed['fm'], 1e-9):.0f} samples/s)")
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
        self._batches.close()
        self._save_state()
        if cfg.decoder_steps > 0:
            self._say(f"decoder stage: {cfg.decoder_steps} steps (encoder frozen)")
            t0 = time.monotonic()
            sd = finetune_decoder(p.vae, cfg, lambda st, loss: (
                self._metric("decoder", {"loss": loss}, st),
                self._say(f"decoder step {st} loss {loss:.4f}")))
            p.vae.load_state_dict(sd)
            self.elapsed["decoder"] = time.monotonic() - t0
            chk = reconstruction_check(p.vae, cfg.image_size)
            self._metric("decoder_check", chk, cfg.decoder_steps)
            self._say(f"decoder done: oracle on reconstructions: presence {chk['presence']:.3f} "
                      f"all-correct {chk['all_correct']:.3f}")
        self.save(self.out)
        res = self.evaluate()
        self._metric("final", {k: v for k, v in res.items() if isinstance(v, float)}, self.step)
        self._say(f"done: {self.step} flow-matching steps; presence {res['presence']:.3f} "
                  f"all-correct {res['all_correct']:.3f}; saved to {self.out}")
        self._metrics.close()
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
        for path in [Path(out) / "model_index.json", *Path(out).glob("*/config.json")]:  # no paths of init_from
            spec = json.loads(path.read_text())
            if spec.pop("_name_or_path", None) is not None:
                path.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")


def pretrain(out: str | Path, cfg: PretrainConfig | None = None, *, resume: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Run both stages and save the pipeline in ``out``; returns the final figures."""
    return Pretrainer(cfg or PretrainConfig(), out, resume=resume, progress=progress).run()
