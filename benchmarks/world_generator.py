"""Oracle figures of the shipped world base generator on 200 held-out prompts, and the time.

Held-out prompts: 2-4 objects, 1-3 relations (equal shares), from ``gen.evaluate.heldout_scenes``;
one sample per prompt (ODE, 6 steps as the RL preset samples, unless --steps), judged by the world oracle.
Also prints chance: the same prompts' objects drawn at random places (``gen.evaluate.random_placement``),
to compare with the accuracy of the relations whose objects the generator did draw.

    python benchmarks/world_generator.py [--generator DIR] [--n 200] [--steps 8] [--threads 1] [--true-cfg 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default=None, help="Flux pipeline folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-sequence-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--true-cfg", type=float, default=1.0,
                    help="true CFG scale (> 1: a second, empty-prompt branch; for generators trained with text_dropout)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from spatialt2i.gen.evaluate import evaluate_generator, format_report, heldout_scenes, random_placement
    from spatialt2i.gen.flux import FluxGenerator
    from spatialt2i.gen.pretrain import world_generator_path

    torch.set_num_threads(args.threads)
    path = args.generator or str(world_generator_path())
    t0 = time.perf_counter()
    gen = FluxGenerator.from_pretrained(path, height=64, width=64, max_sequence_length=args.max_sequence_length,
                                      true_cfg_scale=args.true_cfg, negative_prompt="")
    load_s = time.perf_counter() - t0
    res = evaluate_generator(gen, n=args.n, steps=args.steps)
    chance = random_placement(heldout_scenes(args.n)[0])
    res["random_placement"] = {k: chance[k] for k in ("relation_accuracy", "all_correct", "per_relation")}
    res.update(generator=str(path), load_seconds=load_s, threads=args.threads, true_cfg=args.true_cfg,
               seconds_per_image=res["seconds"] / res["n"])
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"generator: {path}")
        print(format_report(res))
        print(f"chance: the right objects at random places (layout solver, no relations): relation accuracy "
              f"{chance['relation_accuracy']:.3f}, all-correct {chance['all_correct']:.3f}")
        print(f"load {load_s:.1f} s; {res['seconds_per_image'] * 1000:.0f} ms per image "
              f"({args.threads} thread(s), sampling + oracle)")


if __name__ == "__main__":
    main()
