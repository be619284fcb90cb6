"""`spatialt2i rl train` killed (SIGKILL) mid-run and resumed ends with the uninterrupted run's LoRA."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from spatialt2i.gen.tiny import build_tiny_flux_pipeline  # noqa: E402
from spatialt2i.rl.lora import read_lora  # noqa: E402

torch.set_num_threads(1)

ITERATIONS = 4
CONFIG = {
    "seed": 5, "iterations": ITERATIONS, "prompts_per_iteration": 1, "checkpoint_every": 1,
    "keep_checkpoints": 2, "eval_every": 0,
    "sample": {"group_size": 4, "steps": 3, "noise_level": 0.9, "height": 64, "width": 64,
               "max_sequence_length": 32},
    "train": {"topk": 1, "lr": 0.01, "clip_range": 0.2, "train_steps": [0, 1], "updates_per_iteration": 2,
              "ema_decay": 0.5},
    "reward": {"kind": "red"}, "prompts": {"eval_prompts": 0},
    "lora": {"rank": 4, "alpha": 4},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("grpo_resume")
    build_tiny_flux_pipeline(root / "gen", seed=0, num_layers=1, num_single_layers=1)
    (root / "rl.yaml").write_text(yaml.safe_dump(CONFIG))
    return root / "gen", root / "rl.yaml"


def _cmd(gen: Path, cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "spatialt2i.cli", "rl", "train", "--config", str(cfg), "--generator", str(gen),
            "--out", str(out), "--threads", "1", "--no-progress", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_kill_and_resume_continues_identically(setup: tuple[Path, Path], tmp_path: Path) -> None:
    gen, cfg = setup
    full = tmp_path / "full"
    subprocess.run(_cmd(gen, cfg, full), check=True, env=_env(), capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(gen, cfg, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not (killed / "checkpoints" / "iter-000002" / "state.pt").exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (killed / "lora").exists(), "the run finished before the kill; the test proves nothing"
    done = sorted(p.name for p in (killed / "checkpoints").glob("iter-*"))
    assert done and done[-1] < f"iter-{ITERATIONS:06d}"

    res = subprocess.run(_cmd(gen, cfg, killed, "--resume"), env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = read_lora(full / "lora"), read_lora(killed / "lora")
    assert a.keys() == b.keys()
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ea, eb = read_lora(full / "lora-ema"), read_lora(killed / "lora-ema")
    for k in ea:
        assert torch.equal(ea[k], eb[k]), k
    # metrics of the resumed iterations repeat the uninterrupted run's
    full_lines = (full / "metrics.jsonl").read_text().splitlines()
    killed_lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert killed_lines[-1].split('"rollout_s"')[0] == full_lines[-1].split('"rollout_s"')[0]


@pytest.mark.slow
def test_resume_with_a_changed_config_is_refused(setup: tuple[Path, Path], tmp_path: Path) -> None:
    gen, cfg = setup
    out = tmp_path / "run"
    short = dict(CONFIG, iterations=1)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(short))
    subprocess.run(_cmd(gen, tmp_path / "a.yaml", out), check=True, env=_env(), capture_output=True, timeout=600)
    changed = dict(short, iterations=2, train=dict(CONFIG["train"], topk=2))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(changed))
    res = subprocess.run(_cmd(gen, tmp_path / "b.yaml", out, "--resume"), env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 2 and "config key 'train' differs" in res.stderr
