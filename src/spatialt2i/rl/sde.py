r"""One reverse step of a flow-matching sampler as a Gaussian transition, with its log-density.

Convention (diffusers / FLUX): ``x_sigma = (1 - sigma) * x0 + sigma * noise``, sigma runs from
~1 (noise) down to 0 (data), the model predicts the velocity ``v = noise - x0``. A step goes from
``sigma`` to ``sigma_next < sigma``; ``dt = sigma_next - sigma < 0``. Every variant samples
``x_next = mean + std * eps`` with ``eps ~ N(0, I)``; ``std`` returned here is the standard
deviation of that transition (not the SDE's diffusion coefficient), so that
``log_prob == Normal(mean, std).log_prob(x_next).mean(non-batch dims)``.

Dynamics (``a`` = ``noise_level``):

``ode``
    Euler step of the probability-flow ODE, exactly as diffusers'
    ``FlowMatchEulerDiscreteScheduler.step``: ``mean = x + dt * v``, ``std = 0``.
``flow_sde`` (Flow-GRPO, Liu et al. 2025, eq. 9)
    diffusion coefficient ``s = a * sqrt(sigma / (1 - sigma))``, where a ``sigma`` equal to 1 is
    replaced in the denominator by ``sigma_max`` (the schedule's second sigma, as Flow-GRPO does;
    required when some sigma is 1);
    ``mean = x * (1 + s^2 / (2 sigma) * dt) + v * (1 + s^2 (1 - sigma) / (2 sigma)) * dt``,
    ``std = s * sqrt(-dt)``.
``dance_sde`` (DanceGRPO, Xue et al. 2025, ``flux_step`` with ``sde_solver``)
    ``x0 = x - sigma * v``, score ``= -(x - (1 - sigma) x0) / sigma^2``,
    ``mean = x + dt * (v - a^2 / 2 * score)``, ``std = a * sqrt(-dt)``.
``cps`` (coefficients-preserving sampling, Flow-CPS, Wang & Yu 2025; Flow-Factory's ``CPS``)
    ``x0 = x - sigma * v``, ``x1 = x + (1 - sigma) * v`` (predicted noise),
    ``std = sigma_next * sin(a * pi / 2)``,
    ``mean = (1 - sigma_next) * x0 + sqrt(sigma_next^2 - std^2) * x1``,
    so that the sample keeps the coefficients of ``x_{sigma_next}`` exactly.
    (Flow-Factory's CPS log-prob drops the ``1/(2 std^2)`` scale and the normaliser; here it is
    the true Gaussian log-density like the other variants.)

``log_prob`` is the Gaussian log-density of ``x_next`` given ``mean`` and ``std``, averaged over
all non-batch dimensions, in fp32. ``x_next`` enters detached (the gradient flows through
``mean`` only, as in Flow-GRPO). Where ``std == 0`` (``ode``, ``noise_level == 0``, ``cps`` at
``sigma_next == 0``) the step is deterministic: ``x_next = mean`` when sampling, and
``log_prob = 0`` for that batch element.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

Dynamics = Literal["flow_sde", "dance_sde", "cps", "ode"]
DYNAMICS: tuple[str, ...] = ("flow_sde", "dance_sde", "cps", "ode")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

Scalar = float | torch.Tensor


def _per_batch(value: Scalar, ref: torch.Tensor, name: str) -> torch.Tensor:
    """``value`` (python number, 0-d, (B,) or already broadcastable) as fp32 of shape (B, 1, ..., 1)."""
    t = torch.as_tensor(value, dtype=torch.float32, device=ref.device)
    if t.ndim == 0:
        return t.reshape((1,) * ref.ndim)
    if t.ndim == 1:
        if t.shape[0] not in (1, ref.shape[0]):
            raise ValueError(f"{name} has {t.shape[0]} entries but the batch has {ref.shape[0]}")
        return t.reshape((-1,) + (1,) * (ref.ndim - 1))
    if t.ndim == ref.ndim:
        return t
    raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast over a sample of shape "
                     f"{tuple(ref.shape)}")


def _noise(like: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (fp32); a list of generators gives one per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else like.device
        eps = torch.randn(like.shape, generator=generator, dtype=torch.float32, device=gen_device)
        return eps.to(like.device)
    gens = list(generator)
    if len(gens) != like.shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {like.shape[0]}")
    return torch.stack([torch.randn(like.shape[1:], generator=g, dtype=torch.float32,
                                    device=g.device).to(like.device) for g in gens])


def mean_and_std(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise_level: torch.Tensor,
    dynamics: str,
    sigma_max: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the transition ``x_sigma -> x_sigma_next``; inputs fp32 and broadcastable."""
    dt = sigma_next - sigma
    if dynamics == "ode":
        return sample + dt * velocity, torch.zeros_like(sigma * sigma_next)
    if dynamics == "flow_sde":
        at_one = sigma == 1
        if bool(at_one.any()):
            if sigma_max is None:
                raise ValueError("flow_sde at sigma == 1 needs sigma_max (the schedule's second sigma)")
            denom = 1 - torch.where(at_one, sigma_max, sigma)
        else:
            denom = 1 - sigma
        s = noise_level * torch.sqrt(sigma / denom)
        mean = (sample * (1 + s**2 / (2 * sigma) * dt)
                + velocity * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt)
        return mean, s * torch.sqrt(-dt)
    if dynamics == "dance_sde":
        x0 = sample - sigma * velocity
        score = -(sample - (1 - sigma) * x0) / sigma**2
        mean = sample + dt * (velocity - 0.5 * noise_level**2 * score)
        return mean, noise_level * torch.sqrt(-dt)
    if dynamics == "cps":
        std = sigma_next * torch.sin(noise_level * (math.pi / 2))
        x0 = sample - sigma * velocity
        x1 = sample + (1 - sigma) * velocity
        coef = torch.sqrt(torch.clamp(sigma_next**2 - std**2, min=0.0))
        return (1 - sigma_next) * x0 + coef * x1, std
    raise ValueError(f"unknown dynamics {dynamics!r}; expected one of {', '.join(DYNAMICS)}")


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``Normal(mean, std).log_prob(x)`` averaged over non-batch dims; 0 where ``std == 0``."""
    positive = std > 0
    safe = torch.where(positive, std, torch.ones_like(std))
    lp = -((x - mean) ** 2) / (2 * safe**2) - torch.log(safe) - _HALF_LOG_2PI
    lp = torch.where(positive, lp, torch.zeros_like(lp))
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def sde_step(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: Scalar,
    sigma_next: Scalar,
    noise_level: Scalar,
    dynamics: str = "flow_sde",
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    sigma_max: Scalar | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step ``sigma -> sigma_next``; returns ``(prev_sample, log_prob, mean, std)`` in fp32.

    ``velocity`` and ``sample`` have shape (B, ...); ``sigma``, ``sigma_next``, ``noise_level``
    and ``sigma_max`` are numbers, 0-d or (B,) tensors. With ``prev_sample`` given (training
    replay) nothing is sampled and its log-prob is evaluated; otherwise ``prev_sample`` is drawn
    with ``generator``. ``log_prob`` has shape (B,); ``std`` broadcasts against the sample.
    See the module docstring for each ``dynamics``' formulas.
    """
    if dynamics not in DYNAMICS:
        raise ValueError(f"unknown dynamics {dynamics!r}; expected one of {', '.join(DYNAMICS)}")
    if velocity.shape != sample.shape:
        raise ValueError(f"velocity shape {tuple(velocity.shape)} != sample shape {tuple(sample.shape)}")
    v = velocity.float()
    x = sample.float()
    s = _per_batch(sigma, x, "sigma")
    s_next = _per_batch(sigma_next, x, "sigma_next")
    a = _per_batch(0.0 if dynamics == "ode" else noise_level, x, "noise_level")
    s_max = None if sigma_max is None else _per_batch(sigma_max, x, "sigma_max")
    if bool((s_next > s).any()):
        raise ValueError("sigma_next must not exceed sigma (sampling runs from noise to data)")

    mean, std = mean_and_std(v, x, s, s_next, a, dynamics, s_max)
    std = std.expand_as(mean[(slice(None),) + (slice(0, 1),) * (mean.ndim - 1)])
    if prev_sample is None:
        if bool((std > 0).any()):
            prev_sample = mean + std * _noise(mean, generator)
        else:
            prev_sample = mean
        prev_sample = prev_sample.detach()
    elif prev_sample.shape != mean.shape:
        raise ValueError(f"prev_sample shape {tuple(prev_sample.shape)} != sample shape {tuple(mean.shape)}")
    log_prob = gaussian_log_prob(prev_sample.detach().float(), mean, std)
    return prev_sample.float(), log_prob, mean, std
