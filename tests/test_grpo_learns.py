"""GRPO optimises the reward it is given: on the shipped world generator, a few iterations against the
mean red channel raise it and the same run against its opposite lowers it (same prompts and seeds,
deterministic ODE samples before and after). The sign check catches an inverted advantage or a
LoRA that drifts regardless of the reward."""

from __future__ import annotations

import os
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from spatialt2i.gen.evaluate import to_uint8  # noqa: E402
from spatialt2i.rl.cli import load_generator, resolve_generator  # noqa: E402
from spatialt2i.rl.config import load_rl_config  # noqa: E402
from spatialt2i.rl.prompts import heldout_prompts  # noqa: E402
from spatialt2i.rl.rewards import RedChannelScorer  # noqa: E402
from spatialt2i.rl.trainer import GRPOTrainer  # noqa: E402

pytestmark = pytest.mark.slow


class LessRed(RedChannelScorer):
    def score(self, prompts: Sequence[str], images: Sequence[Any], metadata: Sequence[dict[str, Any]]) -> dict:
        return {"reward": 1.0 - super().score(prompts, images, metadata)["reward"]}


def mean_red(gen: Any, prompts: list[str], guidance: float) -> float:
    with torch.no_grad():
        traj = gen.sample(prompts, list(range(len(prompts))), 6, dynamics="ode", guidance=guidance)
    return float(np.mean([a[..., 0].mean() / 255.0 for a in to_uint8(traj.images)]))


@pytest.mark.parametrize("scorer,sign", [(RedChannelScorer(), 1), (LessRed(), -1)], ids=["red", "less-red"])
def test_grpo_moves_the_reward_it_is_given(scorer: Any, sign: int) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = load_rl_config("world", {"iterations": 30, "train.lr": 1e-3, "train.topk": 0, "prompts_per_iteration": 1,
                                   "sample.group_size": 8, "eval_every": 0, "prompts.eval_prompts": 0})
    gen = load_generator(resolve_generator(None, cfg.generator), cfg)
    prompts = [p.text for p in heldout_prompts(cfg.prompts, 8)]
    before = mean_red(gen, prompts, cfg.sample.guidance)
    trainer = GRPOTrainer(cfg, gen, scorer, None)
    try:
        for it in range(cfg.iterations):
            trainer.update(trainer.rollout(it))
    finally:
        trainer.close()
    after = mean_red(gen, prompts, cfg.sample.guidance)
    print(f"mean red {before:.3f} -> {after:.3f}")
    assert sign * (after - before) > 0.02, (before, after)
