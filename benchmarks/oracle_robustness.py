"""Oracle agreement with the scene graph on rendered images, clean and under mild noise/blur.

    python benchmarks/oracle_robustness.py [--scenes 300]

For each random scene (2-8 objects, all relation kinds) the oracle judges every stated relation
(truth: holds) and its flip (truth: does not hold); prints the share of verdicts that agree.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image, ImageFilter

from spatialt2i.data.perturb import flip_relation
from spatialt2i.world.oracle import judge
from spatialt2i.world.render import render
from spatialt2i.world.sample import random_scene
from spatialt2i.world.vocab import FLIP

LEVELS = [(0, 0.0), (5, 0.0), (10, 0.0), (0, 0.5), (0, 0.7), (5, 0.5), (8, 0.6)]  # (noise sigma /255, blur px)


def degrade(img: Image.Image, sigma: float, blur: float, rng: np.random.Generator) -> Image.Image:
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    if sigma:
        a = np.asarray(img, np.float32) + rng.normal(0, sigma, (img.height, img.width, 3))
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    return img


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    scenes = [random_scene(rng) for _ in range(args.scenes)]
    print(f"{args.scenes} random scenes, 64x64; verdicts = stated relations + their flips")
    for sigma, blur in LEVELS:
        t = time.perf_counter()
        agree = total = 0
        r = np.random.default_rng(0)
        for s in scenes:
            img = degrade(render(s), sigma, blur, r)
            neg = s.with_relations([flip_relation(x) for x in s.relations if x.kind in FLIP or x.kind == "at"])
            v, vn = judge(s, img), judge(neg, img)
            agree += sum(v.relations) + sum(not x for x in vn.relations)
            total += len(v.relations) + len(vn.relations)
        print(f"noise sigma {sigma:>2}/255  blur {blur:.1f} px: {agree}/{total} = {agree / total:.4f}  "
              f"({(time.perf_counter() - t) / args.scenes * 1000:.1f} ms/scene)")


if __name__ == "__main__":
    main()
