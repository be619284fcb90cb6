"""Flow-matching batches of the generator's pretraining: ids encode as FluxPipeline does, worker
batches are well formed and reproducible, and a run on another device or with bad settings fails clearly."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from spatialt2i.errors import ConfigError  # noqa: E402
from spatialt2i.gen.fm_data import FMBatches, encode_ids, make_fm_batch, tokenize_prompts  # noqa: E402
from spatialt2i.gen.pretrain import Pretrainer, PretrainConfig, world_generator_path  # noqa: E402
from spatialt2i.gen.scene_stream import SceneStream  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe():
    from spatialt2i.gen.loading import load_flux_pipeline

    return load_flux_pipeline(str(world_generator_path()), torch.float32, "cpu")


def _cfg(**kw) -> PretrainConfig:
    base = dict(batch=3, max_sequence_length=32, object_weight=5.0, grounding_weight=0.5)
    base.update(kw)
    return PretrainConfig(**base)


def test_encode_ids_equal_encode_prompt(pipe) -> None:
    prompts = ["a red square left of a blue circle", "", "a small green triangle above a large red star"]
    with torch.no_grad():
        want_seq, want_pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=torch.device("cpu"),
                                                      max_sequence_length=32)
        seq, pooled, attn = encode_ids(pipe, *tokenize_prompts(pipe, prompts, 32))
    assert attn is None
    assert torch.equal(seq, want_seq) and torch.equal(pooled, want_pooled)


def test_inline_batches_follow_the_stream(pipe) -> None:
    cfg = _cfg()
    got = FMBatches(SceneStream(cfg, 5), cfg, pipe, 8).next()
    want = make_fm_batch(SceneStream(cfg, 5), cfg, pipe, 8)
    assert torch.equal(got.images, want.images) and torch.equal(got.t5_ids, want.t5_ids)
    assert got.images.shape == (3, 64, 64, 3) and got.t5_ids.shape == (3, 32) and got.clip_ids.shape == (3, 77)
    assert got.token_weight.shape == (3, 64)
    assert torch.allclose(got.token_weight.mean(1), torch.ones(3))
    assert len(got.grounding) > 0 and got.grounding.masks.shape[1] == 64


def test_worker_batches_are_reproducible_and_seeded(pipe) -> None:
    cfg = _cfg(object_weight=1.0, grounding_weight=0.0)
    firsts = []
    for seed in ([1, 2], [1, 2], [1, 3]):
        src = FMBatches(SceneStream(cfg, 0), cfg, pipe, 8, workers=2, seed=seed)
        try:
            a, b = src.next(), src.next(easy=True)
        finally:
            src.close()
        assert a.token_weight is None and a.grounding is None and len(b) == 3
        assert not torch.equal(a.images, b.images)          # the two workers draw different scenes
        firsts.append(a)
    assert torch.equal(firsts[0].images, firsts[1].images) and torch.equal(firsts[0].t5_ids, firsts[1].t5_ids)
    assert not torch.equal(firsts[0].images, firsts[2].images)


def test_bad_device_and_worker_count_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data_workers"):
        PretrainConfig(data_workers=-1)
    with pytest.raises(ConfigError, match="device: 'tpu7'"):
        Pretrainer(PretrainConfig(device="tpu7"), tmp_path / "a", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            Pretrainer(PretrainConfig(device="cuda"), tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pretrain_with_workers(tmp_path: Path) -> None:
    cfg = PretrainConfig(minutes=0.3, vae_share=0.3, vae_batch=4, batch=8, eval_minutes=0, eval_prompts=4,
                         eval_steps=2, max_sequence_length=32, log_every=1, checkpoint_minutes=100, text_steps=3,
                         text_hint_weight=1.0, grounding_weight=0.5, object_weight=5.0, ema_decay=0.9,
                         device="cuda", data_workers=2)
    tr = Pretrainer(cfg, tmp_path / "gen", progress=False)
    res = tr.run()
    assert res["steps"] > 0 and 0.0 <= res["presence"] <= 1.0
    assert next(tr.pipe.transformer.parameters()).is_cuda
    tr2 = Pretrainer(cfg, tmp_path / "gen", resume=True, progress=False)
    assert tr2.step == tr.step and next(tr2.pipe.vae.parameters()).is_cuda
