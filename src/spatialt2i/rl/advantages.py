r"""Group-relative advantages, top-k/bottom-k selection and the PPO-clipped GRPO loss (pure torch).

Rewards of one prompt's group of G samples sit on the last dim: shape (G,) or (N, G).

- **Selection** (the paper's top-k filtering): rank the group by reward and keep the k best and
  the k worst; ``k = 0`` keeps all. ``k > G / 2`` is an error (the two halves would overlap).
  Ties are broken by position (stable sort), so the selection is deterministic.
- **Advantages**: ``A_i = (r_i - mean) / (std + eps)``, where mean and the population std
  (``ddof = 0``, as Flow-GRPO's ``np.std``) are taken over the whole group (``over="group"``) or
  over the kept subset only (``over="kept"``); the paper does not say which. Samples that are not
  kept get advantage 0. A group whose rewards are all equal (zero std) gets all-zero advantages.
  Optional clipping to ``[-clip, clip]``.
- **Loss** (Flow-GRPO / PPO): ``ratio = exp(logp - logp_old)``,
  ``loss = mean(max(-A * ratio, -A * clamp(ratio, 1 - eps_c, 1 + eps_c)))``.
- **KL to the reference**: ``kl_k3`` is Schulman's k3 estimator
  ``exp(lr) - 1 - lr`` with ``lr = logp_ref - logp`` (non-negative, unbiased for KL(pi || ref));
  note that the log-probs here are *averaged* over dimensions, so it estimates KL / D.
  ``gaussian_kl_same_std`` is the exact per-dimension KL between two transitions of equal std,
  ``(mean - mean_ref)^2 / (2 std^2)`` averaged over non-batch dims (Flow-GRPO's KL loss).
  ``approx_kl_old`` is the logging quantity ``0.5 * mean((logp - logp_old)^2)``.
"""

from __future__ import annotations

from typing import Literal

import torch

NormaliseOver = Literal["group", "kept"]


def check_topk(k: int, group_size: int) -> None:
    """Raise ``ValueError`` unless ``0 <= k <= group_size / 2``."""
    if k < 0:
        raise ValueError(f"top-k k must be >= 0 (0 keeps the whole group), got k={k}")
    if 2 * k > group_size:
        raise ValueError(f"top-k k={k} exceeds half the group size G={group_size}: "
                         f"top-{k} and bottom-{k} would overlap (need k <= G/2)")


def topk_bottomk_mask(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (same shape as ``rewards``) of the k highest and k lowest rewards per group."""
    group_size = rewards.shape[-1]
    check_topk(k, group_size)
    if k == 0:
        return torch.ones_like(rewards, dtype=torch.bool)
    order = torch.argsort(rewards, dim=-1, stable=True)  # ascending
    chosen = torch.cat([order[..., :k], order[..., group_size - k:]], dim=-1)
    mask = torch.zeros_like(rewards, dtype=torch.bool)
    return mask.scatter(-1, chosen, True)


def zero_std_groups(rewards: torch.Tensor, mask: torch.Tensor | None = None, tol: float = 0.0) -> torch.Tensor:
    """True for each group whose (kept) rewards all lie within ``tol`` of each other."""
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    big = torch.finfo(rewards.dtype).max
    hi = torch.where(mask, rewards, torch.full_like(rewards, -big)).amax(dim=-1)
    lo = torch.where(mask, rewards, torch.full_like(rewards, big)).amin(dim=-1)
    return (hi - lo) <= tol


def group_normalise(rewards: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-4) -> torch.Tensor:
    """``(r - mean) / (std + eps)`` per group, mean/std (ddof 0) over ``mask`` (default all).

    Entries outside ``mask`` get 0.
    """
    r = rewards.float()
    m = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.bool()
    w = m.float()
    n = w.sum(dim=-1, keepdim=True)
    if bool((n == 0).any()):
        raise ValueError("a group has no kept samples to normalise over")
    mean = (r * w).sum(dim=-1, keepdim=True) / n
    var = (((r - mean) ** 2) * w).sum(dim=-1, keepdim=True) / n
    adv = (r - mean) / (var.sqrt() + eps)
    return torch.where(m, adv, torch.zeros_like(adv))


def clip_advantages(advantages: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Clamp to ``[-clip, clip]``; ``None`` or a non-positive clip leaves them unchanged."""
    if clip is None or clip <= 0:
        return advantages
    return advantages.clamp(-clip, clip)


def compute_advantages(
    rewards: torch.Tensor,
    k: int = 0,
    over: NormaliseOver = "group",
    eps: float = 1e-4,
    clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and kept-mask for groups of rewards (last dim = group).

    ``k``: keep the top-k and bottom-k (0 = all). ``over``: normalise over the whole ``"group"``
    or over the ``"kept"`` subset. Zero-std groups get zero advantages; unkept samples get 0.
    """
    if over not in ("group", "kept"):
        raise ValueError(f"over must be 'group' or 'kept', got {over!r}")
    mask = topk_bottomk_mask(rewards, k)
    adv = group_normalise(rewards, mask if over == "kept" else None, eps)
    degenerate = zero_std_groups(rewards, mask if over == "kept" else None)
    adv = torch.where(degenerate.unsqueeze(-1), torch.zeros_like(adv), adv)
    adv = torch.where(mask, adv, torch.zeros_like(adv))
    return clip_advantages(adv, clip), mask


def grpo_clipped_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clipped policy loss on per-sample log-probs; returns ``(loss, stats)``.

    ``stats``: ``ratio`` (mean), ``clip_frac`` (share of samples whose ratio left the clip
    range), ``approx_kl`` (``approx_kl_old``), all detached.
    """
    if not (log_prob.shape == old_log_prob.shape == advantages.shape):
        raise ValueError(f"shapes differ: log_prob {tuple(log_prob.shape)}, old_log_prob "
                         f"{tuple(old_log_prob.shape)}, advantages {tuple(advantages.shape)}")
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "ratio": ratio.mean(),
            "clip_frac": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "approx_kl": approx_kl_old(log_prob, old_log_prob),
        }
    return loss, stats


def approx_kl_old(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """``0.5 * mean((logp - logp_old)^2)``: the usual PPO logging estimate of KL(old || new)."""
    return 0.5 * ((log_prob - old_log_prob) ** 2).mean()


def kl_k3(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """Per-sample k3 estimate of KL(pi || ref): ``exp(lr) - 1 - lr``, ``lr = logp_ref - logp``."""
    lr = ref_log_prob - log_prob
    return torch.exp(lr) - 1.0 - lr


def gaussian_kl_same_std(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample exact KL between N(mean, std) and N(ref_mean, std), averaged over non-batch dims.

    Zero where ``std == 0`` (deterministic transitions carry no KL term).
    """
    positive = std > 0
    safe = torch.where(positive, std, torch.ones_like(std))
    kl = (mean - ref_mean) ** 2 / (2 * safe**2)
    kl = torch.where(positive, kl, torch.zeros_like(kl))
    return kl.mean(dim=tuple(range(1, kl.ndim)))
