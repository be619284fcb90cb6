"""Pair-dataset build throughput on the built-in world (64x64, W workers).

    python benchmarks/build_throughput.py [--pairs 2000] [--workers 2]

Prints pairs/s for the whole build (process start-up, oracle checks, parquet writes and the card
included) and the projected time for the paper's 80k pairs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from spatialt2i.data.builder import build_world
from spatialt2i.data.world_source import WorldDataConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=250)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp()) / "pairs"
    t = time.perf_counter()
    rep = build_world(out, args.pairs, seed=0, cfg=WorldDataConfig(shard_size=args.shard_size),
                      workers=args.workers, progress=False)
    dt = time.perf_counter() - t
    stats = json.loads((out / "stats.json").read_text())
    rejected = sum(rep.failures.values())
    print(f"pairs: {rep.pairs}  workers: {args.workers}  image: 64x64")
    print(f"wall time: {dt:.1f} s  throughput: {rep.pairs / dt:.1f} pairs/s")
    print(f"projected 80k pairs: {80000 / (rep.pairs / dt) / 60:.1f} min")
    print(f"candidates rejected by checks: {rejected} ({rejected / (rejected + rep.pairs):.1%}) {rep.failures}")
    print(f"relations per prompt: median {stats['relations_per_prompt']['median']}, "
          f"single-perturbation share {stats['single_perturbation_share']:.1%}")
    print(f"perturbation kinds: {stats['perturbation_kinds']}  perturbations per pair: "
          f"{stats['perturbations_per_pair']['hist']}")
    shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
