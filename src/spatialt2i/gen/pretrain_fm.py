"""Stage 2 of the world generator's pretraining (:mod:`spatialt2i.gen.pretrain`): flow matching.

:class:`FlowMatchingStage` is a mixin that :class:`~spatialt2i.gen.pretrain.Pretrainer` inherits:
one training step (:meth:`~FlowMatchingStage._fm_step`: VAE-encode a batch, noise it at a shifted
logit-normal sigma, regress the velocity ``noise - x0`` through :meth:`FluxGenerator.forward`, plus the
optional grounding loss, then the optimiser and EMA updates), the stage's budget, step count and
batch source, train/eval modes, the EMA weight swap, and the evaluation of the current (EMA)
weights. The loop that runs the stage, with logging and checkpoints, is ``Pretrainer.run``.
"""

from __future__ import annotations

import contextlib

import torch

from spatialt2i.gen.scene_stream import to_pixels
from spatialt2i.gen.schedule import lr_factor, shifted_sigmas

__all__ = ["FlowMatchingStage"]


class FlowMatchingStage:
    """Flow-matching stage of :class:`~spatialt2i.gen.pretrain.Pretrainer` (a mixin: uses its ``cfg``,
    ``pipe``, ``device``, ``stream``, ``step``, ``elapsed``, ``fm_opt``, ``ema`` and recorders)."""

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

    def fm_budget_s(self) -> float:
        if self.cfg.fm_steps > 0 or self.cfg.vae_steps > 0:
            return max(0.0, self.cfg.minutes * 60 - self.elapsed["vae"])
        return self.cfg.minutes * 60 * (1 - self.cfg.vae_share)

    def _fm_more(self) -> bool:
        if self.cfg.fm_steps > 0 and self.step >= self.cfg.fm_steps:
            return False
        if self.cfg.fm_stop > 0 and self.step >= self.cfg.fm_stop:
            return False
        return self.elapsed["fm"] < self.fm_budget_s()

    def _fm_train_mode(self) -> None:
        """Transformer in train mode; the text encoders too unless they are frozen (``text_lr`` 0)."""
        p = self.pipe
        p.transformer.train()
        for mod in (p.text_encoder, p.text_encoder_2):
            mod.train(self.cfg.text_lr > 0)
            for q in mod.parameters():
                q.requires_grad_(self.cfg.text_lr > 0)

    def _fm_batches(self):
        """The stage's batch source (made once; worker streams seeded from the step it starts at)."""
        from spatialt2i.gen.fm_data import FMBatches, worker_seed

        if self._batches is None:
            p = self.pipe
            self._batches = FMBatches(self.stream, self.cfg, p, 2 * p.vae_scale_factor, self.cfg.data_workers,
                                      worker_seed(self.cfg.seed, self.step))
        return self._batches

    def _fm_step(self, gen) -> float:
        from spatialt2i.gen.fm_data import encode_ids, to_device
        from spatialt2i.gen.flux import pack_latents

        cfg, pipe, dev = self.cfg, self.pipe, self.device
        total = self._fm_total_steps()
        batch = to_device(self._fm_batches().next(easy=self.step < cfg.data.curriculum * total), dev)
        with torch.no_grad():
            z = pipe.vae.encode(to_pixels(batch.images)).latent_dist.mode()
            x0 = pack_latents((z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor)
        b = x0.shape[0]
        u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(b)).to(dev)
        sigma = shifted_sigmas(u.clamp(1e-4, 1 - 1e-4), x0.shape[1], pipe.scheduler.config)
        noise = torch.randn(x0.shape).to(dev)     # drawn on the CPU: the same numbers on any device
        xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        guidance = torch.empty(b).uniform_(cfg.guidance_min, cfg.guidance_max).to(dev)
        with torch.set_grad_enabled(cfg.text_lr > 0):
            embeds, pooled, _ = encode_ids(pipe, batch.t5_ids, batch.clip_ids)
        v = gen.forward(xt, sigma, embeds, pooled, guidance)
        err = (v - (noise - x0)).pow(2)
        if batch.token_weight is not None:
            err = err * batch.token_weight[:, :, None]
        loss = fm_loss = err.mean()
        if batch.grounding is not None:
            from spatialt2i.gen.grounding import grounding_loss

            lg = torch.stack([grounding_loss(r.img_to_txt, batch.grounding) for r in self._recorders]).mean()
            self._ground_losses.append(float(lg.detach()))
            loss = loss + cfg.grounding_weight * lg
        f = lr_factor(self.step, max(1, total), cfg.warmup_steps, cfg.min_lr_ratio)
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
        self._fm_train_mode()
        return res
