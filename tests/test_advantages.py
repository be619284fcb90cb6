"""Tests for group advantages, top-k selection and the GRPO loss (rl/advantages.py)."""

from __future__ import annotations

import math

import pytest
import torch

from spatialt2i.rl.advantages import (
    approx_kl_old,
    clip_advantages,
    compute_advantages,
    gaussian_kl_same_std,
    group_normalise,
    grpo_clipped_loss,
    kl_k3,
    topk_bottomk_mask,
    zero_std_groups,
)


def test_topk_bottomk_on_hand_made_group() -> None:
    r = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.2])
    mask = topk_bottomk_mask(r, 2)
    # top-2: 0.9 (1), 0.7 (3); bottom-2: 0.1 (2), 0.2 (5)
    assert mask.tolist() == [False, True, True, True, False, True]
    assert topk_bottomk_mask(r, 0).all()
    assert topk_bottomk_mask(r, 3).all()  # k = G/2 keeps everything


def test_topk_batched_groups_and_ties_are_stable() -> None:
    r = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    mask = topk_bottomk_mask(r, 1)
    assert mask.sum(dim=-1).tolist() == [2, 2]
    assert mask[0].tolist() == [True, False, False, True]  # ties: first is "lowest", last "highest"
    assert mask[1].tolist() == [True, False, False, True]


@pytest.mark.parametrize(("k", "g"), [(4, 7), (13, 24)])
def test_k_above_half_group_raises_naming_k_and_g(k: int, g: int) -> None:
    with pytest.raises(ValueError, match=rf"k={k}.*G={g}"):
        topk_bottomk_mask(torch.zeros(g), k)
    with pytest.raises(ValueError, match="k=-1"):
        topk_bottomk_mask(torch.zeros(4), -1)


def test_group_normalise_matches_hand_computation() -> None:
    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    mean, std = 3.0, math.sqrt(((1 - 3) ** 2 + 1 + 0 + 9) / 4)
    expected = torch.tensor([(x - mean) / (std + 1e-4) for x in r.tolist()])
    torch.testing.assert_close(group_normalise(r), expected)


def test_advantages_over_kept_vs_group() -> None:
    r = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0, 4.0])  # k=1 keeps 0.0 and 10.0
    adv_group, mask = compute_advantages(r, k=1, over="group")
    adv_kept, mask2 = compute_advantages(r, k=1, over="kept")
    assert torch.equal(mask, mask2)
    assert mask.tolist() == [True, False, False, False, True, False]
    # unkept samples get 0
    assert torch.all(adv_group[~mask] == 0) and torch.all(adv_kept[~mask] == 0)
    # over the kept pair {0, 10}: mean 5, std 5 -> -1, +1
    torch.testing.assert_close(adv_kept[mask], torch.tensor([-1.0, 1.0]), atol=1e-4, rtol=0)
    # over the whole group: mean 20/6, population std
    m = 20 / 6
    s = math.sqrt(sum((x - m) ** 2 for x in r.tolist()) / 6)
    torch.testing.assert_close(adv_group[mask], torch.tensor([(0 - m) / (s + 1e-4), (10 - m) / (s + 1e-4)]))


def test_zero_std_group_gives_zero_advantages() -> None:
    r = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.0, 1.0, 0.0, 1.0]])
    assert zero_std_groups(r).tolist() == [True, False]
    adv, _ = compute_advantages(r)
    assert torch.all(adv[0] == 0)
    assert torch.all(adv[1].abs() > 0.9)
    # a kept subset can be degenerate even when the group is not
    r2 = torch.tensor([0.0, 5.0, 0.0, 0.0, 0.0, 0.0])
    assert zero_std_groups(r2, topk_bottomk_mask(r2, 1)).item() is False
    adv2, _ = compute_advantages(torch.tensor([1.0, 1.0, 2.0, 1.0]), k=1, over="kept")
    assert adv2.abs().sum() > 0


def test_advantage_clipping() -> None:
    a = torch.tensor([-7.0, -0.5, 0.0, 3.0])
    assert clip_advantages(a, 2.0).tolist() == [-2.0, -0.5, 0.0, 2.0]
    assert torch.equal(clip_advantages(a, None), a)
    adv, _ = compute_advantages(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0]), clip=1.5)
    assert adv.max().item() == 1.5


def test_bad_over_raises() -> None:
    with pytest.raises(ValueError, match="over"):
        compute_advantages(torch.zeros(4), over="all")  # type: ignore[arg-type]


def test_grpo_loss_ratio_one_equals_minus_mean_advantage() -> None:
    lp = torch.tensor([-1.2, -0.7, -2.0, -0.3], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0])
    loss, stats = grpo_clipped_loss(lp, lp.detach(), adv, 1e-4)
    torch.testing.assert_close(loss, -adv.mean())
    assert stats["ratio"].item() == 1.0 and stats["clip_frac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv / 4)  # d/dlogp of -A*exp(logp - old) at ratio 1


def test_grpo_loss_clips_in_the_pessimistic_direction() -> None:
    old = torch.zeros(4)
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, stats = grpo_clipped_loss(lp, old, adv, 0.2)
    # per sample max(-A r, -A clip(r)): A>0,r=1.5 -> -1.2 ; A<0,r=1.5 -> 1.5 ; A>0,r=.5 -> -.5 ; A<0,r=.5 -> .8
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 1.5 - 0.5 + 0.8) / 4))
    assert stats["clip_frac"].item() == 1.0
    loss.backward()
    # clipped terms have zero gradient
    assert lp.grad[0].item() == 0.0 and lp.grad[3].item() == 0.0 and lp.grad[1].item() != 0.0


def test_grpo_loss_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        grpo_clipped_loss(torch.zeros(3), torch.zeros(3), torch.zeros(4), 0.1)


def test_kl_estimators() -> None:
    lp = torch.tensor([-1.0, -1.0, -0.5])
    ref = torch.tensor([-1.0, -1.5, -0.2])
    k3 = kl_k3(lp, ref)
    assert k3[0].item() == 0.0 and torch.all(k3 >= 0)
    lr = ref - lp
    torch.testing.assert_close(k3, torch.exp(lr) - 1 - lr)
    assert math.isclose(approx_kl_old(lp, ref).item(), 0.5 * (0 + 0.25 + 0.09) / 3, rel_tol=1e-6)


def test_gaussian_kl_same_std_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    m, mr = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    std = torch.tensor([0.3, 0.0]).view(2, 1, 1)
    kl = gaussian_kl_same_std(m, mr, std)
    ref0 = torch.distributions.kl_divergence(torch.distributions.Normal(m[0], 0.3),
                                             torch.distributions.Normal(mr[0], 0.3)).mean()
    torch.testing.assert_close(kl[0], ref0)
    assert kl[1].item() == 0.0
