"""The GRPO policy update and its per-iteration statistics (step 3 of :mod:`spatialt2i.rl.trainer`).

- :func:`policy_update`: the PPO-clipped loss (plus optional KL to the LoRA-disabled reference)
  over the kept samples of this rank's groups, replayed on the trained steps with
  ``FluxGenerator.replay`` (or backpropagated through the rollout's own graph when the rollout kept
  it), split into ``train.updates_per_iteration`` optimizer steps. The loss is a sum over rows
  divided by the number of rows over all ranks, so W processes take exactly the step one process
  takes on the same groups.
- :func:`optimizer_step`: LoRA gradients summed over ranks, clipped, one optimizer step, EMA.
- :func:`iteration_stats`: the loss terms and reward figures of an iteration, reduced over ranks.
- :func:`rank_world` and :func:`all_sum`: the two collectives the trainer needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from spatialt2i.gen.flux import FluxGenerator, Trajectory
from spatialt2i.rl.advantages import gaussian_kl_same_std, grpo_clipped_loss, zero_std_groups
from spatialt2i.rl.config import TrainSettings
from spatialt2i.rl.lora import adapter_disabled


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of a small CPU tensor over ranks (through the GPU when the backend is NCCL)."""
    if rank_world()[1] > 1:
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
        buf = t.to(dev, copy=True)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        t = buf.to(t.device)
    return t


def policy_update(gen: FluxGenerator, steps: Sequence[int], trajs: Sequence[Trajectory], adv: torch.Tensor,
                  mask: torch.Tensor, tc: TrainSettings, step: Callable[[], None]) -> dict[str, float]:
    """Accumulate the GRPO loss of the kept samples and call ``step`` once per optimizer step.

    ``trajs``, ``adv`` and ``mask`` are this rank's groups (``adv``/``mask`` are (n_groups, G));
    with no groups the rank still takes part in every step's collectives. Returns the row-weighted
    sums of the loss terms and the row count, for :func:`iteration_stats`.
    """
    kept = [torch.nonzero(m).flatten() for m in mask]
    if trajs:
        batch = Trajectory.cat([t.select(k) for t, k in zip(trajs, kept)])
        batch_adv = torch.cat([a[k] for a, k in zip(adv, kept)])
    n_steps = len(steps)
    # optimizer step u trains on the u-th slice of every group's kept samples, so the split does
    # not depend on how groups are spread over ranks; global rows per step for the loss scale
    offsets = np.cumsum([0] + [len(k) for k in kept])
    chunks = [torch.cat([torch.arange(offsets[i], offsets[i + 1]).tensor_split(tc.updates_per_iteration)[u]
                         for i in range(len(kept))]) if kept else torch.zeros(0, dtype=torch.long)
              for u in range(tc.updates_per_iteration)]
    rows_global = all_sum(torch.tensor([len(c) * n_steps for c in chunks], dtype=torch.float64))
    sums = {"loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "approx_kl": 0.0,
            "ratio": 0.0, "rows": 0.0}
    gen.transformer.train()
    for ci, chunk in enumerate(chunks):
        denom = float(rows_global[ci])
        if denom == 0:
            continue
        if tc.kl_coef == 0 and len(chunk):
            # a zero advantage contributes no gradient (zero-std groups, ties at the mean):
            # skip those rows' passes; they still count in the denominator like in a full pass
            chunk = chunk[batch_adv[chunk] != 0]
        graph = batch.graph_log_probs if trajs else None
        # the rollout's own graph (reuse_graph): one backward over all rows, no forward pass again
        mb = len(chunk) if graph is not None else (tc.micro_batch or max(len(chunk), 1))
        for start in range(0, len(chunk), max(mb, 1)):
            idx = chunk[start:start + mb]
            rows = len(idx) * n_steps
            if graph is not None:
                lp, mean, std = graph[idx], None, None
            else:
                lp, mean, std = gen.replay(batch, steps, index=idx)
            old = batch.log_probs[idx][:, steps]
            a = batch_adv[idx, None].to(lp.device).expand_as(lp)
            policy, st = grpo_clipped_loss(lp, old, a, tc.clip_range)
            loss = policy
            kl = torch.zeros(())
            if tc.kl_coef > 0:
                with torch.no_grad(), adapter_disabled(gen.transformer):
                    _, ref_mean, _ = gen.replay(batch, steps, index=idx)
                kl = gaussian_kl_same_std(mean, ref_mean, std).mean()
                loss = loss + tc.kl_coef * kl
            (loss * (rows / denom)).backward()
            for key, val in (("loss", loss), ("policy_loss", policy), ("kl", kl), *st.items()):
                sums[key] += float(val.detach()) * rows
            sums["rows"] += rows
        step()
    gen.transformer.eval()
    return sums


def optimizer_step(params: Sequence[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                   ema: Sequence[torch.Tensor] | None, tc: TrainSettings, world: int) -> None:
    """Sum the LoRA gradients over ``world`` ranks, clip, step, zero the gradients, update the EMA."""
    if world > 1:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        off = 0
        for p in params:
            n = p.numel()
            p.grad = flat[off:off + n].view_as(p).clone()
            off += n
    if tc.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        d = tc.ema_decay
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(d).add_(p.detach(), alpha=1 - d)


def iteration_stats(rewards: torch.Tensor, mask: torch.Tensor, sums: dict[str, float]) -> dict[str, float]:
    """Per-row means of ``sums`` and the reward figures (all, kept, zero-std groups) over all ranks."""
    tot = all_sum(torch.tensor(list(sums.values()), dtype=torch.float64)).tolist()
    sums = dict(zip(sums, tot))
    rows = max(sums.pop("rows"), 1.0)
    out = {k: v / rows for k, v in sums.items()}
    r = rewards.double()
    m = mask.double()
    flat = torch.tensor([r.sum(), (r * r).sum(), r.numel(), (r * m).sum(), (r * r * m).sum(), m.sum(),
                         float(zero_std_groups(rewards).sum()) if rewards.numel() else 0.0,
                         float(r.shape[0])], dtype=torch.float64)
    s, s2, n, ks, ks2, kn, zero, ng = all_sum(flat).tolist()
    out["reward_mean"] = s / max(n, 1)
    out["reward_std"] = math.sqrt(max(s2 / max(n, 1) - out["reward_mean"] ** 2, 0.0))
    out["kept_reward_mean"] = ks / max(kn, 1)
    out["kept_reward_std"] = math.sqrt(max(ks2 / max(kn, 1) - out["kept_reward_mean"] ** 2, 0.0))
    out["kept_samples"] = kn
    out["zero_std_groups"] = zero
    out["groups"] = ng
    return out
