"""Top-k ablation on the world: k = 6 of G = 24 vs all 24, same budget of rollouts.

Both runs start from the same base generator and do the same number of iterations (same prompts,
same seeds, same rollouts); only the samples trained on differ. Prints the oracle's final
all-relations-correct rate on the held-out prompts, the training (update) time of each, and a paired
test of the two final models on the same prompts and seeds. The paper: k = 6 as good as all 24 at
half the training compute.

    python benchmarks/topk_ablation.py --generator DIR [--iterations 60] [--out runs/topk]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", help="world base generator folder (default: the shipped one)")
    ap.add_argument("--iterations", type=int, default=60, help="iterations per run (same rollout budget)")
    ap.add_argument("--out", default="runs/topk")
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = ap.parse_args()
    import torch
    import yaml

    from rl_world import line, run_rl
    from spatialt2i.bench.indomain import paired_change
    from spatialt2i.rl.cli import resolve_generator

    torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    generator = resolve_generator(args.generator, None)
    results = {}
    for name, k in (("top-6", 6), ("all-24", 0)):
        ov = {**overrides, "sample.group_size": 24, "train.topk": k}
        results[name] = run_rl(generator, Path(args.out) / name, ov, None, iterations=args.iterations,
                               eval_n=args.eval_n)
    print(f"command: {' '.join(shlex.quote(x) for x in [sys.executable, *sys.argv])}")
    print(f"generator {generator}; G=24, {args.iterations} iterations each; {args.eval_n} held-out prompts")
    print(line("base", results["top-6"]["base"]))
    for name, r in results.items():
        print(line(name, r["after"]) + f"  | update {r['update_minutes']:.2f} min, "
              f"rollout {r['rollout_minutes']:.2f} min, total {r['train_minutes']:.2f} min")
    c = paired_change(results["all-24"]["after"], results["top-6"]["after"])
    print(f"top-6 vs all-24 on the same prompts and seeds: {c['only_after']} prompts right only with top-6, "
          f"{c['only_before']} only with all-24 (exact McNemar p = {c['p']:.2g})")


if __name__ == "__main__":
    main()
