"""The reward losses: BT on mu, the Gaussian BT in its three forms, accuracy helpers."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from spatialt2i.reward.losses import (bt_loss, diff_moments, gaussian_bt_loss, gaussian_bt_prob, grouped_accuracy,
                                      pairwise_accuracy, quadrature_prob)

D = torch.float64


def _t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=D)


def _exact(m: float, v: float) -> float:
    """E[sigmoid(d)], d ~ N(m, v), by adaptive numerical integration (scipy)."""
    if v == 0:
        return 1 / (1 + math.exp(-m))
    s = math.sqrt(v)
    f = lambda d: 1 / (1 + math.exp(-d)) * math.exp(-(d - m) ** 2 / (2 * v)) / (s * math.sqrt(2 * math.pi))  # noqa: E731
    return integrate.quad(f, m - 12 * s, m + 12 * s, epsabs=1e-12, limit=200)[0]


def test_bt_loss_known_values() -> None:
    assert bt_loss(_t(0.0), _t(0.0)).item() == pytest.approx(math.log(2))
    assert bt_loss(_t(1.0), _t(0.0)).item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert bt_loss(_t(30.0), _t(0.0)).item() < 1e-12
    assert bt_loss(_t(0.0, 2.0), _t(0.0, 0.0)).item() == pytest.approx((math.log(2) + math.log(1 + math.exp(-2))) / 2)


@pytest.mark.parametrize("m,v,tol", [(0.0, 1.0, 1e-6), (1.0, 0.5, 1e-6), (-2.0, 3.0, 1e-6), (3.0, 10.0, 1e-6),
                                     (0.5, 0.01, 1e-6), (5.0, 40.0, 1e-4)])
def test_quadrature_matches_numerical_integration(m: float, v: float, tol: float) -> None:
    assert quadrature_prob(_t(m), _t(v)).item() == pytest.approx(_exact(m, v), abs=tol)


def test_probit_close_to_quadrature_on_a_grid() -> None:
    m = torch.linspace(-8, 8, 81, dtype=D).repeat_interleave(41)
    log_s = torch.linspace(-4, 1.5, 41, dtype=D).repeat(81)   # sigma_c = sigma_r in [0.02, 4.5]
    zero = torch.zeros_like(m)
    p_probit = gaussian_bt_prob(m, log_s, zero, log_s, "probit")
    p_quad = gaussian_bt_prob(m, log_s, zero, log_s, "quadrature")
    err = (p_probit - p_quad).abs().max().item()
    assert err < 0.02, err
    assert err > 1e-4  # it is an approximation, not the same computation


def test_mc_agrees_with_quadrature() -> None:
    g = torch.Generator().manual_seed(0)
    mu_c, ls_c, mu_r, ls_r = _t(1.0, -0.5, 2.0), _t(0.0, 0.5, -1.0), _t(0.0, 0.5, 0.0), _t(-0.5, 0.2, 0.3)
    p_mc = gaussian_bt_prob(mu_c, ls_c, mu_r, ls_r, "mc", n_samples=200_000, generator=g)
    p_q = gaussian_bt_prob(mu_c, ls_c, mu_r, ls_r, "quadrature")
    assert torch.allclose(p_mc, p_q, atol=3e-3), (p_mc, p_q)
    l_mc = gaussian_bt_loss(mu_c, ls_c, mu_r, ls_r, "mc", n_samples=200_000, generator=g)
    l_probit = gaussian_bt_loss(mu_c, ls_c, mu_r, ls_r, "probit")
    assert l_mc.item() == pytest.approx(l_probit.item(), abs=0.02)


@pytest.mark.parametrize("method", ["probit", "quadrature", "mc"])
def test_gaussian_bt_symmetry_and_small_sigma_limit(method: str) -> None:
    g = torch.Generator().manual_seed(1)
    # equal means: P = 1/2 whatever the variances (d is symmetric about 0)
    p = gaussian_bt_prob(_t(0.3), _t(1.0), _t(0.3), _t(-1.0), method, n_samples=100_000, generator=g)
    assert p.item() == pytest.approx(0.5, abs=5e-3)
    # sigma -> 0: reduces to plain BT on mu
    tiny = _t(-12.0, -12.0)
    loss = gaussian_bt_loss(_t(1.0, -2.0), tiny, _t(0.0, 0.5), tiny, method, n_samples=16, generator=g)
    assert loss.item() == pytest.approx(bt_loss(_t(1.0, -2.0), _t(0.0, 0.5)).item(), abs=1e-6)


def test_uncertainty_pulls_probability_towards_half() -> None:
    m = _t(2.0)
    lo, hi = gaussian_bt_prob(m, _t(-3.0), _t(0.0), _t(-3.0)), gaussian_bt_prob(m, _t(1.0), _t(0.0), _t(1.0))
    assert 0.5 < hi.item() < lo.item()
    mean, var = diff_moments(m, _t(1.0), _t(0.0), _t(1.0))
    assert var.item() == pytest.approx(2 * math.exp(2.0))


@pytest.mark.parametrize("method", ["probit", "quadrature"])
def test_gaussian_loss_gradient_pushes_chosen_up(method: str) -> None:
    mu_c, mu_r = _t(0.0).requires_grad_(), _t(0.0).requires_grad_()
    gaussian_bt_loss(mu_c, _t(0.0), mu_r, _t(0.0), method).backward()
    assert mu_c.grad.item() < 0 < mu_r.grad.item()


def test_unknown_method_is_named() -> None:
    with pytest.raises(ValueError, match="bogus"):
        gaussian_bt_prob(_t(0.0), _t(0.0), _t(0.0), _t(0.0), "bogus")  # type: ignore[arg-type]


def test_accuracy_helpers() -> None:
    mu_c, mu_r = _t(1.0, 0.0, 2.0, 0.5), _t(0.0, 1.0, 2.0, 0.1)
    assert pairwise_accuracy(mu_c, mu_r) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    acc = grouped_accuracy(mu_c, mu_r, [1, 1, 2, 2])
    assert acc == {1: (0.5, 2), 2: (0.75, 2)}
    with pytest.raises(ValueError):
        grouped_accuracy(mu_c, mu_r, [1, 2])
    with pytest.raises(ValueError):
        pairwise_accuracy(_t(), _t())
