"""CLI: ``spatialt2i reward init-tiny``, ``spatialt2i reward grow`` and ``spatialt2i world pretrain-vlm``."""

from __future__ import annotations

import argparse
import json
import sys


def _init_tiny(args: argparse.Namespace) -> int:
    from .tiny import init_tiny

    out = init_tiny(args.out, size=args.size, seed=args.seed)
    print(f"wrote a random-init tiny Qwen2.5-VL ({args.size}) to {out}")
    return 0


def _grow(args: argparse.Namespace) -> int:
    from .grow import grow_backbone
    from .tiny import SIZES

    text_layers = args.text_layers or SIZES[args.size]["layers"]
    vision_depth = args.vision_depth or SIZES[args.size]["vis_depth"]
    out = grow_backbone(args.model, args.out, text_layers, vision_depth)
    print(f"wrote {args.model} grown to {text_layers} text layers and {vision_depth} vision blocks to {out}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .pretrain import load_config, pretrain

    preset = args.config or f"vlm-pretrain-{args.size or 'small'}"
    cfg = load_config(preset, size=args.size, minutes=args.minutes, steps=args.steps, pairs_data=args.pairs_data,
                      seed=args.seed, threads=args.threads, init_from=args.init_from)
    meta = pretrain(args.out, cfg, resume=args.resume, log=lambda s: print(s, flush=True))
    if args.json:
        print(json.dumps(meta.get("history", [])[-1:] or meta))
    return 0


def _zeroshot(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from .pretrain import load_backbone
    from .zeroshot import load_pairs, pair_accuracy

    torch.set_num_threads(args.threads)
    model, tok, ip = load_backbone(args.model)
    pairs = load_pairs(args.data, args.split, args.n)
    res = {m: pair_accuracy(model, tok, ip, pairs, mode=m) for m in args.modes.split(",")}
    print(json.dumps(res, indent=1))
    return 0


def register(groups: dict) -> None:
    p = groups["reward"].add_parser("init-tiny", help="write a random-init tiny Qwen2.5-VL for the world")
    p.add_argument("--out", required=True)
    p.add_argument("--size", choices=("small", "base"), default="small")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_init_tiny)

    p = groups["reward"].add_parser("grow", help="grow a pretrained tiny backbone deeper, computing the same function")
    p.add_argument("--model", required=True, help="backbone folder or asset:NAME (e.g. asset:world-vlm-small)")
    p.add_argument("--out", required=True)
    p.add_argument("--size", choices=("base",), default="base", help="target depths from this tiny size")
    p.add_argument("--text-layers", type=int, default=0, help="text decoder layers (overrides --size)")
    p.add_argument("--vision-depth", type=int, default=0, help="vision blocks (overrides --size)")
    p.set_defaults(func=_grow)

    p = groups["world"].add_parser("pretrain-vlm", help="pretrain the tiny Qwen2.5-VL backbone on world scenes")
    p.add_argument("--out", required=True, help="output folder (a from_pretrained folder when done)")
    p.add_argument("--size", choices=("small", "base"), default=None, help="tiny size (default: the preset's)")
    p.add_argument("--minutes", type=float, default=None, help="training minutes (evaluation excluded)")
    p.add_argument("--steps", type=int, default=None, help="fixed training steps (then --minutes only caps the run)")
    p.add_argument("--config", default=None, help="YAML file or preset (default: vlm-pretrain-SIZE)")
    p.add_argument("--pairs-data", default=None, help="pair dataset for the zero-shot pair metric")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUT/_train/state.pt")
    p.add_argument("--init-from", default=None,
                   help="continue a saved backbone (folder or asset:NAME) under this run's schedule")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_pretrain)

    p = groups["reward"].add_parser("zeroshot", help="zero-shot pair accuracy of a pretrained backbone")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=0, help="pairs to use (0: all)")
    p.add_argument("--modes", default="yesno,allyes,logp")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_zeroshot)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
