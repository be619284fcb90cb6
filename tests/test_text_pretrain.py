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
from spatialt2i.gen.text_pretrain import TextStage, context_hint_loss, fixed_axes, parse_targets  # noqa: E402
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
    clause = (0, prompt.index("."))
    t = parse_targets([scene], [prompt], tok, 32, [[clause]])
    ids = tok(prompt, padding="max_length", max_length=32).input_ids
    words = [tok.decode([ids[i]]).strip() for i in t.token.tolist()]
    assert sorted(set(words)) == ["blue", "circle", "red", "star"]
    assert words.count("red") == 2  # both mentions of the red star
    for i, w in zip(range(len(t)), words):
        red = w in ("red", "star")
        assert list(COLOURS)[int(t.colour[i])] == ("red" if red else "blue")
        assert SHAPES[int(t.shape[i])] == ("star" if red else "circle")
        in_clause = int(t.token[i]) < 10   # the second sentence's "red star" is in no clause
        # the place relative to the clause's other object; "left of" fixes only the x offset's sign
        want = ([-0.5, -0.3, 1.0] if red else [0.5, 0.3, -1.0]) if in_clause else [0.0, 0.0, 0.0]
        assert t.where[i].tolist() == pytest.approx(want)
        assert t.fixed[i].tolist() == [in_clause, False, False]
    assert t.bag.sum() == 4 and t.bag[0, list(COLOURS).index("red")] == 1
    assert not parse_targets([scene], [prompt], tok, 32).fixed.any()   # no clause spans: no place targets
    with pytest.raises(ValueError, match="not placed"):
        parse_targets([Scene((Obj("star", "red"),))], ["A red star."], tok, 32)
    with pytest.raises(ValueError, match="clause spans"):
        parse_targets([scene], [prompt], tok, 32, [[clause, clause]])


def test_fixed_axes_follow_the_relation_words() -> None:
    assert fixed_axes(Relation("right_of", (0, 1))) == (True, False, False)
    assert fixed_axes(Relation("below_left", (0, 1))) == (True, True, False)
    assert fixed_axes(Relation("behind", (0, 1))) == (False, False, True)
    assert fixed_axes(Relation("bigger", (0, 1))) == (False, False, False)
    assert fixed_axes(Relation("at", (0,), "top edge")) == (False, True, False)
    assert fixed_axes(Relation("at", (0,), "center")) == (False, False, False)


def test_describe_with_spans_marks_each_clause() -> None:
    import numpy as np

    from spatialt2i.world.text import Style, describe, describe_with_spans

    scenes, prompts, spans = SceneStream(PretrainConfig(), 3).described(12)
    assert any(len(sp) >= 2 for sp in spans)
    rng = np.random.default_rng(0)
    for scene, prompt, sp in zip(scenes, prompts, spans):
        assert len(sp) == len(scene.relations)
        for (a, z), rel in zip(sp, scene.relations):
            o = scene.objects[rel.objects[0]]
            assert f"{o.colour} {o.shape}" in prompt[a:z]
        style = Style.draw(rng, len(scene.relations))
        assert describe_with_spans(scene, style)[0] == describe(scene, style)


def test_text_stage_learns_a_batch() -> None:
    pipe = build_tiny_flux_pipeline()
    stage = TextStage(pipe, lr=3e-3, where_weight=10.0, max_length=64, hint_weight=1.0)
    scenes, prompts, spans = SceneStream(PretrainConfig(), 0).described(16)
    first = stage.step(scenes, prompts, spans)
    for _ in range(80):
        last = stage.step(scenes, prompts, spans)
    assert last[0] < 0.5 * first[0]
    assert last[1]["colour_acc"] > 0.85 and last[1]["shape_acc"] > 0.85
    assert last[1]["hint"] < 0.75 * first[1]["hint"]
    assert last[1]["side_acc"] > 0.8 and last[1]["where_rmse"] < first[1]["where_rmse"]  # memorised


def test_context_hint_loss_is_zero_when_the_heads_look_at_the_relation_words() -> None:
    pipe = build_tiny_flux_pipeline()
    tok = pipe.tokenizer_2
    scene = Scene((Obj("star", "red", "small", 0.2, 0.3), Obj("circle", "blue", "large", 0.7, 0.6)),
                  (Relation("left_of", (0, 1)),))
    prompt = "A red star is left of a blue circle"
    t = parse_targets([scene], [prompt], tok, 16, [[(0, len(prompt))]])
    attn = torch.full((1, 4, 16, 16), 1 / 16)
    assert float(context_hint_loss(attn, t)) > 0.3
    for k in range(len(t)):
        b, q = int(t.batch[k]), int(t.token[k])
        for head, sign in ((0, 1.0), (1, -1.0)):
            words = (t.context[k] == sign).float()
            attn[b, head, q] = words / words.sum() if words.any() else attn[b, head, q]
    assert float(context_hint_loss(attn, t)) == pytest.approx(0.0, abs=1e-6)
    red = [k for k in range(len(t)) if int(t.token[k]) < 3]      # "red star": the words after it
    ids = tok(prompt, padding="max_length", max_length=16).input_ids
    words = tok.convert_ids_to_tokens([ids[u] for u in (t.context[red[0]] > 0).nonzero().flatten().tolist()])
    assert "left" in "".join(words) and not any("circle" in w for w in words)


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
    # init_from: every part starts from a saved pipeline, and no VAE stage runs
    cont = Pretrainer(_cfg(init_from=str(out), text_steps=0, fm_steps=1), tmp_path / "cont", progress=False)
    assert all(torch.equal(t5_1[k], v) for k, v in cont.pipe.text_encoder_2.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(cont.pipe.transformer.state_dict().values(),
                                                 tr2.pipe.transformer.state_dict().values()))
    cont.run()
    assert [r["stage"] for r in cont.history].count("vae") == 0
    assert not any("_name_or_path" in f.read_text() for f in (tmp_path / "cont").glob("**/*.json"))


def test_object_tokens_mark_the_cells_an_object_covers() -> None:
    from spatialt2i.gen.grounding import object_tokens

    # a small square centred at (0.25, 0.25) of a 64 px canvas: pixels ~11-21, i.e. cells 1-2 of
    # 8 px in both directions (row-major over the 8 x 8 token grid)
    s = Scene((Obj("square", "red", "small", 0.25, 0.25),))
    m = object_tokens([s], 64, 8)
    assert m.shape == (1, 64)
    assert {int(i) for i in m[0].nonzero()} == {8 * r + c for r in (1, 2) for c in (1, 2)}


def test_object_weight_changes_the_loss_and_text_dropout_empties_prompts(tmp_path: Path, monkeypatch) -> None:
    from spatialt2i.gen import fm_data

    seen = []
    tokenize = fm_data.tokenize_prompts
    monkeypatch.setattr(fm_data, "tokenize_prompts", lambda pipe, prompts, n: (seen.extend(prompts),
                                                                                tokenize(pipe, prompts, n))[1])
    losses = {}
    for w in (1.0, 5.0):
        tr = Pretrainer(_cfg(text_steps=0, object_weight=w, text_dropout=1.0, fm_steps=1), tmp_path / f"w{w}",
                        progress=False)
        tr.stage = "fm"
        torch.manual_seed(0)
        tr.stream = SceneStream(tr.cfg, 1)
        losses[w] = tr._fm_step(tr.generator())
    assert seen and all(p == "" for p in seen)
    assert losses[1.0] != pytest.approx(losses[5.0], rel=1e-4)
