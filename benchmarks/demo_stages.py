"""Run the end-to-end demo (``spatialt2i demo``) and print its wall time per stage.

A fresh ``--out`` (default: a temporary folder) times every stage from scratch; an existing demo
folder is resumed, and its finished stages are printed with the times recorded when they ran.

    python benchmarks/demo_stages.py [--fast] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="the demo's --fast size")
    ap.add_argument("--out", help="demo folder (default: a new temporary folder, removed afterwards)")
    args = ap.parse_args()
    from spatialt2i.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        t0 = time.time()
        timings = run_demo(out, fast=args.fast)
        wall = time.time() - t0
    print(f"\nspatialt2i demo{' --fast' if args.fast else ''}: wall time per stage")
    for name, rec in timings.items():
        extra = {k: v for k, v in rec.items() if k != "seconds"}
        print(f"  {name:7s} {rec['seconds']:8.1f} s  {rec['seconds'] / 60:5.1f} min  {json.dumps(extra)}")
    total = sum(rec["seconds"] for rec in timings.values())
    print(f"  {'total':7s} {total:8.1f} s  {total / 60:5.1f} min  (this process: {wall / 60:.1f} min)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (timings are comparable only on a quiet machine)")


if __name__ == "__main__":
    main()
