"""Rollout and training replay for :class:`spatialt2i.gen.flux.FluxGenerator`.

:class:`FluxSampling` is a mixin that ``FluxGenerator`` inherits: :meth:`~FluxSampling.sample`
loops :func:`spatialt2i.rl.sde.sde_step` from sigma 1 to 0 and records a
:class:`~spatialt2i.gen.trajectory.Trajectory`; :meth:`~FluxSampling.replay_step` (one step) and
:meth:`~FluxSampling.replay` (several steps in one transformer pass) re-evaluate a stored
trajectory's transitions with the current weights for training. All three go through the adapter's
one :meth:`~spatialt2i.gen.flux.FluxGenerator.forward`, so with unchanged weights a replayed step
has exactly the rollout's log-prob. The prompt encoding, schedule, noise, forward and decoding
they call are the adapter's own (:mod:`spatialt2i.gen.flux`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spatialt2i.gen.trajectory import PromptEmbeds, Trajectory, _stack_with_grad
from spatialt2i.rl.sde import sde_step

__all__ = ["FluxSampling"]


class FluxSampling:
    """SDE/ODE sampling and log-prob replay; a mixin of :class:`~spatialt2i.gen.flux.FluxGenerator`
    (uses its ``forward``, ``encode_prompts``, ``negative_embeds``, ``sigmas``, ``initial_noise``,
    ``decode``, ``check_resolution`` and settings)."""

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int,
        dynamics: str = "ode",
        noise_level: float = 0.7,
        *,
        guidance: float | None = None,
        true_cfg_scale: float | None = None,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        sde_steps: Sequence[int] | None = None,
        decode: bool = True,
        output_type: str = "pt",
        embeds: PromptEmbeds | None = None,
        grad_steps: Sequence[int] = (),
    ) -> Trajectory:
        """Sample one image per (prompt, seed) by looping :func:`sde_step` from sigma 1 to 0.

        ``seeds`` seed one CPU generator per sample: it draws the initial noise (as FluxPipeline
        does with a list of generators) and then the SDE noise, so a sample does not depend on its
        batch mates. ``sde_steps``: the step indices that use ``dynamics`` with ``noise_level``
        (default all); the others are ODE steps with log-prob 0. ``grad_steps``: steps whose forward
        runs with autograd on; their log-probs (the same values as ``log_probs``, with the next latent
        taken as given, exactly as :meth:`replay` computes them) come back attached to the graph in
        ``graph_log_probs``, so that a single update right after the rollout need not run those
        forward passes again.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = list(seeds)
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        h, w = height or self.height, width or self.width
        self.check_resolution(h, w)
        emb = embeds if embeds is not None else self.encode_prompts(prompts)
        scale = self.true_cfg_scale if true_cfg_scale is None else float(true_cfg_scale)
        neg = self.negative_embeds(len(prompts), negative_prompt) if scale > 1 else None
        g_val = (self.guidance_scale if guidance is None else float(guidance)) if self.has_guidance_embeds else None

        sigmas = self.sigmas(steps, h, w)
        window = set(range(steps)) if sde_steps is None else {int(i) for i in sde_steps}
        levels = torch.tensor([noise_level if (i in window and dynamics != "ode") else 0.0
                               for i in range(steps)], dtype=torch.float32)
        sigma_max = float(sigmas[1]) if steps > 1 else 0.5
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        x = self.initial_noise(seeds, h, w, generators=gens)
        grad_steps = sorted({int(i) for i in grad_steps})
        if any(not (0 <= i < steps and levels[i] > 0) for i in grad_steps):
            raise ValueError(f"grad_steps {grad_steps}: each must be a noisy step in 0..{steps - 1} "
                             f"(noise levels {levels.tolist()})")
        states, log_probs, graph = [x], [], []    # graph: (B,) tensors; stacked with autograd on below
        for i in range(steps):
            with torch.set_grad_enabled(i in grad_steps):
                v = self.forward(x, sigmas[i], emb.prompt_embeds, emb.pooled, g_val,
                                 negative=neg, true_cfg_scale=scale, height=h, width=w)
            dyn = dynamics if levels[i] > 0 else "ode"
            x_next, lp, _, _ = sde_step(v.detach(), x, sigmas[i], sigmas[i + 1], float(levels[i]), dyn,
                                        generator=gens, sigma_max=sigma_max)
            if i in grad_steps:
                with torch.enable_grad():
                    _, lp_g, _, _ = sde_step(v, x, sigmas[i], sigmas[i + 1], float(levels[i]), dyn,
                                             prev_sample=x_next, sigma_max=sigma_max)
                graph.append(lp_g)
                lp = lp_g.detach()
            x = x_next
            states.append(x)
            log_probs.append(lp)
        traj = Trajectory(latents=torch.stack(states, 1), log_probs=torch.stack(log_probs, 1),
                          sigmas=sigmas, noise_levels=levels, dynamics=dynamics, embeds=emb,
                          guidance=g_val, height=h, width=w, negative=neg, true_cfg_scale=scale,
                          graph_log_probs=_stack_with_grad(graph))
        if decode:
            traj.images = self.decode(x, h, w, output_type)
        return traj

    def replay(
        self,
        traj: Trajectory,
        steps: Sequence[int],
        index: torch.Tensor | Sequence[int] | slice | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`replay_step` for several steps in ONE transformer pass (steps stacked on the batch).

        Returns ``log_probs`` (B, len(steps)), ``means`` and ``stds`` (len(steps) * B rows, step-major).
        Cheaper than a pass per step for small models; the values equal :meth:`replay_step`'s up to
        float rounding of the bigger batch (bitwise equal when the kernels do not depend on batch size).
        """
        steps = [int(s) for s in steps]
        if not steps:
            raise ValueError("replay needs at least one step")
        if traj.dynamics == "ode" or not all(float(traj.noise_levels[s]) > 0 for s in steps):
            raise ValueError(f"replay of steps {steps}: every replayed step needs noise (noise_levels "
                             f"{traj.noise_levels.tolist()}, dynamics {traj.dynamics!r})")
        idx = slice(None) if index is None else index
        lat = traj.latents[idx]
        b = lat.shape[0]
        st = torch.tensor(steps, device=lat.device)
        x = lat[:, st].transpose(0, 1).reshape(len(steps) * b, *lat.shape[2:])
        x_next = lat[:, st + 1].transpose(0, 1).reshape_as(x)
        sig = traj.sigmas.to(lat.device)
        sigma = sig[st].repeat_interleave(b)
        sigma_next = sig[st + 1].repeat_interleave(b)
        level = traj.noise_levels.to(lat.device)[st].repeat_interleave(b)
        emb = traj.embeds.index(idx)
        emb = PromptEmbeds(emb.prompt_embeds.repeat(len(steps), 1, 1), emb.pooled.repeat(len(steps), 1))
        neg = None
        if traj.negative is not None:
            n = traj.negative.index(idx)
            neg = PromptEmbeds(n.prompt_embeds.repeat(len(steps), 1, 1), n.pooled.repeat(len(steps), 1))
        v = self.forward(x, sigma, emb.prompt_embeds, emb.pooled, traj.guidance, negative=neg,
                         true_cfg_scale=traj.true_cfg_scale, height=traj.height, width=traj.width)
        _, lp, mean, std = sde_step(v, x, sigma, sigma_next, level, traj.dynamics, prev_sample=x_next,
                                    sigma_max=traj.sigma_max)
        return lp.view(len(steps), b).T, mean, std

    def replay_step(
        self,
        traj: Trajectory,
        step: int,
        index: torch.Tensor | Sequence[int] | slice | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-evaluate transition ``step`` of (a subset of) a trajectory with the current weights.

        Returns ``(log_prob, mean, std)``; gradients flow into the transformer (call it under
        ``torch.no_grad()`` for a reference / old policy). Uses the same :meth:`forward` and
        :func:`sde_step` as :meth:`sample`, so unchanged weights give the stored log-prob exactly.
        """
        idx = slice(None) if index is None else index
        x = traj.latents[idx, step]
        x_next = traj.latents[idx, step + 1]
        emb = traj.embeds.index(idx)
        neg = traj.negative.index(idx) if traj.negative is not None else None
        level = float(traj.noise_levels[step])
        v = self.forward(x, traj.sigmas[step], emb.prompt_embeds, emb.pooled, traj.guidance,
                         negative=neg, true_cfg_scale=traj.true_cfg_scale, height=traj.height, width=traj.width)
        dyn = traj.dynamics if level > 0 else "ode"
        _, lp, mean, std = sde_step(v, x, traj.sigmas[step], traj.sigmas[step + 1], level, dyn,
                                    prev_sample=x_next, sigma_max=traj.sigma_max)
        return lp, mean, std
