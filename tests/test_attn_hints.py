"""Attention hints of the VLM world pretraining: targets and losses (pure functions)."""

import numpy as np
import pytest
import torch

from spatialt2i.reward.attn_hints import Hints, attention_ce, box_cell_weights, default_layers, hint_losses


def test_box_inside_one_cell_puts_all_weight_there():
    w = box_cell_weights((0.30, 0.55, 0.45, 0.70), 4, 4)   # x in col 1, y in row 2
    assert w.shape == (16,)
    assert w[2 * 4 + 1] == pytest.approx(1.0)
    assert w.sum() == pytest.approx(1.0)


def test_box_straddling_cells_splits_by_area():
    # x 0.2..0.3 straddles cols 0|1 at 0.25 equally; y 0.1..0.2 inside row 0
    w = box_cell_weights((0.2, 0.1, 0.3, 0.2), 4, 4).reshape(4, 4)
    assert w[0, 0] == pytest.approx(0.5) and w[0, 1] == pytest.approx(0.5)
    # a box poking out of the canvas is clipped first
    w = box_cell_weights((-0.1, 0.9, 0.1, 1.1), 2, 2).reshape(2, 2)
    assert w[1, 0] == pytest.approx(1.0)


def test_degenerate_box_goes_to_its_centre_cell():
    w = box_cell_weights((0.8, 0.1, 0.8, 0.1), 4, 4).reshape(4, 4)
    assert w[0, 3] == 1.0 and w.sum() == 1.0


def test_attention_ce_is_cross_entropy_on_the_keys():
    att = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
    keys = torch.tensor([[1, 2], [0, 1]])
    tgt = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    want = (-np.log(0.6) + -(0.5 * np.log(0.5) + 0.5 * np.log(0.25))) / 2
    assert attention_ce(att, keys, tgt).item() == pytest.approx(want, rel=1e-6)


def _uniform_attentions(b: int, heads: int, t: int, layers: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.full((b, heads, t, t), 1.0 / t) for _ in range(layers))


def test_hint_losses_at_their_minimum_when_attention_matches_and_log_t_when_uniform():
    b, heads, t = 2, 4, 10
    h = Hints(bind=torch.tensor([[0, 8, 7]]), ground=torch.tensor([[1, 9]]),
              ground_tgt=torch.tensor([[0.0, 1.0, 0.0, 0.0]]), img_start=torch.tensor([2, 3]),
              role=torch.tensor([[0, 9, 8, 6, -1]]), rel=torch.tensor([[0, 9]]),
              rel_keys=torch.tensor([[3, 4]]), rel_tgt=torch.tensor([[0.5, 0.5]]))
    atts = _uniform_attentions(b, heads, t, 4)
    loss, logs = hint_losses(atts, h, *default_layers(4))
    assert logs["h_bind"] == pytest.approx(np.log(t)) and logs["h_ground"] == pytest.approx(np.log(t))
    assert logs["h_role"] == pytest.approx(np.log(t)) and logs["h_rel"] == pytest.approx(np.log(t))
    assert loss.item() == pytest.approx(4 * np.log(t))
    # one-hot attention on exactly the targets
    atts = [a.clone() for a in atts]
    lb, lg, lr = default_layers(4)
    atts[lb][0, 0, 8] = torch.nn.functional.one_hot(torch.tensor(7), t).float()
    atts[lg][1, 0, 9] = torch.nn.functional.one_hot(torch.tensor(3 + 1), t).float()   # img_start 3, cell 1
    atts[lr][0, 1, 9] = torch.nn.functional.one_hot(torch.tensor(8), t).float()
    atts[lr][0, 2, 9] = torch.nn.functional.one_hot(torch.tensor(6), t).float()
    atts[lr][0, 0, 9] = 0.0
    atts[lr][0, 0, 9, 3:5] = 0.5                       # even over the relation words: the best it can do
    loss, logs = hint_losses(tuple(atts), h, lb, lg, lr)
    assert logs["h_rel"] == pytest.approx(np.log(2))
    assert loss.item() == pytest.approx(np.log(2), abs=1e-5)
    assert logs["h_ground_mass"] == pytest.approx(1.0)


def test_default_layers_and_too_shallow_model():
    assert default_layers(4) == (0, 1, 2)
    assert default_layers(6) == (0, 1, 3)
    with pytest.raises(ValueError, match="at least 3 text layers"):
        default_layers(2)
