"""How much could RL gain by re-weighting a generator's own samples? (best-of-G on held-out prompts)

GRPO (and any RL that ranks a group of samples) can at most make the generator produce, for each
prompt, the best of what it already samples -- unless it also learns something new. This samples G
images per held-out world prompt with the RL preset's rollout sampler (flow_sde, noise 0.9, 6 steps;
``--sde-steps 0`` injects noise in the first step only) and prints, by the oracle: the mean
all-correct rate (what RL starts from), best-of-G (a prompt counts if any of its G samples is
all-correct), the histogram of per-prompt success rates, and, over the relations whose objects were
drawn, the accuracy per relation kind beside chance (the same objects at random places, 10 layouts
per prompt).

    python benchmarks/rl_headroom.py [--generator DIR] [--prompts 100] [--group 12] [--sde-steps 0,1]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", help="Flux pipeline folder (default: the shipped world generator)")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--group", type=int, default=12)
    ap.add_argument("--sde-steps", default="", help="comma list of noisy steps (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import numpy as np
    import torch

    from spatialt2i.gen.evaluate import random_placement, to_uint8
    from spatialt2i.rl.cli import load_generator, resolve_generator
    from spatialt2i.rl.config import load_rl_config
    from spatialt2i.rl.prompts import heldout_prompts
    from spatialt2i.world.oracle import judge
    from spatialt2i.world.scene import Scene

    torch.set_num_threads(args.threads)
    cfg = load_rl_config("world", {})
    sc = cfg.sample
    path = resolve_generator(args.generator, cfg.generator)
    gen = load_generator(path, cfg)
    prompts = heldout_prompts(cfg.prompts, args.prompts)
    sde = [int(s) for s in args.sde_steps.split(",")] if args.sde_steps else None
    t0 = time.perf_counter()
    success, drawn = [], defaultdict(list)
    scenes = [Scene.from_json(p.scene) for p in prompts]
    with torch.no_grad():
        for i, (p, scene) in enumerate(zip(prompts, scenes)):
            traj = gen.sample([p.text] * args.group, [10_000 * i + j for j in range(args.group)], sc.steps,
                              dynamics=sc.dynamics, noise_level=sc.noise_level, guidance=sc.guidance,
                              sde_steps=sde)
            verdicts = [judge(scene, a) for a in to_uint8(traj.images)]
            success.append([v.all_correct for v in verdicts])
            for v in verdicts:
                for r, ok in zip(scene.relations, v.relations):
                    if all(v.present[k] for k in r.objects):
                        drawn[r.kind].append(bool(ok))
    s = np.array(success, float)
    per_prompt = s.mean(1)
    hist, edges = np.histogram(per_prompt, bins=[0, 1e-9, 0.1, 0.25, 0.5, 1.0 + 1e-9])
    chance = random_placement(scenes, draws=10)["per_relation"]
    print(f"generator: {path}; {len(prompts)} held-out prompts x {args.group} samples "
          f"({sc.dynamics}, noise {sc.noise_level}, {sc.steps} steps, noisy steps {sde or 'all'}); "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"all-correct: mean {s.mean():.3f}   best-of-{args.group} {s.max(1).mean():.3f}")
    labels = ["never", "(0, .1)", "[.1, .25)", "[.25, .5)", "[.5, 1]"]
    print("prompts by success rate: " + "  ".join(f"{lab} {n}" for lab, n in zip(labels, hist)))
    print("relations whose objects were drawn, accuracy (n) vs chance:")
    for kind in sorted(drawn):
        print(f"  {kind:12s} {np.mean(drawn[kind]):.2f} ({len(drawn[kind])})  chance "
              f"{chance.get(kind, {}).get('accuracy', float('nan')):.2f}")


if __name__ == "__main__":
    main()
