"""Token grounding (gen/grounding.py): targets sit on the right words and pixels, the loss has the
TokenCompose values on hand-made attention, and the recording processor changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spatialt2i.gen.grounding import (GroundingTargets, grounding_loss, grounding_targets, install_recorders,
                                      mention_spans, remove_recorders, token_grid_mask)
from spatialt2i.world.scene import Obj, Scene

torch.set_num_threads(1)


def test_token_grid_mask_is_row_major_any() -> None:
    px = np.zeros((16, 16), bool)
    px[9, 2] = True                      # row cell 1, column cell 0 of a 2x2 grid of 8-px cells
    assert token_grid_mask(px, 8).tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match="multiple"):
        token_grid_mask(np.zeros((10, 16), bool), 8)


def test_mention_spans_whole_words() -> None:
    p = "A red star left of a blue square; the red star is big. A red starfish."
    assert [p[a:b] for a, b in mention_spans(p, "red", "star")] == ["red star", "red star"]


def test_grounding_loss_values() -> None:
    masks = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    t = GroundingTargets(torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), masks)
    inside = torch.zeros(1, 4, 3)
    inside[0, :2, 1] = 0.7                # all of word 1's attention on the object's cells
    assert grounding_loss(inside, t).item() == pytest.approx(0.0)
    uniform = torch.full((1, 4, 3), 0.25)
    assert grounding_loss(uniform, t).item() == pytest.approx((1 - 0.5) ** 2)
    outside = torch.zeros(1, 4, 3)
    outside[0, 3, 1] = 1.0
    assert grounding_loss(outside, t).item() == pytest.approx(1.0)
    empty = GroundingTargets(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                             torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    assert grounding_loss(uniform, empty).item() == 0.0


def test_grounding_targets_on_a_scene() -> None:
    from spatialt2i.gen.pretrain import world_generator_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(world_generator_path() / "tokenizer_2"))
    scene = Scene((Obj("star", "red", "large", 0.25, 0.25), Obj("square", "blue", "small", 0.75, 0.75)), ())
    prompt = "A red star is above a blue square. The red star is large."
    t = grounding_targets([scene], [prompt], tok, 32, 64, 8)
    assert t.masks.shape == (2, 64)
    words = {tok.convert_ids_to_tokens(tok(prompt)["input_ids"])[i].strip("\u2581") for i in t.token.tolist()}
    assert words == {"red", "star", "blue", "square"}
    # the red star's tokens point to a mask in the top-left quarter, the square's to the bottom-right
    red = t.masks[t.obj[0]].view(8, 8)
    assert red[:4, :4].sum() > 0 and red[4:, 4:].sum() == 0
    blue = t.masks[t.obj[-1]].view(8, 8)
    assert blue[4:, 4:].sum() > 0 and blue[:4, :4].sum() == 0


def test_recording_processor_matches_diffusers() -> None:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=1,
                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                pooled_projection_dim=16, axes_dims_rope=(4, 6, 6)).eval()
    x, enc = torch.randn(2, 16, 16), torch.randn(2, 5, 32)
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0),
                                         indexing="ij"), -1).reshape(-1, 3)
    kw = dict(hidden_states=x, encoder_hidden_states=enc, pooled_projections=torch.randn(2, 16),
              timestep=torch.tensor([0.5, 0.9]), img_ids=img_ids, txt_ids=torch.zeros(5, 3))
    with torch.no_grad():
        ref = tr(**kw).sample
        procs = install_recorders(tr)
        out = tr(**kw).sample
    assert torch.allclose(out, ref, atol=1e-5)
    assert len(procs) == 2 and procs[0].img_to_txt.shape == (2, 16, 5)
    assert torch.all(procs[0].img_to_txt.sum(-1) <= 1.0 + 1e-6)   # a share of each image row's attention
    # the loss trains the attention: its gradient reaches each double block's query projection
    tr(**kw)  # recorded with autograd on
    t = GroundingTargets(torch.tensor([0, 1]), torch.tensor([1, 3]), torch.tensor([0, 1]),
                         (torch.arange(16) < 8).float().repeat(2, 1))
    torch.stack([grounding_loss(p.img_to_txt, t) for p in procs]).mean().backward()
    assert all(b.attn.to_q.weight.grad.abs().sum() > 0 for b in tr.transformer_blocks)
    remove_recorders(tr)
    with torch.no_grad():
        assert torch.equal(tr(**kw).sample, ref)
