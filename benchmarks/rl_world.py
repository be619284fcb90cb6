"""RL on the built-in world: base generator vs after GRPO, by the oracle on 200 held-out prompts.

Starts from a world base generator (``--generator DIR``; default: the one shipped in
``spatialt2i/assets``), trains the ``world`` preset (reward: the oracle, or SpatialScore with
``--reward DIR``) for ``--minutes`` of wall time, then prints base vs after: all-relations-correct
rate, relation accuracy, object presence and mean reward, the wall time and the command. The
issue's bar: after >= 2x base and >= base + 20 points, presence down by at most 5 points, in 20 min.

    python benchmarks/rl_world.py --generator DIR [--minutes 20] [--out runs/rl-world] [--set train.topk=3]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_rl(generator: str, out: Path, overrides: dict[str, Any], minutes: float | None,
           iterations: int | None = None, eval_n: int = 200, reward: str | None = None) -> dict[str, Any]:
    """Base eval, GRPO run, final eval; returns {"base", "after", "train_minutes", "iterations", ...}."""
    from spatialt2i.bench.indomain import evaluate, image_grid, paired_change
    from spatialt2i.rl.cli import load_generator
    from spatialt2i.rl.config import load_rl_config
    from spatialt2i.rl.prompts import heldout_prompts
    from spatialt2i.rl.rewards import build_scorer
    from spatialt2i.rl.trainer import GRPOTrainer

    ov = {"eval_every": 0, "prompts.eval_prompts": eval_n, **overrides}
    if iterations is not None:
        ov["iterations"] = iterations
    if reward:
        ov.update({"reward.kind": "spatialscore", "reward.path": reward})
    cfg = load_rl_config("world", ov)
    gen = load_generator(generator, cfg)
    prompts = heldout_prompts(cfg.prompts)
    scorer = build_scorer(cfg.reward)
    eval_scorer = scorer if reward else None
    base = evaluate(gen, prompts, steps=cfg.eval_steps, seed=cfg.seed, batch=cfg.eval_batch, scorer=eval_scorer,
                    return_images=True)
    trainer = GRPOTrainer(cfg, gen, scorer, out, eval_prompts=None)
    t0 = time.monotonic()
    try:
        history = trainer.train(max_minutes=minutes, progress=True)
    finally:
        trainer.close()
    wall = time.monotonic() - t0
    after = evaluate(gen, prompts, steps=cfg.eval_steps, seed=cfg.seed, batch=cfg.eval_batch, scorer=eval_scorer,
                     return_images=True)
    out.mkdir(parents=True, exist_ok=True)
    image_grid([base["images"][:16], after["images"][:16]], labels=["base", "after"]).save(out / "grid.png")
    strip = lambda r: {k: v for k, v in r.items() if k != "images"}  # noqa: E731
    res = {"base": strip(base), "after": strip(after), "train_minutes": wall / 60, "iterations": len(history),
           "rollout_minutes": sum(h["rollout_s"] for h in history) / 60,
           "update_minutes": sum(h["iteration_s"] - h["rollout_s"] for h in history) / 60,
           "change": paired_change(base, after), "config": {k: v for k, v in ov.items()}}
    (out / "rl_world.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def line(name: str, r: dict[str, Any]) -> str:
    return (f"{name:6s} all-correct {r['all_correct']:.3f}  relation acc {r['relation_accuracy']:.3f}  "
            f"presence {r['presence']:.3f}  mean reward ({r['reward']}) {r['mean_reward']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", help="world base generator folder (default: the shipped one)")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--out", default="runs/rl-world")
    ap.add_argument("--reward", help="SpatialScore checkpoint (default reward: the world oracle)")
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = ap.parse_args()
    import torch
    import yaml

    from spatialt2i.bench.indomain import describe_change
    from spatialt2i.rl.cli import resolve_generator

    torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    generator = resolve_generator(args.generator, None)
    res = run_rl(generator, Path(args.out), overrides, args.minutes, eval_n=args.eval_n, reward=args.reward)
    b, a = res["base"], res["after"]
    print(f"command: {' '.join(shlex.quote(x) for x in [sys.executable, *sys.argv])}")
    print(f"generator {generator}; {res['iterations']} iterations in {res['train_minutes']:.1f} min "
          f"(rollout {res['rollout_minutes']:.1f}, update {res['update_minutes']:.1f}); {b['n_prompts']} held-out prompts")
    print(line("base", b))
    print(line("after", a))
    print(describe_change(res["change"]))
    ok = (a["all_correct"] >= 2 * b["all_correct"] and a["all_correct"] >= b["all_correct"] + 0.20
          and a["presence"] >= b["presence"] - 0.05)
    print(f"issue bar (>= 2x base, >= +20 points, presence -5 points at most): {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
