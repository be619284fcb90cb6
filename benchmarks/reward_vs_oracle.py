"""Does a reward rank a generator's own samples the way the world oracle does? (a check before RL)

GRPO only uses the order of rewards inside a group. So, as the world preset's rollouts do, this
samples groups of G images per held-out prompt (flow_sde, noise 0.9, 6 steps) from the generator,
scores them with the reward (``--model``: a SpatialScore checkpoint, through the RL stage's own
scorer) and with the oracle, and prints the mean within-group Spearman correlation of the reward
with the oracle's relation share and with object presence (groups where the oracle varies), and
how often the reward's top-k have a higher mean oracle score than its bottom-k. Near 0 means RL
against that reward cannot move the oracle's figures.

    python benchmarks/reward_vs_oracle.py --model RM [--generator DIR] [--prompts 60] [--group 12]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="SpatialScore checkpoint folder")
    ap.add_argument("--generator", help="Flux pipeline folder (default: the shipped world generator)")
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--group", type=int, default=12)
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from spatialt2i.gen.flux import FluxGenerator
    from spatialt2i.rl.cli import resolve_generator
    from spatialt2i.rl.config import PromptSettings, RewardSettings
    from spatialt2i.rl.prompts import heldout_prompts
    from spatialt2i.rl.rewards import OracleScorer, build_scorer

    torch.set_num_threads(args.threads)
    gen = FluxGenerator.from_pretrained(resolve_generator(args.generator, None), height=64, width=64,
                                        max_sequence_length=128, guidance_scale=3.5)
    reward = build_scorer(RewardSettings(kind="spatialscore", path=args.model))
    oracle = OracleScorer()
    t0 = time.perf_counter()
    rho_rel, rho_pres, topk_wins, topk_n = [], [], 0, 0
    pooled = {"reward": [], "share": [], "presence": []}
    G, k = args.group, args.topk
    for i, p in enumerate(heldout_prompts(PromptSettings(), args.prompts)):
        with torch.no_grad():
            traj = gen.sample([p.text] * G, list(range(1000 * i, 1000 * i + G)), 6, dynamics="flow_sde",
                              noise_level=0.9, guidance=3.5, output_type="pil")
        r = reward.score([p.text] * G, traj.images, [p.metadata] * G)["reward"].numpy()
        o = oracle.score([p.text] * G, traj.images, [p.metadata] * G)
        share, pres = o["reward"].numpy(), o["presence"].numpy()
        pooled["reward"].append(r), pooled["share"].append(share), pooled["presence"].append(pres)
        if share.std() > 0:
            rho_rel.append(spearmanr(r, share).statistic)
            order = np.argsort(r)
            topk_wins += share[order[-k:]].mean() > share[order[:k]].mean()
            topk_n += 1
        if pres.std() > 0:
            rho_pres.append(spearmanr(r, pres).statistic)
    allr, alls, allp = (np.concatenate(pooled[key]) for key in ("reward", "share", "presence"))
    print(f"reward {args.model} on {args.prompts} held-out prompts x {G} samples "
          f"(flow_sde 0.9, 6 steps), {time.perf_counter() - t0:.0f} s")
    print(f"oracle: mean relation share {alls.mean():.3f}, mean presence {allp.mean():.3f}")
    print(f"within-group Spearman(reward, relation share): {np.nanmean(rho_rel):+.3f} over {len(rho_rel)} groups "
          f"where the share varies")
    print(f"within-group Spearman(reward, presence):       {np.nanmean(rho_pres):+.3f} over {len(rho_pres)} groups")
    print(f"reward's top-{k} beat its bottom-{k} on relation share in {topk_wins}/{topk_n} groups "
          f"(chance about half)")
    print(f"pooled Spearman: relation share {spearmanr(allr, alls).statistic:+.3f}, "
          f"presence {spearmanr(allr, allp).statistic:+.3f}")


if __name__ == "__main__":
    main()
