"""Tests for the tiny Flux builder (gen/tiny.py) and the Flux generator adapter (gen/flux.py)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from spatialt2i.gen.flux import FluxGenerator, GeneratorLoadError, pack_latents, unpack_latents  # noqa: E402
from spatialt2i.gen.tiny import build_tiny_flux_pipeline  # noqa: E402

torch.set_num_threads(1)  # the box is shared; 2 spinning threads oversubscribe it

PROMPTS = ["a small red circle to the left of a large blue square",
           "a green star above a yellow triangle, in the top-left corner"]
SEEDS = [3, 11]
MSL = 32  # T5 tokens; short to keep the tests fast


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny_flux")
    build_tiny_flux_pipeline(d, seed=0)
    return d


@pytest.fixture(scope="module")
def gen(tiny_dir: Path) -> FluxGenerator:
    return FluxGenerator.from_pretrained(tiny_dir, height=64, width=64, max_sequence_length=MSL,
                                         guidance_scale=3.5)


def _pipe_output(gen: FluxGenerator, output_type: str, **kw) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    with torch.no_grad():
        return gen.pipe(PROMPTS, height=64, width=64, num_inference_steps=4, max_sequence_length=MSL,
                        generator=gens, output_type=output_type, **kw).images


def test_tiny_pipeline_matches_benchmark_setting(gen: FluxGenerator) -> None:
    tc = gen.transformer.config
    assert (tc.num_layers, tc.num_single_layers, tc.num_attention_heads, tc.attention_head_dim) == (2, 2, 4, 32)
    assert (tc.joint_attention_dim, tc.pooled_projection_dim, tc.guidance_embeds) == (64, 32, True)
    assert tc.in_channels == 4 * gen.vae.config.latent_channels
    assert gen.vae_scale_factor == 4 and gen.image_seq_len(64, 64) == 64
    assert gen.pipe.text_encoder.config.hidden_size == 32 and gen.pipe.text_encoder.config.num_hidden_layers == 2
    assert gen.pipe.text_encoder_2.config.d_model == 64 and gen.pipe.text_encoder_2.config.num_layers == 2
    assert gen.pipe.scheduler.config.use_dynamic_shifting and gen.pipe.scheduler.config.max_shift == 1.15
    # world words are single T5 tokens
    assert gen.pipe.tokenizer_2.tokenize("red triangle behind")[:3] == ["\u2581red", "\u2581triangle", "\u2581behind"]


def test_tiny_pipeline_is_reproducible_from_seed() -> None:
    a = build_tiny_flux_pipeline(seed=1, num_layers=1, num_single_layers=1)
    b = build_tiny_flux_pipeline(seed=1, num_layers=1, num_single_layers=1)
    for pa, pb in zip(a.transformer.parameters(), b.transformer.parameters()):
        assert torch.equal(pa, pb)


def test_pack_unpack_roundtrip() -> None:
    z = torch.randn(2, 16, 8, 6)
    packed = pack_latents(z)
    assert packed.shape == (2, 12, 64)
    assert torch.equal(unpack_latents(packed, 8, 6), z)


def test_ode_sample_reproduces_flux_pipeline(gen: FluxGenerator) -> None:
    traj = gen.sample(PROMPTS, SEEDS, steps=4, dynamics="ode", guidance=3.5)
    ref_latents = _pipe_output(gen, "latent", guidance_scale=3.5)
    ref_images = _pipe_output(gen, "pt", guidance_scale=3.5)
    assert (traj.latents[:, -1] - ref_latents).abs().max().item() < 1e-4
    assert traj.images.shape == ref_images.shape == (2, 3, 64, 64)
    assert (traj.images - ref_images).abs().max().item() < 1e-4
    assert torch.all(traj.log_probs == 0)
    assert traj.sigmas[0].item() == 1.0 and traj.sigmas[-1].item() == 0.0
    assert traj.latents.shape == (2, 5, 64, 64)


def test_true_cfg_reproduces_flux_pipeline(gen: FluxGenerator) -> None:
    neg = "a black cross"
    traj = gen.sample(PROMPTS, SEEDS, steps=4, dynamics="ode", guidance=3.5, true_cfg_scale=2.0,
                      negative_prompt=neg, decode=False)
    ref = _pipe_output(gen, "latent", guidance_scale=3.5, true_cfg_scale=2.0, negative_prompt=neg)
    assert (traj.latents[:, -1] - ref).abs().max().item() < 1e-4
    plain = gen.sample(PROMPTS, SEEDS, steps=4, dynamics="ode", decode=False)
    assert (plain.latents[:, -1] - traj.latents[:, -1]).abs().max().item() > 1e-3


def test_guidance_changes_the_velocity(gen: FluxGenerator) -> None:
    emb = gen.encode_prompts(PROMPTS)
    x = gen.initial_noise(SEEDS)
    with torch.no_grad():
        v1 = gen.forward(x, 0.8, emb.prompt_embeds, emb.pooled, 1.0)
        v2 = gen.forward(x, 0.8, emb.prompt_embeds, emb.pooled, 5.0)
    assert (v1 - v2).abs().max().item() > 1e-6


@pytest.mark.parametrize("dynamics", ["flow_sde", "dance_sde", "cps"])
def test_sde_log_probs_replay_exactly(gen: FluxGenerator, dynamics: str) -> None:
    traj = gen.sample(PROMPTS, SEEDS, steps=3, dynamics=dynamics, noise_level=0.9, decode=False)
    assert traj.log_probs.shape == (2, 3)
    for step in range(2):  # the last step of cps is deterministic; flow/dance are not
        with torch.no_grad():
            lp, mean, std = gen.replay_step(traj, step)
        assert torch.equal(lp, traj.log_probs[:, step])  # ratio exactly 1 before any update
        assert torch.all(torch.exp(lp - traj.log_probs[:, step]) == 1)
        ref = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(traj.latents[:, step + 1])
        torch.testing.assert_close(lp, ref.mean(dim=(1, 2)), rtol=1e-5, atol=1e-5)


def test_batched_replay_of_several_steps_matches_rollout(gen: FluxGenerator) -> None:
    traj = gen.sample(PROMPTS, SEEDS, steps=4, dynamics="flow_sde", noise_level=0.9, decode=False)
    with torch.no_grad():
        lp, mean, _ = gen.replay(traj, [0, 2], index=[1, 0])
        lp_step2, mean_step2, _ = gen.replay_step(traj, 2, index=[1, 0])
    assert lp.shape == (2, 2) and mean.shape == (4, 64, 64)
    torch.testing.assert_close(lp, traj.log_probs[[1, 0]][:, [0, 2]], rtol=0, atol=1e-5)
    torch.testing.assert_close(mean[2:], mean_step2, rtol=0, atol=1e-5)
    torch.testing.assert_close(lp[:, 1], lp_step2, rtol=0, atol=1e-5)
    ode = gen.sample(PROMPTS, SEEDS, steps=2, dynamics="ode", decode=False)
    with pytest.raises(ValueError, match="needs noise"):
        gen.replay(ode, [0])


def test_replay_of_a_subset_and_gradients(gen: FluxGenerator) -> None:
    traj = gen.sample(PROMPTS, SEEDS, steps=2, dynamics="flow_sde", noise_level=0.9, decode=False)
    lp, _, _ = gen.replay_step(traj, 0, index=[1])
    assert lp.shape == (1,) and lp.requires_grad
    torch.testing.assert_close(lp.detach(), traj.log_probs[1:, 0], rtol=0, atol=1e-5)
    lp.sum().backward()
    grads = [p.grad for p in gen.transformer.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    gen.transformer.zero_grad(set_to_none=True)


def test_seeds_make_samples_independent_of_batch(gen: FluxGenerator) -> None:
    both = gen.sample(PROMPTS, SEEDS, steps=2, dynamics="flow_sde", noise_level=0.7, decode=False)
    one = gen.sample(PROMPTS[1:], SEEDS[1:], steps=2, dynamics="flow_sde", noise_level=0.7, decode=False)
    torch.testing.assert_close(both.latents[1:], one.latents, rtol=0, atol=1e-5)
    other = gen.sample(PROMPTS[1:], [SEEDS[1] + 1], steps=2, dynamics="flow_sde", noise_level=0.7, decode=False)
    assert (other.latents - one.latents).abs().max() > 0.1


def test_sde_window_limits_noise_to_chosen_steps(gen: FluxGenerator) -> None:
    traj = gen.sample(PROMPTS, SEEDS, steps=4, dynamics="flow_sde", noise_level=0.9, sde_steps=[1, 2],
                      decode=False)
    assert traj.noise_levels.tolist() == pytest.approx([0.0, 0.9, 0.9, 0.0])
    assert torch.all(traj.log_probs[:, [0, 3]] == 0) and torch.all(traj.log_probs[:, [1, 2]] != 0)


def test_forward_is_deterministic(gen: FluxGenerator) -> None:
    emb = gen.encode_prompts(PROMPTS)
    x = gen.initial_noise(SEEDS)
    with torch.no_grad():
        a = gen.forward(x, torch.tensor([0.9, 0.5]), emb.prompt_embeds, emb.pooled)
        b = gen.forward(x, torch.tensor([0.9, 0.5]), emb.prompt_embeds, emb.pooled)
    assert torch.equal(a, b) and a.dtype == torch.float32


def test_forward_matches_the_diffusers_transformer_values_and_gradients(gen: FluxGenerator) -> None:
    # gen.forward runs the last single block for the image tokens only and caches the rotary
    emb = gen.encode_prompts(PROMPTS)
    x = gen.initial_noise(SEEDS)
    t = torch.tensor([0.9, 0.4])
    params = [p for p in gen.transformer.parameters() if p.requires_grad]
    runs = []
    for ours in (True, False):
        if ours:
            v = gen.forward(x, t, emb.prompt_embeds, emb.pooled, 2.0)
        else:
            v = gen.transformer(hidden_states=x, timestep=t, guidance=torch.full((2,), 2.0),
                                pooled_projections=emb.pooled, encoder_hidden_states=emb.prompt_embeds,
                                txt_ids=gen.txt_ids(MSL), img_ids=gen.img_ids(), return_dict=False)[0]
        grads = torch.autograd.grad(v.square().mean(), params, allow_unused=True)
        runs.append([v.detach()] + [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
    for got, want in zip(*runs):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert runs[0][0].abs().max() > 0.1


def test_prompt_cache_encodes_each_prompt_once(gen: FluxGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    gen.clear_prompt_cache()
    calls: list[list[str]] = []
    orig = gen.pipe.encode_prompt

    def counting(*args, **kwargs):
        calls.append(list(kwargs["prompt"]))
        return orig(*args, **kwargs)

    monkeypatch.setattr(gen.pipe, "encode_prompt", counting)
    e1 = gen.encode_prompts([PROMPTS[0], PROMPTS[0], PROMPTS[1]])
    e2 = gen.encode_prompts([PROMPTS[1], PROMPTS[0]])
    assert calls == [[PROMPTS[0], PROMPTS[1]]]
    assert e1.prompt_embeds.shape == (3, MSL, 64) and e1.pooled.shape == (3, 32)
    assert torch.equal(e1.prompt_embeds[2], e2.prompt_embeds[0])
    ref, pooled, _ = orig(prompt=[PROMPTS[1]], prompt_2=None, max_sequence_length=MSL)
    torch.testing.assert_close(e2.prompt_embeds[:1], ref)
    torch.testing.assert_close(e2.pooled[:1], pooled)


def test_long_prompts_warn_once_and_briefly(gen: FluxGenerator, caplog: pytest.LogCaptureFixture) -> None:
    # diffusers warns per batch and prints every prompt's cut-off tail, padding included; the
    # adapter says it once, in one line, and the embeddings are FluxPipeline's own
    gen.clear_prompt_cache()
    gen._clip_warned = False
    long = " and ".join(["a small red circle to the left of a large blue square"] * 12)
    with caplog.at_level(logging.WARNING):
        e = gen.encode_prompts([long, PROMPTS[0]])
        gen.encode_prompts([long + " again"])
    msgs = [r.getMessage() for r in caplog.records]
    assert not any("truncated because CLIP" in m for m in msgs), msgs
    clip = [m for m in msgs if "longer than CLIP's" in m]
    assert len(clip) == 1 and "first 77" in clip[0], msgs
    ref, pooled, _ = gen.pipe.encode_prompt(prompt=[long], prompt_2=None, max_sequence_length=MSL)
    torch.testing.assert_close(e.prompt_embeds[:1], ref)
    torch.testing.assert_close(e.pooled[:1], pooled)


def test_bad_generator_paths_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(GeneratorLoadError, match="does not exist"):
        FluxGenerator.from_pretrained(tmp_path / "missing")
    with pytest.raises(GeneratorLoadError, match="no model_index.json"):
        FluxGenerator.from_pretrained(tmp_path)
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(GeneratorLoadError, match="not a Flux pipeline"):
        FluxGenerator.from_pretrained(sd)
    with pytest.raises(GeneratorLoadError, match="could not load a Flux pipeline from nobody/no-such-flux"):
        FluxGenerator.from_pretrained("nobody/no-such-flux")  # offline: nothing cached
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(GeneratorLoadError, match="is a file"):
        FluxGenerator.from_pretrained(f)


def test_bad_sample_inputs_raise(gen: FluxGenerator) -> None:
    with pytest.raises(ValueError, match="seeds"):
        gen.sample(PROMPTS, [1], steps=2)
    with pytest.raises(ValueError, match="multiples of 8"):
        gen.sample(PROMPTS, SEEDS, steps=2, height=60)
