"""The generator's text stage: scene-parse targets sit on the right tokens, the stage learns them,
and a run with it (a loaded VAE, frozen text encoders in flow matching) trains, resumes and saves."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from spatialt2i.errors import ConfigError  # noqa: E402
from spatialt2i.gen.pretrain import Pretrainer, PretrainConfig  # noqa: E402
from spatialt2i.gen.scene_stream import SceneStream  # noqa: E402
from spatialt2i.gen.text_pretrain import TextStage, parse_targets  # noqa: E402
from spatialt2i.gen.tiny import build_tiny_flux_pipeline  # noqa: E402
from spatialt2i.world.scene import Obj, Relation, Scene  # noqa: E402
from spatialt2i.world.vocab import COLOURS, SHAPES  # noqa: E402

torch.set_num_threads(1)


def test_parse_targets_mark_each_mention_with_its_object() -> None:
    pipe = build_tiny_flux_pipeline()
    tok = pipe.tokenizer_2
    scene = Scene((Obj("star", "red", "small", 0.2, 0.3, depth=1), Obj("circle", "blue", "large", 0.7, 0.6)),
                  (Relation("left_of", (0, 1)),))
    prompt = "A red star is left of a blue circle. The red star is small."
    t = parse_targets([scene], [prompt], tok, 32)
    ids = tok(prompt, padding="max_length", max_length=32).input_ids
    words = [tok.decode([ids[i]]).strip() for i in t.token.tolist()]
    assert sorted(set(words)) == ["blue", "circle", "red", "star"]
    assert words.count("red") == 2  # both mentions of the red star
    for i, w in zip(range(len(t)), words):
        red = w in ("red", "star")
        assert list(COLOURS)[int(t.colour[i])] == ("red" if red else "blue")
        assert SHAPES[int(t.shape[i])] == ("star" if red else "circle")
        assert t.where[i].tolist() == pytest.approx([0.2, 0.3, 1.0] if red else [0.7, 0.6, 0.0])
    assert t.bag.sum() == 4 and t.bag[0, list(COLOURS).index("red")] == 1
    with pytest.raises(ValueError, match="not placed"):
        parse_targets([Scene((Obj("star", "red"),))], ["A red star."], tok, 32)


def test_text_stage_learns_a_batch() -> None:
    pipe = build_tiny_flux_pipeline()
    stage = TextStage(pipe, lr=3e-3, where_weight=10.0, max_length=64)
    scenes, prompts = SceneStream(PretrainConfig(), 0).scenes(16)
    first = stage.step(scenes, prompts)
    for _ in range(60):
        last = stage.step(scenes, prompts)
    assert last[0] < 0.5 * first[0]
    assert last[1]["colour_acc"] > 0.9 and last[1]["shape_acc"] > 0.9


def _cfg(**kw) -> PretrainConfig:
    base = dict(minutes=5, text_steps=3, text_batch=4, vae_steps=2, vae_batch=4, fm_steps=3, batch=4,
                eval_minutes=0, eval_prompts=2, eval_steps=2, max_sequence_length=32, log_every=1,
                checkpoint_minutes=100, text_lr=0.0)
    base.update(kw)
    return PretrainConfig(**base)


def test_text_stage_run_with_loaded_vae_and_frozen_text(tmp_path: Path) -> None:
    first = tmp_path / "first"
    Pretrainer(_cfg(text_steps=0), first, progress=False).run()
    # a run that loads that VAE, pretrains the text encoders and keeps them frozen in flow matching
    out = tmp_path / "run"
    tr = Pretrainer(_cfg(init_vae=str(first), fm_steps=2), out, progress=False)
    vae0 = {k: v.clone() for k, v in tr.pipe.vae.state_dict().items()}
    t5_0 = {k: v.clone() for k, v in tr.pipe.text_encoder_2.state_dict().items()}
    tr.run()
    t5_1 = {k: v.clone() for k, v in tr.pipe.text_encoder_2.state_dict().items()}
    assert any(not torch.equal(t5_0[k], t5_1[k]) for k in t5_0)      # the text stage trained it
    assert all(torch.equal(vae0[k], v) for k, v in tr.pipe.vae.state_dict().items())
    stages = [r["stage"] for r in tr.history]
    assert stages.count("text") == 3 and "vae" not in stages and stages.count("fm") == 2
    # resume for one more flow-matching step: the text encoders stay as the text stage left them
    tr2 = Pretrainer(_cfg(init_vae=str(first), fm_steps=3), out, resume=True, progress=False)
    assert tr2.stage == "fm" and tr2.step == 2
    tr2.run()
    assert all(torch.equal(t5_1[k], v) for k, v in tr2.pipe.text_encoder_2.state_dict().items())
    with pytest.raises(ConfigError, match="init_vae"):
        Pretrainer(_cfg(init_vae=str(tmp_path / "nowhere")), tmp_path / "bad", progress=False)


def test_object_tokens_mark_the_cells_an_object_covers() -> None:
    from spatialt2i.gen.pretrain import object_tokens

    # a small square centred at (0.25, 0.25) of a 64 px canvas: pixels ~11-21, i.e. cells 1-2 of
    # 8 px in both directions (row-major over the 8 x 8 token grid)
    s = Scene((Obj("square", "red", "small", 0.25, 0.25),))
    m = object_tokens([s], 64, 8)
    assert m.shape == (1, 64)
    assert {int(i) for i in m[0].nonzero()} == {8 * r + c for r in (1, 2) for c in (1, 2)}


def test_object_weight_changes_the_loss_and_text_dropout_empties_prompts(tmp_path: Path) -> None:
    seen = []
    losses = {}
    for w in (1.0, 5.0):
        tr = Pretrainer(_cfg(text_steps=0, object_weight=w, text_dropout=1.0, fm_steps=1), tmp_path / f"w{w}",
                        progress=False)
        orig = tr.pipe.encode_prompt
        tr.pipe.encode_prompt = lambda prompt, **kw: (seen.extend(prompt), orig(prompt=prompt, **kw))[1]
        tr.stage = "fm"
        torch.manual_seed(0)
        tr.stream = SceneStream(tr.cfg, 1)
        losses[w] = tr._fm_step(tr.generator())
    assert seen and all(p == "" for p in seen)
    assert losses[1.0] != pytest.approx(losses[5.0], rel=1e-4)
