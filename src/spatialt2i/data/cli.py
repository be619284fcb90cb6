"""``spatialt2i data build|stats|show``."""

from __future__ import annotations

import argparse
import json
import os


def _build(args: argparse.Namespace) -> int:
    from ..config import from_dict, load_yaml
    from .builder import build_world, plan_shards, run_build

    if args.source == "world":
        from .world_source import WorldDataConfig

        cfg = from_dict(WorldDataConfig, load_yaml(args.config or "data-world"), args.config or "data-world")
        if args.size:
            cfg = from_dict(WorldDataConfig, {**load_yaml(args.config or "data-world"), "image_size": args.size})
        rep = build_world(args.out, args.pairs, args.seed, cfg, workers=args.workers, overwrite=args.overwrite,
                          resume=args.resume, progress=not args.quiet)
    else:
        from .fullscale import FullScaleRows

        if not args.config:
            from ..errors import ConfigError
            raise ConfigError("--source fullscale needs --config FILE with 'llm' and 'images' sections")
        raw = load_yaml(args.config)
        test_fraction = float(raw.pop("test_fraction", 0.1))
        shard_size = int(raw.pop("shard_size", 1000))
        make_rows = FullScaleRows(raw)
        tasks = plan_shards(args.pairs, args.seed, test_fraction, shard_size)
        meta = {"source": "fullscale", "pairs": args.pairs, "seed": args.seed,
                "config": {**raw, "test_fraction": test_fraction, "shard_size": shard_size}}
        meta = json.loads(json.dumps(meta))
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        rep = run_build(args.out, tasks, make_rows, meta, workers=1 if distributed else args.workers,
                        overwrite=args.overwrite, resume=args.resume, distributed=distributed,
                        progress=not args.quiet)
    bad = sum(rep.failures.values())
    print(f"{rep.out}: {rep.pairs} pairs in {rep.seconds:.1f} s ({rep.pairs / max(rep.seconds, 1e-9):.1f} pairs/s); "
          f"{rep.shards_built} shard(s) built, {rep.shards_skipped} already done; "
          f"{bad} candidate pair(s) rejected by checks: {rep.failures}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from .stats import compute_stats

    stats = compute_stats(args.dir)
    if args.json:
        print(json.dumps(stats))
    else:
        print(json.dumps(stats, indent=2))
    return 0


def _show(args: argparse.Namespace) -> int:
    from .show import show_pairs

    print(show_pairs(args.dir, args.out, n=args.n, split=args.split))
    return 0


def register(groups: dict) -> None:
    g = groups["data"]
    p = g.add_parser("build", help="build a pair dataset (world or full-scale sources)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--pairs", type=int, default=2000, help="number of pairs (train + test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    p.add_argument("--source", choices=["world", "fullscale"], default="world")
    p.add_argument("--config", help="YAML file or preset name (world default: data-world)")
    p.add_argument("--size", type=int, help="image size override (world)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted build")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_build)

    p = g.add_parser("stats", help="print a dataset's statistics")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    p.set_defaults(func=_stats)

    p = g.add_parser("show", help="draw a grid of pairs with their prompts")
    p.add_argument("dir")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--split", choices=["train", "test"])
    p.set_defaults(func=_show)
