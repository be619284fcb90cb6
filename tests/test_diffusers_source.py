"""The diffusers image source on a tiny FluxPipeline built offline, and full-scale rows end to end
(fake LLM over a local chat server + tiny Flux -> rows that ``write_shard`` accepts)."""

from __future__ import annotations

import json
import pickle
import socket
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import pytest

from spatialt2i.data.diffusers_source import DiffusersImageSource
from spatialt2i.data.fullscale import (
    FullScaleRows, from_config, infer_relation_kinds, make_fullscale_rows, row_seed,
)
from spatialt2i.data.llm import ChatClient, LLMConfig, LLMPromptSource, PairRequest, validate_answer
from spatialt2i.data.schema import SCHEMA, decode_image, write_shard
from spatialt2i.errors import ConfigError, EndpointError
from spatialt2i.testing import ChatServer, fake_pair_llm

STEPS = 2


@dataclass(frozen=True)
class Task:  # the builder's ShardTask fields
    split: str
    index: int
    total: int
    n_rows: int
    seed: int
    first_id: int


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    from spatialt2i.gen.tiny import build_tiny_flux_pipeline

    out = tmp_path_factory.mktemp("tiny-flux") / "tiny-flux"
    build_tiny_flux_pipeline(out, seed=0)
    return out


@pytest.fixture(scope="module")
def images(flux_dir):
    # T5 padded to 32 tokens instead of 512 keeps the tiny transformer fast
    return DiffusersImageSource(flux_dir, steps=STEPS, height=64, width=64, batch_size=4,
                                extra_kwargs={"max_sequence_length": 32})


def arr(img):
    return np.asarray(img, dtype=np.int16)


def test_same_seed_same_image_other_seed_differs(images):
    p = "a small red star to the left of a large blue circle"
    a, b, c, d = images.render([p, p, p, "a green square in the center"], [11, 11, 12, 11])
    assert images.dtype.is_floating_point and str(images.device) == "cpu"
    assert np.array_equal(arr(a), arr(b))           # same prompt, same seed
    assert np.abs(arr(a) - arr(c)).max() > 20       # another seed, other noise
    assert not np.array_equal(arr(a), arr(d))       # another prompt, same noise
    # batching does not change an image: alone it comes out the same
    (solo,) = images.render([p], [11])
    assert np.abs(arr(solo) - arr(a)).max() <= 1


def test_images_have_requested_size(flux_dir):
    src = DiffusersImageSource(str(flux_dir), steps=1, height=32, width=64, guidance=None)
    imgs = src.render(["a red star", "a blue circle"], [0, 1])
    assert [im.size for im in imgs] == [(64, 32), (64, 32)] and all(im.mode == "RGB" for im in imgs)
    assert src.name == "diffusers:tiny-flux"
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        src.render(["a", "b"], [0])


def test_bad_paths_give_clear_errors(tmp_path):
    missing = tmp_path / "no-such-pipeline"
    with pytest.raises(ConfigError, match="no-such-pipeline.*no such folder"):
        DiffusersImageSource(missing)
    with pytest.raises(ConfigError, match="not a diffusers pipeline.*model_index.json"):
        DiffusersImageSource(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="weights.bin.*is a file"):
        DiffusersImageSource(tmp_path / "weights.bin")
    with pytest.raises(ConfigError, match="nobody/no-such-model.*Hub id"):  # HF_HUB_OFFLINE in CI
        DiffusersImageSource("nobody/no-such-model")
    with pytest.raises(ConfigError, match="images.dtype"):
        DiffusersImageSource(tmp_path, dtype="fp12")
    with pytest.raises(ConfigError, match="images.steps"):
        DiffusersImageSource(tmp_path, steps=0)


def test_relation_kinds_inferred():
    text = ("A cup sits above and to the left of a plate; a lamp is in the top-left corner, behind "
            "a vase that is bigger than the book, to the right of the shoe.")
    assert infer_relation_kinds(text) == ["right_of", "above_left", "behind", "bigger", "at"]
    assert infer_relation_kinds("a cat and a dog") == []


@pytest.mark.slow
def test_fullscale_rows_end_to_end(images, tmp_path):
    n_calls = {"n": 0}

    def llm(messages):  # every third answer is malformed
        n_calls["n"] += 1
        return "I cannot answer in JSON, sorry." if n_calls["n"] % 3 == 0 else fake_pair_llm(messages)

    task = Task(split="train", index=1, total=3, n_rows=4, seed=42, first_id=4)
    with ChatServer(llm, model="fake-llm") as server:
        client = ChatClient(LLMConfig(base_url=server.url, model="fake-llm", backoff=0.01))
        rows, failures = make_fullscale_rows(task, LLMPromptSource(client), images, concurrency=1)
        client.close()

    # slot 2 got the malformed 3rd answer and was retried with its next attempt's seed
    assert failures == {"bad_json": 1} and n_calls["n"] == 5
    assert [r["id"] for r in rows] == [f"train-{i:07d}" for i in range(4, 8)]
    assert [r["seed"] for r in rows] == [row_seed(42, 4, 0), row_seed(42, 5, 0), row_seed(42, 6, 1),
                                         row_seed(42, 7, 0)]
    for r in rows:
        assert r["source"] == "llm:fake-llm/diffusers:tiny-flux"
        assert r["scene"] is None and r["perturbed_scene"] is None and r["verified"] is None
        req = PairRequest.from_seed(r["seed"])
        assert r["n_perturbations"] == req.n_perturbations == len(r["perturbations"])
        assert r["perturbation_kind"] == req.kind and r["n_relations"] == req.n_relations
        assert r["prompt"] != r["perturbed_prompt"] and "left_of" in r["relation_kinds"]
        assert all(p["before"] in r["prompt"] and p["after"] in r["perturbed_prompt"] for p in r["perturbations"])
    # both images of a pair start from the row seed's noise: re-rendering reproduces them
    refs = images.render([r["prompt"] for r in rows[:2]] + [r["perturbed_prompt"] for r in rows[:2]],
                         [r["seed"] for r in rows[:2]] * 2)
    stored = [decode_image(r[c], r["id"]) for c in ("chosen", "rejected") for r in rows[:2]]
    for ref, img in zip(refs, stored):
        assert img.size == (64, 64) and np.abs(arr(ref) - arr(img)).max() <= 1

    path = tmp_path / "data" / "train-00001-of-00003.parquet"
    write_shard(rows, path)
    table = pq.read_table(path)
    assert table.num_rows == len(rows) and table.schema.names == SCHEMA.names
    back = table.to_pylist()[0]
    assert back["perturbations"] == rows[0]["perturbations"] and back["verified"] is None


def test_unreachable_llm_stops_the_shard(images):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ChatClient(LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1,
                                  backoff=0.01, timeout=2))
    with pytest.raises(EndpointError, match=f"127.0.0.1:{port}/v1"):
        make_fullscale_rows(Task("test", 0, 1, 2, 0, 0), LLMPromptSource(client), images)


@pytest.mark.slow
def test_from_config_and_picklable_make_rows(flux_dir, monkeypatch):
    monkeypatch.delenv("SPATIALT2I_LLM_MODEL", raising=False)
    with ChatServer(fake_pair_llm) as server:
        cfg = {"llm": {"base_url": server.url, "model": "fake-llm", "backoff": 0.01},
               "images": {"path": str(flux_dir), "steps": 1, "height": 32, "width": 32,
                          "extra_kwargs": {"max_sequence_length": 32}},
               "concurrency": 2}
        prompts, imgs = from_config(cfg)
        assert prompts.name == "llm:fake-llm" and imgs.name == "diffusers:tiny-flux"
        assert (imgs.height, imgs.width, imgs.steps) == (32, 32, 1)
        make_rows = pickle.loads(pickle.dumps(FullScaleRows(cfg)))
        rows, failures = make_rows(Task("test", 0, 1, 2, 7, 100))
    assert [r["id"] for r in rows] == ["test-0000100", "test-0000101"] and failures == {}
    validate_answer(json.dumps({k: rows[0][k] for k in ("prompt", "perturbed_prompt", "perturbations",
                                                        "n_objects", "n_relations")}))
    with pytest.raises(ConfigError, match="imgs"):
        from_config({"imgs": {}})
    with pytest.raises(ConfigError, match="'path'"):
        from_config({"llm": {"base_url": "http://x/v1", "model": "m"}, "images": {}})
    with pytest.raises(ConfigError, match="stpes"):
        from_config({"llm": {"base_url": "http://x/v1", "model": "m"},
                     "images": {"path": str(flux_dir), "stpes": 3}})


def test_device_and_dtype_defaults(monkeypatch):
    import torch

    from spatialt2i.data.diffusers_source import default_device, resolve_dtype

    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype(None, "cuda:1") == torch.bfloat16
    assert resolve_dtype("fp16", "cuda") == torch.float16 and resolve_dtype(torch.float64, "cpu") == torch.float64
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")  # as under accelerate launch / torchrun
    assert default_device() == "cuda:3"
    monkeypatch.delenv("LOCAL_RANK")
    assert default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"
