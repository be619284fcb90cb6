"""GRPO trainer, reward scorers, LoRA format and config errors (rl/trainer.py, rl/rewards.py, rl/lora.py)."""

from __future__ import annotations

import http.server
import json
import math
import os
import socket
import threading
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from spatialt2i.config import from_dict  # noqa: E402
from spatialt2i.errors import ConfigError, EndpointError  # noqa: E402
from spatialt2i.gen.flux import FluxGenerator  # noqa: E402
from spatialt2i.gen.tiny import build_tiny_flux_pipeline  # noqa: E402
from spatialt2i.rl.config import RLConfig, load_rl_config  # noqa: E402
from spatialt2i.rl.rewards import HTTPScorer, MixScorer, OracleScorer, RedChannelScorer, build_scorer  # noqa: E402
from spatialt2i.rl.trainer import GRPOTrainer  # noqa: E402

torch.set_num_threads(1)

G = 4


def tiny_config(**over: Any) -> RLConfig:
    data: dict[str, Any] = {
        "seed": 1, "iterations": 3, "prompts_per_iteration": 2, "checkpoint_every": 1,
        "sample": {"group_size": G, "steps": 3, "noise_level": 0.9, "height": 64, "width": 64,
                   "max_sequence_length": 32},
        "train": {"topk": 1, "lr": 1e-3, "clip_range": 1e-4, "train_steps": [0, 1]},
        "reward": {"kind": "red"}, "prompts": {"eval_prompts": 0},
        "lora": {"rank": 4, "alpha": 8},
    }
    for k, v in over.items():
        node = data
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return from_dict(RLConfig, data)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny_flux_grpo")
    build_tiny_flux_pipeline(d, seed=0, num_layers=1, num_single_layers=1)
    return d


def make_trainer(tiny_dir: Path, cfg: RLConfig, out: Path | None = None) -> GRPOTrainer:
    gen = FluxGenerator.from_pretrained(tiny_dir, height=64, width=64, max_sequence_length=32)
    return GRPOTrainer(cfg, gen, RedChannelScorer(), out)


def lora_params(tr: GRPOTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in tr.params]


# ---------------------------------------------------------------- ratio, top-k, update


def test_ratio_is_exactly_one_before_the_first_update(tiny_dir: Path) -> None:
    tr = make_trainer(tiny_dir, tiny_config(**{"train.updates_per_iteration": 2}))
    try:
        groups = tr.rollout(0)
        assert [g.index for g in groups] == [0, 1]
        kept = torch.tensor([0, 3])
        with torch.no_grad():
            lp, _, _ = tr.gen.replay(groups[0].traj, tr.steps, index=kept)
        assert torch.equal(lp, groups[0].traj.log_probs[kept][:, tr.steps])
        before = lora_params(tr)
        stats = tr.update(groups)
        # two optimizer steps: the first sees ratio 1 exactly, the second a moved policy
        assert stats["ratio"] != 1.0 or stats["approx_kl"] > 0
        assert any(not torch.equal(a, b) for a, b in zip(before, tr.params))
        with torch.no_grad():
            lp_after, _, _ = tr.gen.replay(groups[0].traj, tr.steps, index=kept)
        assert not torch.equal(lp_after, lp)
    finally:
        tr.close()


def test_single_update_sees_ratio_one_and_no_clipping(tiny_dir: Path) -> None:
    tr = make_trainer(tiny_dir, tiny_config())
    try:
        stats = tr.update(tr.rollout(0))
    finally:
        tr.close()
    assert stats["ratio"] == 1.0 and stats["clip_frac"] == 0.0 and stats["approx_kl"] == 0.0
    assert stats["kept_samples"] == 2 * 2  # top-1 + bottom-1 of two groups
    assert stats["groups"] == 2


def test_only_top_and_bottom_k_samples_drive_the_update(tiny_dir: Path) -> None:
    """Hand-made group: rewards [0.3, 0.9, 0.1, 0.5] with k=1 keep samples 1 and 2 only."""
    cfg = tiny_config(prompts_per_iteration=1)

    def grads_after(mutate_unkept: bool) -> list[torch.Tensor]:
        tr = make_trainer(tiny_dir, cfg)
        try:
            g = tr.rollout(0)[0]
            g.scores = {"reward": torch.tensor([0.3, 0.9, 0.1, 0.5])}
            _, adv, mask = tr.advantages([g])
            assert mask[0].tolist() == [False, True, True, False]
            assert adv[0, 0] == 0 and adv[0, 3] == 0 and adv[0, 1] > 0 > adv[0, 2]
            if mutate_unkept:  # a different trajectory for the samples that are not kept
                g.traj.latents[[0, 3]] = torch.randn_like(g.traj.latents[[0, 3]])
            tr.optimizer = torch.optim.SGD(tr.params, lr=1.0)
            before = lora_params(tr)
            tr.update([g])
            return [b - a for a, b in zip(before, lora_params(tr))]
        finally:
            tr.close()

    plain, mutated = grads_after(False), grads_after(True)
    assert any(d.abs().max() > 0 for d in plain)
    for a, b in zip(plain, mutated):
        assert torch.equal(a, b)


def test_zero_std_group_gives_no_update(tiny_dir: Path) -> None:
    tr = make_trainer(tiny_dir, tiny_config(prompts_per_iteration=1))
    try:
        g = tr.rollout(0)[0]
        g.scores = {"reward": torch.full((G,), 0.5)}
        before = lora_params(tr)
        stats = tr.update([g])
        assert stats["zero_std_groups"] == 1
        assert all(torch.equal(a, b) for a, b in zip(before, tr.params))
    finally:
        tr.close()


def test_kl_to_lora_disabled_reference(tiny_dir: Path) -> None:
    tr = make_trainer(tiny_dir, tiny_config(**{"train.kl_coef": 1.0, "train.updates_per_iteration": 2}))
    try:
        stats = tr.update(tr.rollout(0))
        # first step: LoRA B = 0 so policy == reference (KL 0); second step: moved away, KL > 0
        assert stats["kl"] > 0
    finally:
        tr.close()


def test_non_finite_reward_stops_the_group(tiny_dir: Path) -> None:
    class NaNScorer:
        def score(self, prompts, images, metadata):
            return {"reward": torch.tensor([float("nan")] * len(prompts))}

    gen = FluxGenerator.from_pretrained(tiny_dir, height=64, width=64, max_sequence_length=32)
    tr = GRPOTrainer(tiny_config(), gen, NaNScorer())
    try:
        with pytest.raises(ValueError, match="finite"):
            tr.rollout(0)
    finally:
        tr.close()


# ---------------------------------------------------------------- LoRA format


def test_saved_lora_loads_with_flux_pipeline_load_lora_weights(tiny_dir: Path, tmp_path: Path) -> None:
    from diffusers import FluxPipeline

    tr = make_trainer(tiny_dir, tiny_config(**{"train.lr": 0.05}), out=tmp_path)
    try:
        tr.update(tr.rollout(0))
        tr.save_final()
        emb = tr.gen.encode_prompts(["a red circle"])
        x = tr.gen.initial_noise([5])
        with torch.no_grad():
            v_trained = tr.gen.forward(x, 0.7, emb.prompt_embeds, emb.pooled)
    finally:
        tr.close()
    pipe = FluxPipeline.from_pretrained(str(tiny_dir))
    fresh = FluxGenerator(pipe, height=64, width=64, max_sequence_length=32)
    with torch.no_grad():
        v_base = fresh.forward(x, 0.7, emb.prompt_embeds, emb.pooled)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    with torch.no_grad():
        v_loaded = fresh.forward(x, 0.7, emb.prompt_embeds, emb.pooled)
    assert (v_trained - v_base).abs().max() > 1e-5
    torch.testing.assert_close(v_loaded, v_trained, rtol=1e-5, atol=1e-6)  # alpha != rank honoured


def test_merged_lora_linear_matches_peft_forward_and_gradients(tiny_dir: Path) -> None:
    from peft.tuners.lora import Linear as LoraLinear

    from spatialt2i.rl.lora import adapter_disabled, add_lora

    gen = FluxGenerator.from_pretrained(tiny_dir, height=64, width=64, max_sequence_length=32)
    add_lora(gen.transformer, 4, 8, ["to_q", "to_k", "to_v", "to_out.0"], seed=0)
    layers = [m for m in gen.transformer.modules() if isinstance(m, LoraLinear)]
    assert layers and all(type(m) is not LoraLinear for m in layers)  # all take the merged path
    m = layers[0]
    a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
    with torch.no_grad():
        b.normal_()
    x = torch.randn(3, 5, m.in_features)
    runs = []
    for forward in (m.forward, lambda t: LoraLinear.forward(m, t)):  # merged, then peft's own
        out = forward(x)
        out.square().sum().backward()
        runs.append((out.detach(), a.grad.clone(), b.grad.clone()))
        a.grad = b.grad = None
    for got, want in zip(*runs):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad(), adapter_disabled(gen.transformer):
        torch.testing.assert_close(m(x), m.base_layer(x), rtol=0, atol=0)
    # with LoRA dropout the adapter cannot be folded into the weight: peft's forward stays
    gen2 = FluxGenerator.from_pretrained(tiny_dir, height=64, width=64, max_sequence_length=32)
    add_lora(gen2.transformer, 4, 8, ["to_q"], dropout=0.1, seed=0)
    assert any(type(m) is LoraLinear for m in gen2.transformer.modules())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_bf16_base_trains_an_fp32_adapter_through_peft(tiny_dir: Path, device: str) -> None:
    """The CUDA setting (bf16 weights), also run on the CPU at tiny size: the adapter stays fp32 and
    takes peft's low-rank path, the first update's ratio is 1, and the update moves the adapter."""
    from peft.tuners.lora import Linear as LoraLinear

    gen = FluxGenerator.from_pretrained(tiny_dir, torch_dtype=torch.bfloat16, device=device, height=64, width=64,
                                        max_sequence_length=32)
    tr = GRPOTrainer(tiny_config(**{"train.kl_coef": 0.01, "prompts_per_iteration": 1}), gen, RedChannelScorer())
    try:
        assert tr.params and all(p.dtype == torch.float32 for p in tr.params)
        assert gen.transformer.dtype == torch.bfloat16
        assert any(type(m) is LoraLinear for m in gen.transformer.modules())  # not folded into bf16
        before = [p.detach().clone() for p in tr.params]
        stats = tr.update(tr.rollout(0))
        assert stats["ratio"] == pytest.approx(1.0, abs=1e-6)
        assert all(torch.isfinite(p).all() for p in tr.params)
        assert any((p - q).abs().max() > 0 for p, q in zip(tr.params, before))
    finally:
        tr.close()


def test_gradient_checkpointing_gives_the_same_update(tiny_dir: Path) -> None:
    grads = []
    for ckpt in (False, True):
        cfg = tiny_config(**{"train.gradient_checkpointing": ckpt, "train.reuse_rollout_graph": "off",
                             "train.kl_coef": 0.01, "prompts_per_iteration": 1})
        tr = make_trainer(tiny_dir, cfg)
        try:
            assert tr.gen.transformer.is_gradient_checkpointing == ckpt
            groups = tr.rollout(0)
            tr.optimizer.step = lambda *a, **k: None  # keep the gradients for the comparison
            tr.optimizer.zero_grad = lambda *a, **k: None
            tr.update(groups)
            grads.append([p.grad.clone() for p in tr.params])
        finally:
            tr.close()
    assert any(g.abs().max() > 0 for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- rewards


IMAGES = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
PROMPTS = ["a red square", "a blue square"]
META = [{}, {}]


class _Handler(http.server.BaseHTTPRequestHandler):
    answer: bytes = b""
    status: int = 200
    calls: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append(json.loads(body))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(answer: bytes, status: int = 200):
    handler = type("H", (_Handler,), {"answer": answer, "status": status, "calls": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


def test_http_scorer_reads_a_good_answer() -> None:
    server, handler = _serve(json.dumps({"reward": [1.5, -0.5], "mu": [1.5, -0.5], "note": "ok"}).encode())
    try:
        out = HTTPScorer(f"http://127.0.0.1:{server.server_address[1]}", retries=0).score(PROMPTS, IMAGES, META)
    finally:
        server.shutdown()
    assert out["reward"].tolist() == [1.5, -0.5] and "mu" in out and "note" not in out
    sent = handler.calls[0]
    assert sent["prompts"] == PROMPTS and len(sent["images"]) == 2 and sent["metadata"] == META


@pytest.mark.parametrize("answer,status,why", [
    (b"<html>oops</html>", 200, "not JSON"),
    (json.dumps({"score": [1, 2]}).encode(), 200, "no 'reward'"),
    (json.dumps({"reward": [1.0]}).encode(), 200, "list of 2"),
    (json.dumps({"reward": [1.0, "NaN"]}).encode(), 200, "non-finite or non-numeric"),
    (b"{}", 503, "HTTP 503"),
])
def test_http_scorer_garbage_is_retried_then_a_clear_error(answer: bytes, status: int, why: str) -> None:
    server, handler = _serve(answer, status)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(EndpointError, match=why) as err:
            HTTPScorer(url, retries=2, backoff=0.01).score(PROMPTS, IMAGES, META)
    finally:
        server.shutdown()
    assert url in str(err.value) and "3 attempt" in str(err.value)
    assert len(handler.calls) == 3


def test_http_scorer_does_not_retry_a_rejected_request() -> None:
    server, handler = _serve(json.dumps({"field": "images[1]", "error": "not valid base64"}).encode(), 400)
    try:
        with pytest.raises(EndpointError, match=r"rejected the request: HTTP 400.*images\[1\]"):
            HTTPScorer(f"http://127.0.0.1:{server.server_address[1]}", retries=3, backoff=0.01).score(
                PROMPTS, IMAGES, META)
    finally:
        server.shutdown()
    assert len(handler.calls) == 1


def test_http_scorer_server_down_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointError, match=rf"127.0.0.1:{port}/score failed after 2 attempt.*unreachable"):
        HTTPScorer(f"http://127.0.0.1:{port}", retries=1, backoff=0.01, timeout=2).score(PROMPTS, IMAGES, META)


def test_oracle_scorer_and_mix() -> None:
    from spatialt2i.rl.config import PromptSettings
    from spatialt2i.rl.prompts import train_prompts
    from spatialt2i.world.render import render
    from spatialt2i.world.scene import Scene

    p = train_prompts(PromptSettings(eval_prompts=0), seed=0, iteration=0, n=1)[0]
    good = render(Scene.from_json(p.scene), 64)
    blank = Image.new("RGB", (64, 64), "white")
    out = OracleScorer().score([p.text] * 2, [good, blank], [p.metadata] * 2)
    assert out["reward"].tolist() == [1.0, 0.0] and out["all_correct"].tolist() == [1.0, 0.0]
    mix = MixScorer({"oracle": (2.0, OracleScorer()), "red": (1.0, RedChannelScorer())})
    m = mix.score([p.text] * 2, [good, blank], [p.metadata] * 2)
    torch.testing.assert_close(m["reward"], 2.0 * out["reward"] + m["red/reward"])
    with pytest.raises(ValueError, match="metadata\\[0\\] has no 'scene'"):
        OracleScorer().score([p.text], [good], [{}])
    dense = OracleScorer(presence_weight=0.5).score([p.text] * 2, [good, blank], [p.metadata] * 2)
    torch.testing.assert_close(dense["reward"], out["reward"] + 0.5 * out["presence"])
    assert dense["reward"].tolist() == [1.5, 0.0]
    with pytest.raises(ConfigError, match="presence_weight"):
        load_rl_config("world", {"reward.presence_weight": -1})
    # graded relations: the solver's layout holds every relation with margin >= 1, a blank image none
    soft = build_scorer(load_rl_config("world", {"reward.soft_tau": 0.5}).reward)
    r = soft.score([p.text] * 2, [good, blank], [p.metadata] * 2)
    assert float(r["reward"][0]) >= 1 / (1 + math.exp(-2.0)) - 1e-3 and float(r["reward"][1]) == 0.0
    assert r["all_correct"].tolist() == [1.0, 0.0]
    with pytest.raises(ConfigError, match="soft_tau"):
        load_rl_config("world", {"reward.soft_tau": -0.1})


# ---------------------------------------------------------------- config and CLI errors


def test_topk_above_half_the_group_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="topk=13 exceeds half of sample.group_size=24"):
        load_rl_config("flux-dev", {"train.topk": 13})
    assert load_rl_config("flux-dev", {"train.topk": 12}).train.topk == 12


def test_presets_match_the_paper_and_the_world() -> None:
    c = load_rl_config("flux-dev")
    assert (c.lora.rank, c.train.lr, c.sample.group_size, c.train.topk, c.train.clip_range, c.train.kl_coef,
            c.sample.steps, c.sample.guidance, c.sample.height, c.sample.width) == \
        (32, 3e-4, 24, 6, 1e-4, 0.01, 6, 3.5, 512, 512)
    assert c.trained_steps() == [0, 1, 2, 3, 4]  # the last rollout step is skipped
    w = load_rl_config("world")
    assert (w.sample.height, w.prompts.min_objects, w.prompts.max_objects, w.prompts.max_relations) == (64, 2, 4, 3)


def test_rl_train_with_a_non_flux_generator_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from spatialt2i.cli import main

    bad = tmp_path / "sd"
    bad.mkdir()
    (bad / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    rc = main(["rl", "train", "--config", "world", "--generator", str(bad), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert f"generator path {bad}" in capsys.readouterr().err
    rc = main(["rl", "train", "--config", "world", "--generator", str(tmp_path / "missing"), "--out",
               str(tmp_path / "out")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["rl", "train", "--config", "world", "--set", "train.topk=7", "--generator", str(bad),
               "--out", str(tmp_path / "out")])
    assert rc == 2 and "topk=7 exceeds half" in capsys.readouterr().err


def test_gradient_accumulation_over_micro_batches_equals_one_pass(tiny_dir: Path) -> None:
    def deltas(micro_batch: int) -> list[torch.Tensor]:
        tr = make_trainer(tiny_dir, tiny_config(**{"train.micro_batch": micro_batch, "train.max_grad_norm": 0.0}))
        tr.optimizer = torch.optim.SGD(tr.params, lr=1.0)
        try:
            before = lora_params(tr)
            tr.update(tr.rollout(0))
            return [p.detach() - b for p, b in zip(tr.params, before)]
        finally:
            tr.close()

    whole, accumulated = deltas(0), deltas(1)
    scale = max(float(d.abs().max()) for d in whole)
    assert scale > 0
    for a, b in zip(whole, accumulated):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale)


def test_bench_indomain_cli_reports_base_and_lora(tiny_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    from spatialt2i.cli import main

    tr = make_trainer(tiny_dir, tiny_config(**{"train.lr": 0.05}), out=tmp_path / "run")
    try:
        tr.update(tr.rollout(0))
        tr.save_final()
    finally:
        tr.close()
    rc = main(["bench", "indomain", "--generator", str(tiny_dir), "--lora", str(tmp_path / "run" / "lora"),
               "--n", "3", "--steps", "2", "--max-sequence-length", "32", "--json", "--out", str(tmp_path / "b")])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"base", "lora", "change"}
    change = report.pop("change")
    base, lora = report["base"]["correct"], report["lora"]["correct"]
    assert len(base) == len(lora) == 3 and report["base"]["all_correct"] == pytest.approx(sum(base) / 3)
    assert change["only_before"] == sum(b > a for b, a in zip(base, lora))
    assert change["only_after"] == sum(a > b for b, a in zip(base, lora))
    for r in report.values():
        assert r["n_prompts"] == 3 and r["reward"] == "oracle"
        assert 0 <= r["all_correct"] <= 1 and 0 <= r["presence"] <= 1
        assert sum(v["n"] for v in r["per_relation"].values()) >= 3
    grid = Image.open(tmp_path / "b" / "grid.png")
    assert grid.size[1] > 2 * 64  # a base row and a LoRA row
    rc = main(["bench", "indomain", "--generator", str(tiny_dir), "--lora", str(tmp_path / "nolora"), "--n", "1",
               "--steps", "1", "--max-sequence-length", "32"])
    assert rc == 2 and "no pytorch_lora_weights.safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("topk", [0, 1])
def test_update_through_the_rollout_graph_equals_replay(tiny_dir: Path, topk: int) -> None:
    def deltas(mode: str) -> tuple[list[torch.Tensor], dict[str, float]]:
        tr = make_trainer(tiny_dir, tiny_config(**{"train.reuse_rollout_graph": mode, "train.topk": topk,
                                                   "train.max_grad_norm": 0.0}))
        tr.optimizer = torch.optim.SGD(tr.params, lr=1.0)
        try:
            assert tr.reuse_graph == (mode == "on")
            before = lora_params(tr)
            groups = tr.rollout(0)
            assert all((g.traj.graph_log_probs is not None) == (mode == "on") for g in groups)
            stats = tr.update(groups)
            return [p.detach() - b for p, b in zip(tr.params, before)], stats
        finally:
            tr.close()

    (replayed, s_off), (reused, s_on) = deltas("off"), deltas("on")
    assert s_on["ratio"] == 1.0 and s_off["ratio"] == 1.0
    scale = max(float(d.abs().max()) for d in replayed)
    assert scale > 0
    for a, b in zip(replayed, reused):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale)


def test_reuse_rollout_graph_auto_rule_and_bad_combinations() -> None:
    from spatialt2i.rl.trainer import reuse_rollout_graph

    def tc(**over: Any) -> Any:
        return tiny_config(**{"sample.group_size": 24, **{f"train.{k}": v for k, v in over.items()}}).train

    assert reuse_rollout_graph(tc(topk=0), 24, 0.0, 10_000)            # all kept, small model
    assert not reuse_rollout_graph(tc(topk=6), 24, 0.0, 10_000)        # half the group dropped
    assert reuse_rollout_graph(tc(topk=8), 24, 0.0, 10_000)            # two thirds kept
    assert not reuse_rollout_graph(tc(topk=0), 24, 0.0, 12_000_000_000)   # FLUX.1-dev size
    assert not reuse_rollout_graph(tc(topk=0, kl_coef=0.01), 24, 0.0, 10_000)
    assert not reuse_rollout_graph(tc(topk=0, updates_per_iteration=2), 24, 0.0, 10_000)
    assert not reuse_rollout_graph(tc(topk=0), 24, 0.1, 10_000)        # LoRA dropout
    assert not reuse_rollout_graph(tc(topk=0, reuse_rollout_graph="off"), 24, 0.0, 10_000)
    with pytest.raises(ConfigError, match="reuse_rollout_graph 'on' needs"):
        reuse_rollout_graph(tc(topk=0, kl_coef=0.01, reuse_rollout_graph="on"), 24, 0.0, 10_000)
    with pytest.raises(ConfigError, match="reuse_rollout_graph must be"):
        tc(reuse_rollout_graph="yes")
