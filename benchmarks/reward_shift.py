"""Is a reward trained on clean renders still right on images that look like the generator's?

    python benchmarks/reward_shift.py --model RM --data DIR [--generator DIR] [--n 300] [--threads 2]

GRPO shows the reward the generator's own samples: decoded by the generator's VAE, often missing
objects. The pair datasets show it neither. On ``--n`` test pairs of ``--data`` (world rows, with
their scene JSON) this prints the reward's pairwise accuracy

* on the pairs as stored (clean renders),
* after both images went through the generator's VAE (encode, decode: the blur every sample has),

and, for object presence, how often it scores the chosen image above the same scene with one of its
objects removed (drawn at random), clean and through the VAE. ``benchmarks/reward_vs_oracle.py``
measures the end result on real samples; this says which of the two differences the reward misses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="SpatialScore checkpoint folder")
    ap.add_argument("--data", required=True, help="a world pair dataset (spatialt2i data build)")
    ap.add_argument("--generator", default="asset:world-generator", help="Flux pipeline folder whose VAE to use")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    from spatialt2i.data.schema import shard_files
    from spatialt2i.gen.vae_stage import roundtrip
    from spatialt2i.reward.collate import decode_pair
    from spatialt2i.reward.model import SpatialScore
    from spatialt2i.reward.train_config import resolve_asset
    from spatialt2i.world.render import render
    from spatialt2i.world.scene import Scene

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    model = SpatialScore.from_pretrained(args.model)
    vae = AutoencoderKL.from_pretrained(os.path.join(resolve_asset(args.generator), "vae"), torch_dtype=torch.float32)
    vae.eval()
    files = shard_files(args.data, "test")
    if not files:
        print(f"{args.data}: no test split (data/test-*.parquet)", file=sys.stderr)
        return 2
    cols = ["id", "prompt", "chosen", "rejected", "scene"]
    rows = [r for f in files for r in pq.read_table(f, columns=cols).to_pylist() if r.get("scene")][:args.n]
    if not rows:
        print(f"{args.data}: no test rows with a scene (world datasets only)", file=sys.stderr)
        return 2

    def through_vae(imgs: list[Image.Image]) -> list[Image.Image]:
        out = []
        for k in range(0, len(imgs), 64):
            out += [Image.fromarray(a) for a in roundtrip(vae, np.stack([np.asarray(i.convert("RGB"))
                                                                        for i in imgs[k:k + 64]]))]
        return out

    def mu(prompts: list[str], imgs: list[Image.Image]) -> np.ndarray:
        return model.score(prompts, imgs, batch_size=32)["mu"].numpy()

    prompts, chosen, rejected, dropped = [], [], [], []
    for r in rows:
        p, c, rj = decode_pair(r, skip_rejected=False)
        scene = Scene.from_json(r["scene"])
        j = int(rng.integers(len(scene.objects)))
        rest = tuple(o for k, o in enumerate(scene.objects) if k != j)
        prompts.append(p)
        chosen.append(c)
        rejected.append(rj)
        dropped.append(render(Scene(rest), c.size[0]) if rest else Image.new("RGB", c.size, "white"))
    n = len(prompts)
    res = {}
    for name, imgs in (("clean", (chosen, rejected, dropped)),
                       ("through the generator's VAE", tuple(through_vae(x) for x in (chosen, rejected, dropped)))):
        mc, mr, md = (mu(prompts, x) for x in imgs)
        res[name] = {"pairs": float((mc > mr).mean()), "presence": float((mc > md).mean()),
                     "mu_gap_pairs": float((mc - mr).mean()), "mu_gap_presence": float((mc - md).mean())}
    print(f"reward {args.model} on {n} test pairs of {args.data}; VAE of {args.generator}")
    print(f"{'images':<30} {'pair accuracy':>14} {'chosen > one object removed':>28}")
    for name, v in res.items():
        print(f"{name:<30} {v['pairs']:>14.3f} {v['presence']:>28.3f}   "
              f"(mean mu gap {v['mu_gap_pairs']:+.2f} / {v['mu_gap_presence']:+.2f})")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
