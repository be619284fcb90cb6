"""What a generator's sampler hands to RL: prompt embeddings and sampled trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class PromptEmbeds:
    """T5 sequence embeddings (B, T, D) and CLIP pooled embeddings (B, P) of a batch of prompts."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def index(self, idx: torch.Tensor | Sequence[int] | slice) -> "PromptEmbeds":
        return PromptEmbeds(self.prompt_embeds[idx], self.pooled[idx])

    def repeat_interleave(self, n: int) -> "PromptEmbeds":
        return PromptEmbeds(self.prompt_embeds.repeat_interleave(n, 0), self.pooled.repeat_interleave(n, 0))


def _stack_with_grad(parts: list[torch.Tensor]) -> torch.Tensor | None:
    with torch.enable_grad():   # under sample()'s no_grad a plain stack would cut the graph
        return torch.stack(parts, 1) if parts else None


@dataclass
class Trajectory:
    """A batch of sampled trajectories.

    ``latents``: (B, S + 1, seq, C) packed fp32 latents, ``latents[:, 0]`` the initial noise and
    ``latents[:, -1]`` the final sample; ``log_probs``: (B, S) log-prob of each transition
    (0 for deterministic steps); ``sigmas``: (S + 1,) with ``sigmas[-1] == 0``;
    ``noise_levels``: (S,) the noise level used at each step (0 outside the SDE window).
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    noise_levels: torch.Tensor
    dynamics: str
    embeds: PromptEmbeds
    guidance: float | None
    height: int
    width: int
    negative: PromptEmbeds | None = None
    true_cfg_scale: float = 1.0
    images: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    # (B, len(grad_steps)) log-probs of the steps sampled with ``grad_steps``, still attached to the
    # autograd graph of the rollout's forward passes (None otherwise)
    graph_log_probs: torch.Tensor | None = None

    @classmethod
    def cat(cls, parts: Sequence["Trajectory"]) -> "Trajectory":
        """Concatenate trajectories that share the schedule (sigmas, noise levels, guidance, size); no images."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        both = lambda get: PromptEmbeds(torch.cat([get(p).prompt_embeds for p in parts]),  # noqa: E731
                                        torch.cat([get(p).pooled for p in parts]))
        graph = [p.graph_log_probs for p in parts]
        return cls(latents=torch.cat([p.latents for p in parts]), log_probs=torch.cat([p.log_probs for p in parts]),
                   sigmas=first.sigmas, noise_levels=first.noise_levels, dynamics=first.dynamics,
                   embeds=both(lambda p: p.embeds), guidance=first.guidance, height=first.height,
                   width=first.width, negative=both(lambda p: p.negative) if first.negative is not None else None,
                   true_cfg_scale=first.true_cfg_scale,
                   graph_log_probs=torch.cat(graph) if all(g is not None for g in graph) else None)

    def select(self, idx: torch.Tensor) -> "Trajectory":
        """The rows ``idx`` (no images)."""
        return Trajectory(latents=self.latents[idx], log_probs=self.log_probs[idx], sigmas=self.sigmas,
                          noise_levels=self.noise_levels, dynamics=self.dynamics, embeds=self.embeds.index(idx),
                          guidance=self.guidance, height=self.height, width=self.width,
                          negative=self.negative.index(idx) if self.negative is not None else None,
                          true_cfg_scale=self.true_cfg_scale,
                          graph_log_probs=None if self.graph_log_probs is None else self.graph_log_probs[idx])

    @property
    def num_steps(self) -> int:
        return self.sigmas.shape[0] - 1

    @property
    def sigma_max(self) -> float:
        """The schedule's second sigma: Flow-GRPO's stand-in for sigma = 1 in the flow_sde std."""
        return float(self.sigmas[1]) if self.num_steps > 1 else 0.5
