"""Oracle evaluation of a generator on held-out world prompts.

The held-out set: ``n`` scenes with 2-4 objects and 1-3 relations (equal shares), drawn from a
fixed seed stream that training never uses, worded by ``world.text.describe``. Each prompt is
sampled once (seed ``sample_seed + i``) and judged by the world oracle from pixels only.

Figures: ``presence`` (share of named objects found), ``all_correct`` (every relation holds and
every object is present), ``relation_accuracy`` (share of stated relations that hold),
``relation_accuracy_drawn`` (the same over relations whose objects were all found: does the generator
place objects as told when it draws them? None if no relation had its objects drawn),
``per_relation`` (accuracy by relation kind), ``by_n_relations`` (all-correct by relation count).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

HELDOUT_SEED = 2_000_003  # training streams use small seeds; this one is for evaluation only
HELDOUT_RELATIONS = {1: 1.0, 2: 1.0, 3: 1.0}


def heldout_scenes(n: int = 200, seed: int = HELDOUT_SEED, relations: dict[int, float] | None = None,
                   min_objects: int = 2, max_objects: int = 4) -> tuple[list, list[str]]:
    """``n`` held-out scenes (placed; the oracle ignores positions) and their prompts.

    Relation counts cycle through ``relations``' keys in proportion to their weights (deterministic).
    """
    from spatialt2i.world.sample import SceneConfig, random_scene
    from spatialt2i.world.text import Style, describe

    rel = relations or HELDOUT_RELATIONS
    rng = np.random.default_rng(seed)
    ks = sorted(rel)
    w = np.array([rel[k] for k in ks], float)
    counts = np.floor(w / w.sum() * n).astype(int)
    counts[: n - counts.sum()] += 1
    order = [k for k, c in zip(ks, counts) for _ in range(c)]
    cfg = SceneConfig(relations={k: 1.0 for k in ks}, min_objects=min_objects, max_objects=max_objects)
    scenes, prompts = [], []
    for k in order:
        s = random_scene(rng, cfg, k)
        scenes.append(s)
        prompts.append(describe(s, Style.draw(rng, len(s.relations))))
    return scenes, prompts


def summarize(scenes: Sequence, verdicts: Sequence) -> dict[str, Any]:
    """Aggregate oracle verdicts into the figures above."""
    per: dict[str, list[bool]] = defaultdict(list)
    by_n: dict[int, list[bool]] = defaultdict(list)
    rel_all: list[bool] = []
    rel_drawn: list[bool] = []
    for s, v in zip(scenes, verdicts):
        for r, ok in zip(s.relations, v.relations):
            per[r.kind].append(bool(ok))
            rel_all.append(bool(ok))
            if all(v.present[i] for i in r.objects):
                rel_drawn.append(bool(ok))
        by_n[len(s.relations)].append(v.all_correct)
    present = [p for v in verdicts for p in v.present]
    return {
        "n": len(verdicts),
        "presence": float(np.mean(present)) if present else 1.0,
        "all_present": float(np.mean([all(v.present) for v in verdicts])),
        "all_correct": float(np.mean([v.all_correct for v in verdicts])),
        "relation_accuracy": float(np.mean(rel_all)) if rel_all else 1.0,
        "relation_accuracy_drawn": float(np.mean(rel_drawn)) if rel_drawn else None,
        "relations_drawn": len(rel_drawn),
        "per_relation": {k: {"accuracy": float(np.mean(x)), "n": len(x)} for k, x in sorted(per.items())},
        "by_n_relations": {int(k): {"all_correct": float(np.mean(x)), "n": len(x)} for k, x in sorted(by_n.items())},
    }


def evaluate_images(scenes: Sequence, images: Any) -> dict[str, Any]:
    """Judge images (a (B, 3, H, W) float tensor in [0, 1], uint8 HWC arrays or PIL) against scenes."""
    from spatialt2i.world.oracle import judge

    arrs = to_uint8(images)
    verdicts = [judge(s, a) for s, a in zip(scenes, arrs)]
    return summarize(scenes, verdicts)


def to_uint8(images: Any) -> list[np.ndarray]:
    """Images as a list of uint8 (H, W, 3) arrays."""
    import torch

    if isinstance(images, torch.Tensor):
        x = images.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return list(x)
    return [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.uint8) for im in images]


def random_placement(scenes: Sequence, size: int = 64, seed: int = 0, draws: int = 1) -> dict[str, Any]:
    """The figures of :func:`summarize` for the right objects drawn at random places.

    Each scene's objects (shape, colour, size) are laid out by the layout solver with no relation to
    satisfy (seeded), rendered at ``size`` px and judged against the scene's own relations: the
    chance level of ``relation_accuracy_drawn`` for a generator that draws the objects but ignores
    where the prompt puts them. ``draws`` random layouts per scene (pooled) steady the per-kind
    figures of kinds that few scenes name."""
    from dataclasses import replace

    from spatialt2i.world.layout import solve
    from spatialt2i.world.oracle import judge
    from spatialt2i.world.render import render
    from spatialt2i.world.scene import Scene

    if draws < 1:
        raise ValueError(f"random_placement: draws must be >= 1, got {draws}")
    rng = np.random.default_rng(seed)
    pooled, verdicts = [], []
    for s in scenes:
        free = Scene(tuple(replace(o, x=None, y=None, depth=0) for o in s.objects))
        for _ in range(draws):
            pooled.append(s)
            verdicts.append(judge(s, render(solve(free, rng), size)))
    return summarize(pooled, verdicts)


def evaluate_generator(gen: Any, n: int = 200, steps: int = 8, *, batch: int = 50, seed: int = HELDOUT_SEED,
                       sample_seed: int = 0, dynamics: str = "ode", noise_level: float = 0.7,
                       guidance: float | None = None, relations: dict[int, float] | None = None,
                       return_images: bool = False) -> dict[str, Any]:
    """Sample one image per held-out prompt with ``gen`` (a :class:`FluxGenerator`) and judge them.

    Returns the figures of :func:`summarize` plus ``seconds`` (sampling + judging) and
    ``steps``; with ``return_images`` also ``images`` (uint8 arrays), ``prompts`` and ``scenes``.
    """
    import torch

    from spatialt2i.world.oracle import judge

    scenes, prompts = heldout_scenes(n, seed=seed, relations=relations)
    t0 = time.perf_counter()
    verdicts, images = [], []
    with torch.no_grad():
        for i in range(0, n, batch):
            ps = prompts[i:i + batch]
            traj = gen.sample(ps, [sample_seed + i + j for j in range(len(ps))], steps, dynamics=dynamics,
                              noise_level=noise_level, guidance=guidance)
            arrs = to_uint8(traj.images)
            verdicts += [judge(s, a) for s, a in zip(scenes[i:i + batch], arrs)]
            if return_images:
                images += arrs
    out = summarize(scenes, verdicts)
    out["seconds"] = time.perf_counter() - t0
    out["steps"] = steps
    if return_images:
        out.update(images=images, prompts=prompts, scenes=scenes)
    return out


def format_report(res: dict[str, Any]) -> str:
    """A short human-readable report of :func:`evaluate_generator`'s figures."""
    lines = [f"prompts {res['n']}: presence {res['presence']:.3f}  all objects {res['all_present']:.3f}  "
             f"all-correct {res['all_correct']:.3f}  relation accuracy {res['relation_accuracy']:.3f}"]
    drawn = res.get("relation_accuracy_drawn")
    lines.append(f"relations whose objects were all drawn: {res.get('relations_drawn', 0)}, accuracy "
                 + ("-" if drawn is None else f"{drawn:.3f}"))
    lines.append("by relation count: " + "  ".join(
        f"{k}: {v['all_correct']:.3f} (n={v['n']})" for k, v in res["by_n_relations"].items()))
    lines.append("per relation: " + "  ".join(
        f"{k} {v['accuracy']:.2f} (n={v['n']})" for k, v in res["per_relation"].items()))
    if "seconds" in res:
        lines.append(f"time {res['seconds']:.1f} s ({res['steps']} steps)")
    return "\n".join(lines)
