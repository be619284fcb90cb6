"""Two processes (gloo) take the same GRPO step as one process on the same groups."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from spatialt2i.config import from_dict  # noqa: E402
from spatialt2i.gen.tiny import build_tiny_flux_pipeline  # noqa: E402
from spatialt2i.rl.config import RLConfig  # noqa: E402

torch.set_num_threads(1)

CONFIG: dict[str, Any] = {
    "seed": 3, "iterations": 1, "prompts_per_iteration": 2,
    "sample": {"group_size": 4, "steps": 3, "noise_level": 0.9, "height": 64, "width": 64,
               "max_sequence_length": 32},
    "train": {"topk": 1, "lr": 1.0, "clip_range": 1e-4, "train_steps": [0, 1], "max_grad_norm": 0.0,
              "kl_coef": 0.5, "updates_per_iteration": 2},
    "reward": {"kind": "red"}, "prompts": {"eval_prompts": 0},
    "lora": {"rank": 4, "alpha": 8},
}


def one_step(tiny_dir: str) -> tuple[list[torch.Tensor], dict[str, float], list[torch.Tensor]]:
    """Rollout + one GRPO update (SGD so the parameter change is the gradient); returns the deltas."""
    from spatialt2i.gen.flux import FluxGenerator
    from spatialt2i.rl.rewards import RedChannelScorer
    from spatialt2i.rl.trainer import GRPOTrainer

    cfg = from_dict(RLConfig, CONFIG)
    gen = FluxGenerator.from_pretrained(tiny_dir, height=64, width=64, max_sequence_length=32)
    tr = GRPOTrainer(cfg, gen, RedChannelScorer())
    tr.optimizer = torch.optim.SGD(tr.params, lr=cfg.train.lr)
    try:
        groups = tr.rollout(0)
        rewards = [g.scores["reward"] for g in groups]
        before = [p.detach().clone() for p in tr.params]
        stats = tr.update(groups)
        return [p.detach() - b for p, b in zip(tr.params, before)], stats, rewards
    finally:
        tr.close()


def _worker(rank: int, world: int, init_file: str, tiny_dir: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        deltas, stats, rewards = one_step(tiny_dir)
        torch.save({"deltas": deltas, "stats": stats, "rewards": rewards}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny_flux_dist")
    build_tiny_flux_pipeline(d, seed=0, num_layers=1, num_single_layers=1)
    return d


@pytest.mark.slow
def test_two_process_step_equals_one_process_step(tiny_dir: Path, tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tiny_dir), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    deltas, stats, rewards = one_step(str(tiny_dir))

    # group i ran on rank i, with the same samples the single process drew for it
    assert len(r0["rewards"]) == len(r1["rewards"]) == 1 and len(rewards) == 2
    assert torch.equal(r0["rewards"][0], rewards[0]) and torch.equal(r1["rewards"][0], rewards[1])
    scale = max(float(d.abs().max()) for d in deltas)
    assert scale > 0
    for a, b, c in zip(r0["deltas"], r1["deltas"], deltas):
        assert torch.equal(a, b)  # the ranks stay in lockstep
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5 * scale)  # float summation order only
    for key in ("reward_mean", "kept_samples", "groups", "loss", "kl", "approx_kl"):
        assert r0["stats"][key] == pytest.approx(stats[key], rel=1e-4, abs=1e-9), key
