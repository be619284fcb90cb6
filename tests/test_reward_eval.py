"""reward eval: the accuracy table, random/oracle baselines, the VLM judge against a local chat server, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialt2i.errors import DatasetError
from test_reward_train import build_tiny_dataset, cli_env, rewrite_dataset, tiny_backbone

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dataset(tmp_path_factory.mktemp("ds") / "world", pairs=30, seed=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spatialt2i.reward.model import LoraSettings, SpatialScore

    root = tmp_path_factory.mktemp("model")
    m = SpatialScore.from_backbone(tiny_backbone(root / "tiny"), lora=LoraSettings(r=4, alpha=8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m.save_pretrained(root / "ckpt")


def test_accuracy_table_splits_and_buckets() -> None:
    from spatialt2i.reward.evaluate import accuracy_table, relation_bucket

    t = accuracy_table([1, 0, 1, 0.5, 1], [1, 1, 2, 3, None], ["flip", "swap", "multi", "multi", "flip"],
                       [2, 5, 7, 12, None])
    assert t["overall"] == {"acc": pytest.approx(0.7), "n": 5}
    assert t["1-pert"] == {"acc": pytest.approx(2 / 3), "n": 3}      # n_perturbations None counts as 1
    assert t["2-3-pert"] == {"acc": pytest.approx(0.75), "n": 2}
    assert t["by_kind"]["multi"] == {"acc": pytest.approx(0.75), "n": 2} and t["by_kind"]["swap"]["acc"] == 0
    assert list(t["by_relations"]) == ["1-3", "4-6", "7-9", "10+", "unknown"]
    assert [relation_bucket(n) for n in (3, 4, 9, 10, 0)] == ["1-3", "4-6", "7-9", "10+", "0"]
    with pytest.raises(DatasetError, match="no usable pairs"):
        accuracy_table([], [], [], [])


def test_eval_table_with_model_random_and_oracle(ckpt: Path, dataset: Path, tmp_path: Path) -> None:
    from spatialt2i.reward.evaluate import MODEL_NAME, evaluate_dataset, format_table
    from spatialt2i.reward.judges import OracleJudge, RandomJudge
    from spatialt2i.reward.model import SpatialScore

    bad_id = "train-0000002"

    def corrupt(split: str, rows: list) -> None:
        if split == "train":
            rows[2]["rejected"] = {"bytes": b"GIF89a nope", "path": None}

    data = rewrite_dataset(dataset, tmp_path / "ds", corrupt)
    rep = evaluate_dataset(ckpt, data, split="train", batch_size=8, baselines=[RandomJudge(0), OracleJudge()],
                           keep_credit=True)
    n_rows = 27  # 30 pairs, 3 in the test split
    assert rep["pairs"] == n_rows - 1 and [s["id"] for s in rep["skipped"]] == [bad_id]
    assert len(rep["ids"]) == rep["pairs"] and bad_id not in rep["ids"]
    for name, credit in rep["credit"].items():                 # per-pair credit behind each column
        assert sum(credit) / len(credit) == pytest.approx(rep["systems"][name]["overall"]["acc"])
    assert "'rejected'" in rep["skipped"][0]["reason"]
    systems = rep["systems"]
    assert list(systems) == [MODEL_NAME, "random", "oracle"]
    for t in systems.values():
        assert t["overall"]["n"] == rep["pairs"]
        assert t["1-pert"]["n"] + t["2-3-pert"]["n"] == rep["pairs"]
        assert sum(v["n"] for v in t["by_kind"].values()) == rep["pairs"]
        assert sum(v["n"] for v in t["by_relations"].values()) == rep["pairs"]
    assert systems["oracle"]["overall"]["acc"] == 1.0   # world pairs are oracle-verified: the upper bound
    # the model's column is its own scores: recompute accuracy and mean gap directly
    model = SpatialScore.from_pretrained(ckpt)
    from spatialt2i.reward.collate import iter_pair_batches

    gaps = []
    for b in iter_pair_batches(data, "train", batch_size=64):
        s = model.score(*b.model_inputs())["mu"]
        gaps += (s[:len(b)] - s[len(b):]).tolist()
    assert systems[MODEL_NAME]["overall"]["acc"] == pytest.approx(np.mean([g > 0 for g in gaps]))
    assert systems[MODEL_NAME]["mu_gap"] == pytest.approx(np.mean(gaps), abs=1e-6)
    text = format_table(rep)
    assert "SpatialScore" in text and "oracle" in text and "100.0%" in text and bad_id in text
    json.dumps(rep)  # JSON-ready


def test_eval_cli_json_and_named_errors(ckpt: Path, dataset: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "spatialt2i.cli", "reward", "eval", *args], env=cli_env(),
                              capture_output=True, text=True, timeout=300)

    ok = run("--model", str(ckpt), "--data", str(dataset), "--baselines", "random,oracle", "--json")
    assert ok.returncode == 0, ok.stderr[-2000:]
    rep = json.loads(ok.stdout)
    assert rep["split"] == "test" and set(rep["systems"]) == {"SpatialScore", "random", "oracle"}
    missing = run("--model", str(tmp_path / "no-model-here"), "--data", str(dataset))
    assert missing.returncode == 2 and "no-model-here" in missing.stderr and "Traceback" not in missing.stderr
    no_scene = rewrite_dataset(dataset, tmp_path / "no-scene", drop=("scene",))
    bad = run("--data", str(no_scene), "--baselines", "oracle")
    assert bad.returncode == 2 and "oracle" in bad.stderr and "scene" in bad.stderr
    unknown = run("--data", str(dataset), "--baselines", "gpt9")
    assert unknown.returncode == 2 and "gpt9" in unknown.stderr


def test_dataset_without_needed_columns_is_named(dataset: Path, tmp_path: Path) -> None:
    from spatialt2i.reward.evaluate import evaluate_dataset
    from spatialt2i.reward.judges import RandomJudge

    no_rejected = rewrite_dataset(dataset, tmp_path / "nr", drop=("rejected",))
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['rejected'\]"):
        evaluate_dataset(None, no_rejected, baselines=[RandomJudge()])
    with pytest.raises(DatasetError, match="'valid'"):
        evaluate_dataset(None, dataset, split="valid", baselines=[RandomJudge()])


def test_paired_test_counts_discordant_pairs_and_gives_the_exact_p() -> None:
    from spatialt2i.errors import ConfigError
    from spatialt2i.reward.evaluate import paired_test

    def rep(credit: list[float], ids: list[str] | None = None) -> dict:
        return {"ids": ids or [str(i) for i in range(len(credit))], "credit": {"SpatialScore": credit}}

    a = rep([1, 1, 1, 1, 1, 0, 0.5, 1])
    b = rep([0, 0, 0, 0, 0, 0, 1, 1])                            # a alone right 5 times, b never (0.5: neither)
    assert paired_test(a, b) == {"only_a": 5, "only_b": 0, "p": pytest.approx(2 / 32)}
    assert paired_test(b, a)["only_b"] == 5
    assert paired_test(a, a) == {"only_a": 0, "only_b": 0, "p": 1.0}
    # 18 vs 13 discordant: two-sided exact binomial p = 2 * P(X <= 13 | n=31, 1/2)
    c = rep([1.0] * 18 + [0.0] * 13)
    d = rep([0.0] * 18 + [1.0] * 13)
    assert paired_test(c, d)["p"] == pytest.approx(0.4731, abs=1e-4)
    with pytest.raises(ConfigError, match="same pairs"):
        paired_test(a, rep([1] * 8, ids=list("abcdefgh")))
    with pytest.raises(ConfigError, match="keep_credit"):
        paired_test(a, {"systems": {}})
