"""World base generator: a few pretraining steps run, save, reload, evaluate; the shipped checkpoint loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from spatialt2i.errors import ConfigError  # noqa: E402
from spatialt2i.gen.evaluate import evaluate_generator, heldout_scenes  # noqa: E402
from spatialt2i.gen.pretrain import (  # noqa: E402
    SHIPPED_GENERATOR, Pretrainer, PretrainConfig, load_config, world_generator_path)

torch.set_num_threads(1)


def _tiny_cfg(**kw) -> PretrainConfig:
    base = dict(minutes=0.15, vae_share=0.4, vae_batch=4, batch=4, eval_minutes=0, eval_prompts=4,
                eval_steps=2, max_sequence_length=32, log_every=1, checkpoint_minutes=100,
                decoder_steps=2)
    base.update(kw)
    return PretrainConfig(**base)


def test_preset_loads_and_bad_config_is_an_error(tmp_path: Path) -> None:
    cfg = load_config("world-generator")
    assert cfg.image_size == 64 and cfg.model.vae_channels[-1] > 0
    assert load_config("world-generator", minutes=3.0).minutes == 3.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("minutes: 1\nbogus: 2\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(bad)


def test_pretrain_steps_save_reload_eval_resume(tmp_path: Path) -> None:
    from diffusers import FluxPipeline

    from spatialt2i.gen.flux import FluxGenerator

    out = tmp_path / "gen"
    tr = Pretrainer(_tiny_cfg(), out, progress=False)
    res = tr.run()
    assert res["steps"] > 0 and 0.0 <= res["presence"] <= 1.0
    assert (out / "model_index.json").is_file() and (out / "train_state" / "state.pt").is_file()
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in recs} >= {"vae", "vae_check", "fm", "decoder", "decoder_check", "final"}
    assert all(r["loss"] == r["loss"] for r in recs if "loss" in r)  # no NaN

    pipe = FluxPipeline.from_pretrained(str(out))
    assert pipe.vae_scale_factor == 4 and pipe.vae.config.shift_factor is not None
    sd = tr.pipe.transformer.state_dict()
    for k, v in pipe.transformer.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # the decoder stage changed the decoder only: the encoder (the latent space) is the stage-1 one
    stage1 = torch.load(out / "train_state" / "state.pt", weights_only=False)["vae"]
    vsd = pipe.vae.state_dict()
    assert all(torch.equal(vsd[k], stage1[k]) for k in vsd if k.startswith("encoder."))
    assert any(not torch.equal(vsd[k], stage1[k]) for k in vsd if k.startswith("decoder."))
    gen = FluxGenerator(pipe, height=64, width=64, max_sequence_length=32)
    ev = evaluate_generator(gen, n=3, steps=2, batch=2)
    assert ev["n"] == 3 and set(ev) >= {"presence", "all_correct", "per_relation", "by_n_relations"}

    # resume: a finished run continues from its state with a bigger budget, step count carries on
    steps_before = tr.step
    tr2 = Pretrainer(_tiny_cfg(minutes=0.2), out, resume=True, progress=False)
    assert tr2.stage == "fm" and tr2.step == steps_before
    assert torch.equal(tr2.pipe.transformer.state_dict()[next(iter(sd))], sd[next(iter(sd))])


def test_ema_and_grounding(tmp_path: Path) -> None:
    from diffusers import FluxPipeline

    out = tmp_path / "gen"
    tr = Pretrainer(_tiny_cfg(ema_decay=0.9, decoder_steps=0, grounding_weight=0.5, data_workers=1), out,
                    progress=False)
    tr.run()
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ground = [r["grounding"] for r in recs if r["stage"] == "fm"]
    assert ground and all(0.0 <= g <= 1.0 for g in ground)
    assert tr.ema is not None and tr.ema.optimization_step == tr.step > 1
    live = {k: v.clone() for k, v in tr.pipe.transformer.state_dict().items()}
    saved = FluxPipeline.from_pretrained(str(out)).transformer.state_dict()
    names = [n for n, _ in tr.pipe.transformer.named_parameters()]
    shadow = dict(zip(names, tr.ema.shadow_params))  # transformer parameters come first
    assert all(torch.equal(saved[n], shadow[n]) for n in names)
    assert any(not torch.equal(saved[n], live[n]) for n in names)  # EMA != last training weights
    # the training weights are back after saving/evaluating with the EMA weights
    assert all(torch.equal(v, live[k]) for k, v in tr.pipe.transformer.state_dict().items())
    tr2 = Pretrainer(_tiny_cfg(ema_decay=0.9, decoder_steps=0, grounding_weight=0.5), out, resume=True, progress=False)
    assert tr2.ema.optimization_step == tr.ema.optimization_step
    assert all(torch.equal(a, b) for a, b in zip(tr2.ema.shadow_params, tr.ema.shadow_params))


def test_heldout_prompts_are_fixed_and_in_range() -> None:
    s1, p1 = heldout_scenes(12)
    s2, p2 = heldout_scenes(12)
    assert p1 == p2
    assert all(2 <= len(s.objects) <= 4 and 1 <= len(s.relations) <= 3 for s in s1)
    assert sorted({len(s.relations) for s in s1}) == [1, 2, 3]


def test_summary_separates_drawing_from_placing() -> None:
    """relation_accuracy_drawn counts only relations whose objects were all found."""
    from spatialt2i.gen.evaluate import summarize
    from spatialt2i.world.oracle import Verdict
    from spatialt2i.world.scene import Obj, Relation, Scene

    objs = tuple(Obj("circle", c) for c in ("red", "blue", "green"))
    scene = Scene(objs, (Relation("left_of", (0, 1)), Relation("above", (1, 2))))
    verdicts = [Verdict([True, False], [True, True, False]),    # 1st relation drawn and right; 2nd lacks green
                Verdict([False, False], [True, True, True]),    # both drawn, both wrong
                Verdict([False, False], [False, False, False])]  # nothing drawn
    r = summarize([scene] * 3, verdicts)
    assert r["relation_accuracy"] == pytest.approx(1 / 6) and r["relations_drawn"] == 3
    assert r["relation_accuracy_drawn"] == pytest.approx(1 / 3)
    assert summarize([scene], verdicts[2:])["relation_accuracy_drawn"] is None


def test_random_placement_draws_every_object_and_ignores_positions() -> None:
    from spatialt2i.gen.evaluate import random_placement

    scenes = heldout_scenes(30)[0]
    r = random_placement(scenes, seed=1)
    assert r["presence"] == 1.0 and r["relations_drawn"] == sum(len(s.relations) for s in scenes)
    assert 0.0 < r["relation_accuracy"] < 0.8                      # chance, not the solver's layouts
    assert r == random_placement(scenes, seed=1)                    # seeded
    sizes = [v["accuracy"] for k, v in r["per_relation"].items() if k in ("bigger", "smaller")]
    assert sizes and all(a == 1.0 for a in sizes)                   # sizes come from the objects
    r3 = random_placement(scenes[:5], seed=1, draws=3)              # pooled layouts
    assert r3["relations_drawn"] == 3 * sum(len(s.relations) for s in scenes[:5])
    with pytest.raises(ValueError, match="draws"):
        random_placement(scenes, draws=0)


@pytest.mark.skipif(not (SHIPPED_GENERATOR / "model_index.json").is_file(), reason="no shipped checkpoint")
def test_shipped_generator_loads_and_samples() -> None:
    from diffusers import FluxPipeline

    from spatialt2i.gen.flux import FluxGenerator

    path = world_generator_path()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size <= 8 * 2**20, f"shipped generator is {size / 2**20:.1f} MiB"
    pipe = FluxPipeline.from_pretrained(str(path), dtype=torch.float32)
    assert pipe.transformer.dtype == torch.float32 and pipe.vae_scale_factor == 4
    gen = FluxGenerator(pipe, height=64, width=64, max_sequence_length=128)
    traj = gen.sample(["A red circle is to the left of a blue square."], [0], 6)
    assert traj.images.shape == (1, 3, 64, 64)
    assert torch.isfinite(traj.images).all() and traj.latents.shape[2] == 64
