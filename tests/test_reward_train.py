"""reward train: presets, step order, bad rows, outputs, and kill-and-resume giving the same final model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialt2i.errors import ConfigError, DatasetError

torch.set_num_threads(1)

TRAIN_OVERRIDES = dict(batch_size=4, micro_batch_size=2, max_steps=6, save_every=2, eval_every=3, eval_pairs=4,
                       log_every=1, warmup_steps=1, lr=5e-3, head_lr=5e-3, max_minutes=0.0,
                       lora={"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]})


# ---- shared helpers (imported by the other reward test files) ----------------------------------------

def build_tiny_dataset(out: Path, pairs: int = 24, seed: int = 0) -> Path:
    from spatialt2i.data.builder import build_world

    build_world(out, pairs, seed, workers=1, progress=False)
    return out


def rewrite_dataset(src: Path, dst: Path, edit=None, drop: tuple[str, ...] = ()) -> Path:
    """Copy a pair dataset row by row, applying ``edit(split, rows)`` and dropping columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spatialt2i.data.schema import SCHEMA, shard_files, shard_name

    for split in ("train", "test"):
        rows = [r for f in shard_files(src, split) for r in pq.read_table(f).to_pylist()]
        if edit is not None:
            edit(split, rows)
        schema = pa.schema([f for f in SCHEMA if f.name not in drop], metadata=SCHEMA.metadata)
        table = pa.Table.from_pylist([{k: v for k, v in r.items() if k not in drop} for r in rows], schema=schema)
        (dst / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, dst / "data" / shard_name(split, 0, 1))
    return dst


def tiny_backbone(out: Path) -> Path:
    from spatialt2i.reward.tiny import init_tiny

    return init_tiny(out, "small", seed=0)


def train_config(base: Path, **over):
    from spatialt2i.reward.train_config import load_train_config

    return load_train_config("world", {**TRAIN_OVERRIDES, "base_model": str(base), **over})


def trainable_state(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {f"head/{k}": v for k, v in load_file(str(model_dir / "head.safetensors")).items()}
    state.update({f"adapter/{k}": v for k, v in load_file(str(model_dir / "adapter" / "adapter_model.safetensors")).items()})
    return state


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_backbone(tmp_path_factory.mktemp("tiny") / "small")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dataset(tmp_path_factory.mktemp("ds") / "world")


# ---- config -------------------------------------------------------------------------------------------

def test_presets_and_config_errors(tmp_path: Path) -> None:
    from spatialt2i.reward.train_config import ASSETS, load_train_config

    world = load_train_config("world")
    assert world.resolved_base_model() == str(ASSETS / "world-vlm-small")
    assert world.lora is not None and world.loss == "gaussian"
    paper = load_train_config("qwen7b")
    assert paper.base_model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert paper.lr == pytest.approx(2e-6) and paper.batch_size == 32 and paper.lora is not None
    assert paper.gradient_checkpointing and paper.mixed_precision == "auto"
    assert paper.grad_accum(1) == 8 and paper.grad_accum(8) == 1
    with pytest.raises(ConfigError, match="not a multiple"):
        paper.grad_accum(3)
    with pytest.raises(ConfigError, match="learning_rate"):
        load_train_config("world", {"learning_rate": 1.0})
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: x\nloss: hinge\n")
    with pytest.raises(ConfigError, match="hinge"):
        load_train_config(str(bad))
    with pytest.raises(ConfigError, match="nope"):
        load_train_config("nope")
    frozen = load_train_config("world", {"lora": None})
    assert frozen.lora is None


def test_step_order_is_a_seeded_permutation_per_epoch() -> None:
    from spatialt2i.reward.pair_table import StepOrder

    o = StepOrder(10, 4, seed=3)
    first = np.concatenate([o.step(s) for s in range(5)])   # 20 positions = 2 epochs
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    assert not np.array_equal(first[:10], first[10:])
    again = StepOrder(10, 4, seed=3)
    assert np.array_equal(again.step(3), o.step(3))           # pure function of (seed, step)
    assert not np.array_equal(StepOrder(10, 4, seed=4).step(0), o.step(0))


def test_by_length_orders_a_steps_rows_longest_first(dataset: Path, tmp_path: Path) -> None:
    from spatialt2i.reward.pair_table import PairTable

    def blank(split: str, rows: list) -> None:
        rows[1]["prompt"] = None

    table = PairTable(rewrite_dataset(dataset, tmp_path / "d", edit=blank), "train")
    idx = np.array([3, 1, 0, 2, 5, 4])
    got = table.by_length(idx)
    assert sorted(got) == sorted(idx)                         # the same rows, only reordered
    lengths = [len(r["prompt"] or "") for r in table.rows(got)]
    assert lengths == sorted(lengths, reverse=True) and lengths[-1] == 0   # the null prompt last
    assert len(table.by_length([])) == 0


def test_micro_batches_deal_a_steps_chunks_round_robin() -> None:
    from spatialt2i.reward.trainer import micro_batches

    rows = np.arange(12) * 10                                  # already ordered by length
    one = micro_batches(rows, 3, world=1, rank=0)
    assert [c.tolist() for c in one] == [[0, 10, 20], [30, 40, 50], [60, 70, 80], [90, 100, 110]]
    two = [micro_batches(rows, 3, world=2, rank=r) for r in (0, 1)]
    assert [c.tolist() for c in two[0]] == [one[0].tolist(), one[2].tolist()]   # long and short chunks each
    assert [c.tolist() for c in two[1]] == [one[1].tolist(), one[3].tolist()]


# ---- a run in process: outputs, bad rows, errors ------------------------------------------------------

def test_training_skips_a_corrupt_row_and_writes_its_outputs(tiny: Path, dataset: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from spatialt2i.reward.model import SpatialScore
    from spatialt2i.reward.trainer import train_reward

    def corrupt(split: str, rows: list) -> None:
        if split == "train":
            rows[1]["chosen"] = {"bytes": b"\x89PNG broken", "path": None}

    data = rewrite_dataset(dataset, tmp_path / "bad-row", corrupt)
    bad_id = "train-0000001"
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        res = train_reward(train_config(tiny, max_steps=6), data, out, progress=False)
    assert res.steps == 6 and res.skipped == 1
    assert bad_id in caplog.text
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["id"] for s in skipped] == [bad_id] and "'chosen'" in skipped[0]["reason"]
    # 6 steps x 4 pairs over 21 train rows: the bad row came up and the rest were used
    assert res.pairs_seen == 24 - int(sum((o == 1).sum() for o in _order(data, 6)))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2, 3, 4, 5, 6]
    assert any("eval/acc" in m for m in metrics) and any("eval_final/acc" in m for m in metrics)
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000006"]  # keep 2
    assert set(res.eval) >= {"acc", "acc_1", "acc_23", "mu_gap"}
    model = SpatialScore.from_pretrained(out / "model")
    assert model.config.lora is not None and model.config.lora.r == 4
    with pytest.raises(ConfigError, match="--resume"):
        train_reward(train_config(tiny), data, out, progress=False)
    with pytest.raises(ConfigError, match="differs"):
        train_reward(train_config(tiny, lr=1e-3), data, out, resume=True, progress=False)


def _order(data: Path, steps: int) -> list[np.ndarray]:
    from spatialt2i.reward.pair_table import PairTable, StepOrder

    o = StepOrder(len(PairTable(data, "train")), 4, TRAIN_OVERRIDES.get("seed", 0))
    return [o.step(s) for s in range(steps)]


def test_bad_inputs_are_named(tiny: Path, dataset: Path, tmp_path: Path) -> None:
    from spatialt2i.reward.backbone import ModelLoadError
    from spatialt2i.reward.trainer import train_reward

    with pytest.raises(DatasetError, match="no-such-data"):
        train_reward(train_config(tiny), tmp_path / "no-such-data", tmp_path / "o1", progress=False)
    no_prompt = rewrite_dataset(dataset, tmp_path / "no-prompt", drop=("prompt",))
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['prompt'\]"):
        train_reward(train_config(tiny), no_prompt, tmp_path / "o2", progress=False)
    with pytest.raises(ModelLoadError, match="missing-backbone"):
        train_reward(train_config(tmp_path / "missing-backbone"), dataset, tmp_path / "o3", progress=False)


# ---- kill and resume ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_and_resume_gives_the_same_final_model(tiny: Path, dataset: Path, tmp_path: Path) -> None:
    """A run SIGKILLed after its first checkpoint and resumed ends with the same weights as an unbroken run."""
    over = dict(max_steps=8, save_every=2, eval_every=0)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({**TRAIN_OVERRIDES, **over, "base_model": str(tiny)}))

    def cmd(out: Path) -> list[str]:  # both runs as CLI processes: same threads, same kernels
        return [sys.executable, "-m", "spatialt2i.cli", "reward", "train", "--config", str(cfg_file),
                "--data", str(dataset), "--out", str(out), "--quiet"]

    ref = subprocess.run(cmd(tmp_path / "ref"), env=cli_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step-000002").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists(), "the run finished before the kill; the test would prove nothing"
    done = subprocess.run(cmd(out) + ["--resume"], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 8 and result["resumed_from"] >= 2
    a, b = trainable_state(tmp_path / "ref" / "model"), trainable_state(out / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)  # training moved the adapter


def test_backbone_position_features_are_carried_into_training_and_loading(tiny: Path, dataset: Path,
                                                                          tmp_path: Path) -> None:
    """A backbone folder with posfeat files (the pretrained world backbone) keeps them through train/eval/serve."""
    import shutil

    from spatialt2i.reward import posfeat
    from spatialt2i.reward.backbone import load_vlm
    from spatialt2i.reward.model import SpatialScore
    from spatialt2i.reward.trainer import load_scorer, train_reward

    base = Path(shutil.copytree(tiny, tmp_path / "with-posfeat"))
    vlm = load_vlm(str(base))
    posfeat.new(vlm, seed=1)
    assert posfeat.save(vlm, base)
    res = train_reward(train_config(base, max_steps=1, eval_every=0), dataset, tmp_path / "run", progress=False)
    assert res.steps == 1
    with_pf = load_scorer(tmp_path / "run" / "model", "cpu")
    assert posfeat.attached(with_pf.vlm) is not None
    plain = SpatialScore.from_pretrained(tmp_path / "run" / "model")
    assert posfeat.attached(plain.vlm) is not None        # every load path attaches them
    from spatialt2i.reward.collate import iter_pair_batches

    b = next(iter_pair_batches(dataset, "test", batch_size=2))
    ref = with_pf.score(*b.model_inputs())["mu"]
    assert torch.equal(plain.score(*b.model_inputs())["mu"], ref)
    posfeat.detach(plain.vlm)
    assert not torch.allclose(plain.score(*b.model_inputs())["mu"], ref)
