"""Online GRPO with top-k/bottom-k filtering on a Flux generator (stage 3 of the method).

One iteration, on each rank:

1. **Rollout**: for each of this rank's prompts, a group of G samples in one batched SDE rollout
   (``FluxGenerator.sample``); rewards are computed in a background thread while the next group
   samples. A group never leaves its rank.
2. **Advantages**: per group, keep the top-k and bottom-k (``rl.advantages.compute_advantages``),
   normalise over the group or the kept subset, clip.
3. **Update** (:mod:`spatialt2i.rl.update`): the kept samples of all this rank's groups are
   replayed on the trained rollout steps in few batched passes (``FluxGenerator.replay``: all
   trained steps stacked on the batch, the same ``forward`` as the rollout, so before the first
   update the ratio is exactly 1), with the stored rollout log-probs as the old policy. PPO-clipped
   loss plus optional KL to the reference (the same network with the LoRA disabled). The loss is a
   sum over rows divided by the number of rows over all ranks, and LoRA gradients are summed over
   ranks, so W processes take exactly the step one process takes on the same groups. When the
   update is exactly the rollout's forward (one optimizer step, no KL, no LoRA dropout) and the
   model is small, the rollout keeps the autograd graph of the trained steps and the update
   backpropagates through it instead of replaying them (``train.reuse_rollout_graph``,
   :func:`reuse_rollout_graph`; same update, tested).

Every iteration's prompts and seeds are a pure function of ``(seed, iteration, group index)``;
with the optimizer and EMA state in the checkpoint a resumed run continues identically.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spatialt2i.errors import ConfigError
from spatialt2i.gen.flux import FluxGenerator, Trajectory
from spatialt2i.metrics_log import MetricsLog
from spatialt2i.rl.advantages import compute_advantages
from spatialt2i.rl.config import RLConfig
from spatialt2i.rl.checkpoint import checkpoint_dirs, read_checkpoint, write_checkpoint
from spatialt2i.rl.lora import add_lora, lora_state_dict, save_lora
from spatialt2i.rl.rewards import RewardError, Scorer
from spatialt2i.rl.update import all_sum, iteration_stats, optimizer_step, policy_update, rank_world

log = logging.getLogger(__name__)

PromptSource = Callable[[int, int], list[Any]]  # (iteration, n) -> prompts with .text and .metadata


@dataclass
class Group:
    """One prompt's G rollouts and their rewards."""

    index: int                    # global group index within the iteration
    prompt: str
    metadata: dict[str, Any]
    traj: Trajectory
    scores: dict[str, torch.Tensor] | None = None
    pending: Future | None = field(default=None, repr=False)

    def wait(self) -> "Group":
        if self.scores is None and self.pending is not None:
            self.scores = self.pending.result()
            self.pending = None
            r = self.scores["reward"]
            if r.shape != (self.traj.latents.shape[0],) or not bool(torch.isfinite(r).all()):
                raise RewardError(f"reward for group {self.index} ({self.prompt[:60]!r}): expected "
                                 f"{self.traj.latents.shape[0]} finite values, got {r.tolist()}")
        return self


def group_seeds(seed: int, iteration: int, group: int, size: int) -> list[int]:
    """Per-sample seeds of a group: independent of how groups are spread over ranks."""
    return [int(s) for s in np.random.SeedSequence([seed, iteration, group]).generate_state(size)]


GRAPH_REUSE_MAX_PARAMS = 50_000_000   # "auto" keeps rollout graphs only for models this small


def reuse_rollout_graph(tc: Any, group_size: int, lora_dropout: float, n_params: int) -> bool:
    """Whether the update backpropagates through the rollout's own graph (``train.reuse_rollout_graph``).

    Exact only when the update is one optimizer step on the rollout's weights with the rollout's
    arithmetic: one update per iteration, no KL term (it needs the reference pass anyway), no LoRA
    dropout. It then saves the forward passes of the trained steps, at the cost of holding their
    activations for the whole group from sampling to the update and of a backward pass over every
    sample (also the ones top-k drops) -- so "auto" takes it for small models (at most
    ``GRAPH_REUSE_MAX_PARAMS`` transformer parameters) when at least two thirds of the group is kept.
    """
    exact = tc.updates_per_iteration == 1 and tc.kl_coef == 0 and lora_dropout == 0
    if tc.reuse_rollout_graph == "off":
        return False
    if tc.reuse_rollout_graph == "on":
        if not exact:
            raise ConfigError("train.reuse_rollout_graph 'on' needs updates_per_iteration 1, kl_coef 0 and "
                              "lora.dropout 0 (otherwise the update is not the rollout's forward)")
        return True
    kept = group_size if tc.topk == 0 else min(group_size, 2 * tc.topk)
    return exact and 3 * kept >= 2 * group_size and n_params <= GRAPH_REUSE_MAX_PARAMS


class GRPOTrainer:
    """GRPO on ``gen``'s transformer through a LoRA adapter; see the module docstring."""

    def __init__(self, cfg: RLConfig, gen: FluxGenerator, scorer: Scorer, out_dir: str | Path | None = None,
                 prompt_source: PromptSource | None = None, eval_prompts: Sequence[Any] | None = None,
                 eval_scorer: Scorer | None = None) -> None:
        self.cfg = cfg
        self.gen = gen
        self.scorer = scorer
        self.out = Path(out_dir) if out_dir is not None else None
        self.rank, self.world = rank_world()
        self.steps = cfg.trained_steps()
        if max(self.steps) >= cfg.sample.steps:
            raise ConfigError(f"train.train_steps {self.steps} exceed sample.steps={cfg.sample.steps}")
        if prompt_source is None:
            from spatialt2i.rl.prompts import train_prompts

            def prompt_source(iteration: int, n: int) -> list[Any]:
                return train_prompts(cfg.prompts, cfg.seed, iteration, n)
        self.prompt_source = prompt_source
        self.eval_prompts = eval_prompts
        self.eval_scorer = eval_scorer
        lc = cfg.lora
        self.params = add_lora(gen.transformer, lc.rank, lc.alpha, lc.targets, lc.dropout, seed=cfg.seed)
        if cfg.train.gradient_checkpointing:
            gen.transformer.enable_gradient_checkpointing()
        if gen.device.type == "cuda" and not cfg.train.cudnn_attention:
            torch.backends.cuda.enable_cudnn_sdp(False)  # see TrainSettings.cudnn_attention
        for m in (gen.pipe.text_encoder, gen.pipe.text_encoder_2, gen.vae):
            if m is not None:
                m.requires_grad_(False)
        tc = cfg.train
        self.optimizer = torch.optim.AdamW(self.params, lr=tc.lr, betas=tuple(tc.betas),
                                           weight_decay=tc.weight_decay)
        self.ema = [p.detach().clone() for p in self.params] if tc.ema_decay > 0 else None
        self.reuse_graph = reuse_rollout_graph(tc, cfg.sample.group_size, lc.dropout,
                                               sum(p.numel() for p in gen.transformer.parameters()))
        self.iteration = 0            # iterations completed
        self.history: list[dict[str, Any]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")

    # ------------------------------------------------------------------ rollout
    def rollout_group(self, index: int, prompt: str, metadata: dict[str, Any], iteration: int) -> Group:
        """G samples of one prompt (batched), scoring submitted to the background thread."""
        sc = self.cfg.sample
        seeds = group_seeds(self.cfg.seed, iteration, index, sc.group_size)
        bs = sc.batch_size or sc.group_size
        parts, images = [], []
        for i in range(0, sc.group_size, bs):
            n = min(bs, sc.group_size - i)
            t = self.gen.sample([prompt] * n, seeds[i:i + n], steps=sc.steps, dynamics=sc.dynamics,
                                noise_level=sc.noise_level, guidance=sc.guidance,
                                true_cfg_scale=sc.true_cfg_scale, negative_prompt=sc.negative_prompt,
                                height=sc.height, width=sc.width, sde_steps=sc.sde_steps, output_type="pil",
                                grad_steps=self.steps if self.reuse_graph else ())
            images.extend(t.images)
            t.images = None
            parts.append(t)
        traj = Trajectory.cat(parts)
        group = Group(index, prompt, metadata, traj)
        group.pending = self._pool.submit(self.scorer.score, [prompt] * sc.group_size, images,
                                          [metadata] * sc.group_size)
        return group

    def rollout(self, iteration: int) -> list[Group]:
        """This rank's groups of ``iteration`` (group i goes to rank i % world), rewards filled."""
        prompts = self.prompt_source(iteration, self.cfg.prompts_per_iteration)
        groups = []
        for gi in range(self.rank, len(prompts), self.world):
            p = prompts[gi]
            groups.append(self.rollout_group(gi, p.text, dict(p.metadata), iteration))
        return [g.wait() for g in groups]

    # ------------------------------------------------------------------ update
    def advantages(self, groups: Sequence[Group]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rewards, advantages, kept mask), each (n_groups, G)."""
        tc = self.cfg.train
        rewards = torch.stack([g.scores["reward"].float() for g in groups])
        adv, mask = compute_advantages(rewards, tc.topk, tc.normalise_over, clip=tc.adv_clip)
        return rewards, adv, mask

    def update(self, groups: Sequence[Group]) -> dict[str, float]:
        """One GRPO update on this rank's ``groups`` (rewards filled); returns logging stats."""
        rewards, adv, mask = self.advantages(groups) if groups else (torch.zeros(0, 1),) * 3
        sums = policy_update(self.gen, self.steps, [g.traj for g in groups], adv, mask, self.cfg.train,
                             self._optimizer_step)
        return iteration_stats(rewards, mask, sums)

    def _optimizer_step(self) -> None:
        optimizer_step(self.params, self.optimizer, self.ema, self.cfg.train, self.world)

    # ------------------------------------------------------------------ EMA, eval
    def _swap_ema(self) -> None:
        if self.ema is None:
            return
        with torch.no_grad():
            for e, p in zip(self.ema, self.params):
                tmp = p.detach().clone()
                p.copy_(e)
                e.copy_(tmp)

    def evaluate(self) -> dict[str, Any] | None:
        """In-domain eval on the held-out prompts (rank 0 only; EMA weights if EMA is on)."""
        if self.eval_prompts is None or self.rank != 0:
            return None
        from spatialt2i.bench.indomain import evaluate

        self._swap_ema()
        try:
            res = evaluate(self.gen, self.eval_prompts, steps=self.cfg.eval_steps, seed=self.cfg.seed,
                           batch=self.cfg.eval_batch, scorer=self.eval_scorer)
        finally:
            self._swap_ema()
        return res

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dirs(self) -> list[Path]:
        return checkpoint_dirs(self.out)

    def save_checkpoint(self) -> Path | None:
        """Atomically write ``checkpoints/iter-N`` (LoRA in diffusers format + trainer state)."""
        if self.out is None or self.rank != 0:
            return None
        return write_checkpoint(self.out, self.iteration, self.gen.transformer,
                                {"iteration": self.iteration, "optimizer": self.optimizer.state_dict(),
                                 "ema": self.ema, "history": self.history, "config": asdict(self.cfg)},
                                self.cfg.keep_checkpoints)

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Restore the latest (or the given) checkpoint; False when there is none."""
        if path is None:
            dirs = self.checkpoint_dirs()
            if not dirs:
                return False
            path = dirs[-1]
        state = read_checkpoint(path, self.cfg, self.gen.transformer)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema") is not None:
            for e, v in zip(self.ema, state["ema"]):
                e.copy_(v)
        self.iteration = int(state["iteration"])
        self.history = list(state.get("history", []))
        return True

    def save_final(self) -> None:
        if self.out is None or self.rank != 0:
            return
        save_lora(self.gen.transformer, self.out / "lora")
        if self.ema is not None:
            names = list(lora_state_dict(self.gen.transformer))
            save_lora(self.gen.transformer, self.out / "lora-ema",
                      {n: e.detach().cpu() for n, e in zip(names, self.ema)})

    # ------------------------------------------------------------------ the loop
    def train(self, max_minutes: float | None = None, resume: bool = False, progress: bool = True,
              max_iterations: int | None = None) -> list[dict[str, Any]]:
        """Run until ``cfg.iterations`` (or ``max_iterations`` more, or ``max_minutes``) are done."""
        if resume and self.load_checkpoint():
            log.info("resumed at iteration %d", self.iteration)
        main = self.out is not None and self.rank == 0
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2) + "\n")
        writer = MetricsLog(self.out, active=main, purge_step=self.iteration)
        stop_at = self.cfg.iterations if max_iterations is None else min(self.cfg.iterations,
                                                                         self.iteration + max_iterations)
        t0 = time.monotonic()
        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop_at, initial=self.iteration, desc="grpo", dynamic_ncols=True)
        try:
            if self.iteration == 0 and self.cfg.eval_every:
                self._log_eval(self.evaluate(), writer)
            while self.iteration < stop_at:
                it = self.iteration
                t_it = time.monotonic()
                groups = self.rollout(it)
                t_roll = time.monotonic() - t_it
                stats = self.update(groups)
                stats.update(iteration=it + 1, rollout_s=t_roll, iteration_s=time.monotonic() - t_it)
                self.iteration += 1
                if self.cfg.eval_every and self.iteration % self.cfg.eval_every == 0:
                    ev = self.evaluate()
                    if ev is not None:
                        stats.update({f"eval/{k}": v for k, v in ev.items() if isinstance(v, float)})
                        self._log_eval(ev, writer, tensorboard=False)  # its scalars go with the stats
                self.history.append(stats)
                writer.scalars(self.iteration, {k if "/" in k else f"train/{k}": v for k, v in stats.items()
                                                if k != "iteration"})
                writer.append("metrics.jsonl", stats)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{stats['reward_mean']:.3f}", clip=f"{stats['clip_frac']:.2f}",
                                    kl=f"{stats['approx_kl']:.1e}")
                timed_out = max_minutes is not None and time.monotonic() - t0 > 60 * max_minutes
                timed_out = bool(all_sum(torch.tensor([float(timed_out)])) > 0)  # all ranks stop together
                if (self.iteration % max(self.cfg.checkpoint_every, 1) == 0 or timed_out
                        or self.iteration == stop_at):
                    self.save_checkpoint()
                if timed_out:
                    log.info("time limit of %.1f min reached at iteration %d", max_minutes, self.iteration)
                    break
            if not self.history or "eval/all_correct" not in self.history[-1]:
                self._log_eval(self.evaluate(), writer)
        finally:
            if bar is not None:
                bar.close()
            writer.close()
        self.save_final()
        return self.history

    def _log_eval(self, ev: dict[str, Any] | None, writer: MetricsLog, tensorboard: bool = True) -> None:
        """Write an eval result (iteration ``self.iteration``) to eval.jsonl and TensorBoard."""
        if ev is None:
            return
        ev = {"iteration": self.iteration, **ev}
        if tensorboard:
            writer.scalars(self.iteration, {f"eval/{k}": v for k, v in ev.items() if isinstance(v, float)})
        writer.append("eval.jsonl", ev)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
