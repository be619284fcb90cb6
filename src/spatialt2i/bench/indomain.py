"""In-domain spatial benchmark on held-out world prompts.

For each prompt one image per seed, sampled with the ODE sampler (deterministic, so "before" and
"after" share prompts, seeds and initial noise). Reported:

- ``mean_reward``: the reward scorer's mean (SpatialScore's mu when given — the paper's in-domain
  metric — else the oracle's relation score);
- ``all_correct``: share of images where the oracle finds every relation true and every object;
- ``relation_accuracy`` and ``per_relation``: share of relations that hold, overall and by kind;
- ``presence``: share of named objects the oracle finds;
- ``correct``: per prompt, 1 when its image is all-correct, else 0 -- so that two runs on the same
  prompts and seeds can be compared pairwise (:func:`paired_change`: is a before -> after change
  more than the noise of 200 images?).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from spatialt2i.rl.prompts import WorldPrompt


def sample_images(gen: Any, prompts: Sequence[WorldPrompt], seeds: Sequence[int], steps: int,
                  batch: int = 50) -> list[Image.Image]:
    """ODE samples, one per (prompt, seed) pair, in batches of ``batch``."""
    texts = [p.text for p in prompts]
    images: list[Image.Image] = []
    for i in range(0, len(texts), batch):
        traj = gen.sample(texts[i:i + batch], list(seeds[i:i + batch]), steps=steps, dynamics="ode",
                          output_type="pil")
        images.extend(traj.images)
    return images


def evaluate(gen: Any, prompts: Sequence[WorldPrompt], *, steps: int = 6, seed: int = 0,
             batch: int = 50, scorer: Any = None, return_images: bool = False) -> dict[str, Any]:
    """Sample the held-out ``prompts`` (seed ``seed + i`` for prompt i) and score them.

    The oracle figures are :func:`spatialt2i.gen.evaluate.summarize`'s; ``mean_reward`` is the
    scorer's mean (SpatialScore's mu) or, without a scorer, the oracle's mean relation score.
    """
    from spatialt2i.gen.evaluate import summarize
    from spatialt2i.world.oracle import judge
    from spatialt2i.world.scene import Scene

    seeds = [seed + i for i in range(len(prompts))]
    with torch.no_grad():
        images = sample_images(gen, prompts, seeds, steps, batch)
    scenes = [Scene.from_json(p.scene) for p in prompts]
    verdicts = [judge(sc, img) for sc, img in zip(scenes, images)]
    if scorer is not None:
        rewards = scorer.score([p.text for p in prompts], images, [p.metadata for p in prompts])["reward"]
        mean_reward, reward_name = float(rewards.float().mean()), type(scorer).__name__
    else:
        mean_reward, reward_name = float(np.mean([v.score for v in verdicts])), "oracle"
    out: dict[str, Any] = {"n_prompts": len(prompts), "mean_reward": mean_reward, "reward": reward_name,
                           **summarize(scenes, verdicts), "correct": [int(v.all_correct) for v in verdicts]}
    if return_images:
        out["images"] = images
    return out


def paired_change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """How two :func:`evaluate` results on the same prompts and seeds differ in all-correct: the
    prompts right only before (``only_before``), only after (``only_after``) and the exact McNemar
    ``p`` of that split (:func:`spatialt2i.stats.mcnemar_exact`), with the rates themselves."""
    from spatialt2i.stats import paired_outcomes

    for name, r in (("before", before), ("after", after)):
        if "correct" not in r:
            raise ValueError(f"paired_change: the {name} result has no per-prompt 'correct' list "
                             "(made by an older version of bench.indomain.evaluate)")
    t = paired_outcomes(before["correct"], after["correct"])
    return {"before": before["all_correct"], "after": after["all_correct"], "only_before": t["only_a"],
            "only_after": t["only_b"], "p": t["p"]}


def describe_change(c: dict[str, Any]) -> str:
    """One line for reports, e.g. ``all-correct 0.065 -> 0.045: 7 prompts right only before, 3 only after
    (exact McNemar p = 0.34, not a significant change at the 5 % level)``."""
    verdict = "a significant change" if c["p"] < 0.05 else "not a significant change"
    return (f"all-correct {c['before']:.3f} -> {c['after']:.3f}: {c['only_before']} prompts right only before, "
            f"{c['only_after']} only after (exact McNemar p = {c['p']:.2g}, {verdict} at the 5 % level)")


def image_grid(rows: Sequence[Sequence[Image.Image]], labels: Sequence[str] | None = None,
               pad: int = 2) -> Image.Image:
    """Rows of equally sized images into one grid (row i = e.g. "before", "after")."""
    from PIL import ImageDraw

    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    left = 48 if labels else 0
    grid = Image.new("RGB", (left + cols * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        y = pad + i * (h + pad)
        if labels:
            draw.text((2, y + h // 2 - 5), labels[i], fill="black")
        for j, img in enumerate(row):
            grid.paste(img.convert("RGB"), (left + pad + j * (w + pad), y))
    return grid


def save_report(result: dict[str, Any], path: str | Path) -> None:
    clean = {k: v for k, v in result.items() if k != "images"}
    Path(path).write_text(json.dumps(clean, indent=2) + "\n")
