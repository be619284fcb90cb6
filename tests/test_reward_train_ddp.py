"""Two CPU processes (gloo, via torchrun) train the same model as one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_reward_train import TRAIN_OVERRIDES, build_tiny_dataset, cli_env, tiny_backbone, trainable_state

torch.set_num_threads(1)


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(tmp_path: Path) -> None:
    tiny = tiny_backbone(tmp_path / "tiny")
    data = build_tiny_dataset(tmp_path / "ds")
    cfg = tmp_path / "cfg.json"
    # global batch 4 pairs, micro batch 2: one process accumulates 2 micro batches, two processes 1 each
    cfg.write_text(json.dumps({**TRAIN_OVERRIDES, "max_steps": 4, "save_every": 0, "eval_every": 2,
                               "base_model": str(tiny)}))
    args = ["-m", "spatialt2i.cli", "reward", "train", "--config", str(cfg), "--data", str(data), "--quiet"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=cli_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args, "--out", str(tmp_path / "two")], env=cli_env(), capture_output=True, text=True,
                         timeout=400)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "4 steps (16 pairs" in two.stdout and two.stdout.count("steps (") == 1  # one summary: main process only

    a, b = trainable_state(tmp_path / "one" / "model"), trainable_state(tmp_path / "two" / "model")
    assert a.keys() == b.keys()
    moved = max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k)
    assert moved > 1e-4  # the adapter trained, so agreement below means something
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=k)

    def losses(run: str) -> list[float]:
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [r["train/loss"] for r in rows if "train/loss" in r]

    assert losses("two") == pytest.approx(losses("one"), abs=1e-6)
    def evals(run: str) -> list[dict]:
        return [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines() if "eval/acc" in x]

    from spatialt2i.reward.pair_table import PairTable

    n_eval = min(TRAIN_OVERRIDES["eval_pairs"], len(PairTable(data, "test")))
    assert evals("two") and evals("two")[0]["eval/pairs"] == n_eval  # eval sharded over ranks, each pair once
    assert evals("two")[0]["eval/mu_gap"] == pytest.approx(evals("one")[0]["eval/mu_gap"], abs=1e-6)
