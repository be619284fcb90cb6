"""The pair-dataset builder: format, oracle-verified rows, resume after a kill, refusal to overwrite."""

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from spatialt2i.data.builder import build_world, plan_shards, run_build
from spatialt2i.data.schema import decode_image, iter_rows, shard_files
from spatialt2i.data.world_source import WorldDataConfig, make_world_rows
from spatialt2i.errors import DatasetError
from spatialt2i.world.oracle import judge
from spatialt2i.world.scene import Scene

CFG = WorldDataConfig(shard_size=16)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "pairs"
    rep = build_world(out, 60, seed=3, cfg=CFG, workers=2, progress=False)
    return out, rep


def _table(root):
    return {p.name: pq.read_table(p).to_pylist() for p in shard_files(root)}


def test_layout_and_load_dataset(built):
    import datasets

    out, rep = built
    assert rep.pairs == 60
    assert (out / "README.md").read_text().startswith("---\nconfigs:")
    assert sorted(p.name for p in (out / "figures").glob("*.png"))
    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"))
    assert ds["train"].num_rows + ds["test"].num_rows == 60
    row = ds["test"][0]
    assert row["chosen"].size == (64, 64) and row["rejected"].size == (64, 64)
    for col in ("id", "prompt", "perturbed_prompt", "perturbations", "n_perturbations", "n_objects",
                "n_relations", "scene", "source", "verified"):
        assert col in row
    assert row["verified"] is None


def test_every_pair_is_oracle_verified(built):
    out, _ = built
    ids = set()
    for row in iter_rows(out, columns=None):
        scene = Scene.from_json(row["scene"])
        assert judge(scene, decode_image(row["chosen"], row["id"])).all_correct
        assert not judge(scene, decode_image(row["rejected"], row["id"])).all_correct
        assert row["prompt"] != row["perturbed_prompt"]
        assert row["n_perturbations"] == len(row["perturbations"])
        ids.add(row["id"])
    assert len(ids) == 60


def test_refuses_to_overwrite_and_resume_mismatch(built, tmp_path):
    out, _ = built
    with pytest.raises(DatasetError, match="already exists"):
        build_world(out, 60, seed=3, cfg=CFG, progress=False)
    with pytest.raises(DatasetError, match="settings differ"):
        build_world(out, 60, seed=4, cfg=CFG, resume=True, progress=False)
    other = tmp_path / "notmine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a spatialt2i dataset"):
        build_world(other, 10, seed=0, cfg=CFG, overwrite=True, progress=False)
    assert (other / "keep.txt").exists()


def test_interrupted_build_resumes_to_the_same_dataset(built, tmp_path):
    out, _ = built
    tasks = plan_shards(60, 3, CFG.test_fraction, CFG.shard_size)
    meta = json.loads((out / "build.json").read_text())
    calls = {"n": 0}

    def crashing(task):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt("killed")
        return make_world_rows(task, CFG)

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        run_build(part, tasks, crashing, meta, progress=False)
    assert len(shard_files(part)) == 2 and not (part / "README.md").exists()
    rep = run_build(part, tasks, partial(make_world_rows, cfg=CFG), meta, resume=True, progress=False)
    assert rep.shards_skipped == 2
    assert _table(part) == _table(out)


def test_stats_cli_and_show(built, tmp_path):
    out, _ = built
    r = subprocess.run([sys.executable, "-m", "spatialt2i.cli", "data", "stats", str(out), "--json"],
                       capture_output=True, text=True, check=True)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    stats = json.loads(lines[0])
    assert stats["pairs"] == 60 and stats["relations_per_prompt"]["max"] <= 10
    from spatialt2i.data.show import show_pairs

    png = show_pairs(out, tmp_path / "grid.png", n=4)
    assert png.stat().st_size > 5000


def test_bad_dataset_paths(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        list(iter_rows(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="not a pair dataset"):
        list(iter_rows(tmp_path))


def test_bad_config_is_named(tmp_path):
    from spatialt2i.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("image_size: 64\nscene:\n  relatons: {2: 1.0}\n")
    assert main(["data", "build", "--out", str(tmp_path / "o"), "--pairs", "4", "--config", str(cfg)]) == 2
    cfg.write_text("image_size: 20\n")
    assert main(["data", "build", "--out", str(tmp_path / "o"), "--pairs", "4", "--config", str(cfg)]) == 2
    cfg.write_text("perturbations: {kinds: {rotate: 1.0}}\n")
    assert main(["data", "build", "--out", str(tmp_path / "o"), "--pairs", "4", "--config", str(cfg)]) == 2


@pytest.mark.slow
def test_killed_cli_build_resumes_identically(tmp_path):
    """A real SIGKILL mid-build, then --resume, gives the same files as an uninterrupted build."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("shard_size: 10\ntest_fraction: 0.1\n")
    args = ["--pairs", "80", "--seed", "9", "--workers", "1", "--config", str(cfg), "--quiet"]
    ref, part = tmp_path / "ref", tmp_path / "part"
    cmd = [sys.executable, "-m", "spatialt2i.cli", "data", "build"]
    subprocess.run(cmd + ["--out", str(ref)] + args, check=True, capture_output=True)
    p = subprocess.Popen(cmd + ["--out", str(part)] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list((part / "data").glob("*.parquet"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    n_before = len(list((part / "data").glob("*.parquet")))
    assert 2 <= n_before < 9
    r = subprocess.run(cmd + ["--out", str(part), "--resume"] + args, check=True, capture_output=True, text=True)
    assert f"{n_before} already done" in r.stdout
    assert _table(part) == _table(ref)


def _spawned_children(pid: int) -> list[int]:
    """PIDs of ``pid``'s multiprocessing workers (read from /proc)."""
    kids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmd:
            kids.append(int(d.name))
    return kids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_sigterm_stops_the_workers_with_the_build(tmp_path):
    """SIGTERM (a timeout, a cancelled job) ends the workers too: none runs on as an orphan while a
    resumed build makes the same shards (each shard here takes far longer than the wait below)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("shard_size: 20\ntest_fraction: 0.1\n")
    cmd = [sys.executable, "-m", "spatialt2i.cli", "data", "build", "--out", str(tmp_path / "d"), "--pairs", "120",
           "--size", "512", "--workers", "2", "--config", str(cfg), "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while len(_spawned_children(p.pid)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        workers = _spawned_children(p.pid)
        assert len(workers) == 2
        time.sleep(3)  # the workers are inside their first shard
        assert not list((tmp_path / "d" / "data").glob("*.parquet"))
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=30) != 0
        deadline = time.time() + 10
        while any(_running(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _running(w)]
    finally:
        if p.poll() is None:
            p.kill()
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)

