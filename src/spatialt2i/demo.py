"""``spatialt2i demo --out DIR [--fast]``: the end-to-end run on the built-in world.

Stages run in order, each cached in DIR (a stage whose ``done`` marker exists is skipped, so a
killed run resumes where it stopped). Wall time per stage goes to ``DIR/timings.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class DemoSize:
    pairs: int
    workers: int


SIZES = {"default": DemoSize(pairs=4000, workers=2), "fast": DemoSize(pairs=600, workers=2)}


def stage_data(out: Path, size: DemoSize) -> dict:
    from .data.builder import build_world
    from .data.show import show_pairs

    ds = out / "dataset"
    rep = build_world(ds, size.pairs, seed=0, workers=size.workers, resume=ds.exists())
    show_pairs(ds, out / "figures" / "pairs.png", n=8)
    return {"pairs": rep.pairs, "seconds": round(rep.seconds, 1), "rejected_candidates": rep.failures}


STAGES: list[tuple[str, Callable[[Path, DemoSize], dict]]] = [("data", stage_data)]


def run_demo(out: str | Path, fast: bool = False) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = SIZES["fast" if fast else "default"]
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for name, fn in STAGES:
        marker = out / f".done-{name}"
        if marker.exists():
            print(f"[demo] {name}: done already (cached in {out})")
            continue
        print(f"[demo] {name} ...")
        t = time.time()
        result = fn(out, size)
        timings[name] = {"seconds": round(time.time() - t, 1), **result}
        timings_file.write_text(json.dumps(timings, indent=2))
        marker.write_text(json.dumps(result))
        print(f"[demo] {name}: {timings[name]['seconds']} s")
    return timings


def _cmd(args: argparse.Namespace) -> int:
    run_demo(args.out, fast=args.fast)
    return 0


def register(groups: dict) -> None:
    p = groups["_top"].add_parser("demo", help="end-to-end run on the built-in world (cached, resumable)")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--fast", action="store_true", help="smaller settings (about 5 minutes)")
    p.set_defaults(func=_cmd)
