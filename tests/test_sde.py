"""Tests for the pure SDE step (rl/sde.py)."""

from __future__ import annotations

import math

import pytest
import torch

from spatialt2i.rl.sde import DYNAMICS, sde_step

torch.set_num_threads(1)  # the box is shared; 2 spinning threads oversubscribe it

B, SHAPE = 3, (3, 16, 8)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


@pytest.mark.parametrize("dynamics", ["flow_sde", "dance_sde", "cps"])
def test_log_prob_matches_torch_normal(dynamics: str) -> None:
    v, x = _inputs()
    sigma = torch.tensor([0.9, 0.6, 0.3])
    out, lp, mean, std = sde_step(v, x, sigma, sigma - 0.2, 0.7, dynamics,
                                  generator=torch.Generator().manual_seed(1))
    assert lp.shape == (B,) and out.shape == x.shape
    ref = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(out).mean(dim=(1, 2))
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-5)
    assert torch.all(std > 0)


@pytest.mark.parametrize("dynamics", DYNAMICS)
def test_replay_gives_same_log_prob(dynamics: str) -> None:
    v, x = _inputs()
    out, lp, mean, _ = sde_step(v, x, 0.8, 0.55, 0.9, dynamics, generator=torch.Generator().manual_seed(3))
    out2, lp2, mean2, _ = sde_step(v, x, 0.8, 0.55, 0.9, dynamics, prev_sample=out)
    assert torch.equal(lp, lp2) and torch.equal(mean, mean2) and torch.equal(out, out2)


def test_ode_is_euler_step_and_zero_log_prob() -> None:
    v, x = _inputs()
    out, lp, mean, std = sde_step(v, x, 0.75, 0.5, 0.9, "ode")
    assert torch.equal(out, x + (0.5 - 0.75) * v)
    assert torch.equal(out, mean)
    assert torch.all(std == 0) and torch.all(lp == 0)


def test_ode_matches_diffusers_scheduler_step() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(4)
    v, x = _inputs()
    t = sched.timesteps[1]
    ref = sched.step(v, t, x, return_dict=False)[0]  # finds step index 1 from t
    out, *_ = sde_step(v, x, sched.sigmas[1], sched.sigmas[2], 0.0, "ode")
    assert torch.equal(out, ref)


def test_flow_sde_std_formula_and_sigma_max() -> None:
    v, x = _inputs()
    _, _, _, std = sde_step(v, x, 0.5, 0.25, 0.7, "flow_sde")
    expected = 0.7 * math.sqrt(0.5 / 0.5) * math.sqrt(0.25)
    assert torch.allclose(std, torch.full_like(std, expected))
    with pytest.raises(ValueError, match="sigma_max"):
        sde_step(v, x, 1.0, 0.8, 0.7, "flow_sde")
    _, lp, _, std1 = sde_step(v, x, 1.0, 0.8, 0.7, "flow_sde", sigma_max=0.8,
                              generator=torch.Generator().manual_seed(0))
    expected1 = 0.7 * math.sqrt(1.0 / (1 - 0.8)) * math.sqrt(0.2)
    assert torch.allclose(std1, torch.full_like(std1, expected1)) and torch.isfinite(lp).all()


def test_flow_sde_mean_reduces_to_ode_without_noise() -> None:
    v, x = _inputs()
    _, _, mean_sde, _ = sde_step(v, x, 0.6, 0.3, 0.0, "flow_sde")
    _, _, mean_ode, _ = sde_step(v, x, 0.6, 0.3, 0.0, "ode")
    torch.testing.assert_close(mean_sde, mean_ode)


def test_dance_sde_mean_formula() -> None:
    v, x = _inputs()
    a, s, sn = 0.5, 0.7, 0.4
    _, _, mean, std = sde_step(v, x, s, sn, a, "dance_sde")
    x0 = x - s * v
    expected = x + (sn - s) * v + 0.5 * a**2 * (x - (1 - s) * x0) / s**2 * (sn - s)
    torch.testing.assert_close(mean, expected)
    assert torch.allclose(std, torch.full_like(std, a * math.sqrt(s - sn)))


def test_cps_preserves_coefficients() -> None:
    # with the exact x0 and noise, a CPS step lands on (1 - s') x0 + s' * (unit-variance noise)
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    s, sn, a = 0.8, 0.5, 0.6
    x = (1 - s) * x0 + s * eps
    v = eps - x0
    _, _, mean, std = sde_step(v, x, s, sn, a, "cps")
    std_val = sn * math.sin(a * math.pi / 2)
    torch.testing.assert_close(mean, (1 - sn) * x0 + math.sqrt(sn**2 - std_val**2) * eps)
    # mean coefficient^2 + std^2 on the noise equals sn^2: variance preserved
    assert math.isclose((math.sqrt(sn**2 - std_val**2)) ** 2 + std_val**2, sn**2)
    # last step (sigma_next = 0) is deterministic: std 0, log_prob 0, sample = x0
    out, lp, _, std0 = sde_step(v, x, s, 0.0, a, "cps", generator=g)
    torch.testing.assert_close(out, x0)
    assert torch.all(std0 == 0) and torch.all(lp == 0)


def test_sampled_noise_has_the_stated_std() -> None:
    x = torch.zeros(4, 64, 64)
    v = torch.zeros_like(x)
    out, _, mean, std = sde_step(v, x, 0.5, 0.3, 0.8, "dance_sde", generator=torch.Generator().manual_seed(0))
    z = (out - mean) / std
    assert abs(z.std().item() - 1) < 0.02 and abs(z.mean().item()) < 0.02


def test_per_sample_sigmas_and_generators_broadcast() -> None:
    v, x = _inputs()
    sig = torch.tensor([0.9, 0.5, 0.2])
    gens = [torch.Generator().manual_seed(i) for i in range(B)]
    out, lp, _, std = sde_step(v, x, sig, sig - 0.1, torch.tensor([0.5, 0.7, 0.9]), "flow_sde", generator=gens)
    assert std.shape == (B, 1, 1) and lp.shape == (B,)
    # sample i depends only on its own generator and sigma
    out1, lp1, _, _ = sde_step(v[1:2], x[1:2], 0.5, 0.4, 0.7, "flow_sde", generator=[torch.Generator().manual_seed(1)])
    torch.testing.assert_close(out[1:2], out1)
    torch.testing.assert_close(lp[1:2], lp1)


def test_log_prob_gradient_flows_through_velocity_only() -> None:
    v, x = _inputs()
    v = v.clone().requires_grad_(True)
    out, lp, _, _ = sde_step(v, x, 0.7, 0.4, 0.7, "flow_sde", generator=torch.Generator().manual_seed(0))
    assert not out.requires_grad
    lp.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_fp32_even_for_bf16_inputs() -> None:
    v, x = _inputs()
    out, lp, mean, std = sde_step(v.bfloat16(), x.bfloat16(), 0.7, 0.4, 0.7, "flow_sde",
                                  generator=torch.Generator().manual_seed(0))
    assert out.dtype == lp.dtype == mean.dtype == std.dtype == torch.float32


def test_bad_inputs_raise() -> None:
    v, x = _inputs()
    with pytest.raises(ValueError, match="unknown dynamics"):
        sde_step(v, x, 0.5, 0.3, 0.7, "euler")
    with pytest.raises(ValueError, match="sigma_next"):
        sde_step(v, x, 0.3, 0.5, 0.7, "flow_sde")
    with pytest.raises(ValueError, match="entries"):
        sde_step(v, x, torch.tensor([0.5, 0.4]), 0.3, 0.7, "flow_sde")
    with pytest.raises(ValueError, match="prev_sample shape"):
        sde_step(v, x, 0.5, 0.3, 0.7, "flow_sde", prev_sample=x[:1])
