"""``spatialt2i demo --out DIR [--fast]``: the end-to-end run on the built-in world.

1. data    build an oracle-verified pair dataset                    (``data build``)
2. reward  train SpatialScore from the shipped tiny backbone        (``reward train`` + ``reward eval``)
3. rl      GRPO on the shipped base generator against SpatialScore  (``rl train``)
4. eval    held-out prompts before/after: SpatialScore, oracle      (``bench indomain``)
5. report  one self-contained HTML page + PNG figures               (``bench.report``)

Every stage calls the same code as its command. Each is cached in DIR: a stage whose ``.done-*``
marker exists is skipped, and the training stages resume from their checkpoints, so a killed run
continues where it stopped. Wall time per stage goes to ``DIR/timings.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class DemoSize:
    pairs: int
    reward_minutes: float
    rl_minutes: float
    eval_prompts: int
    rl_eval_prompts: int


SIZES = {"default": DemoSize(pairs=4000, reward_minutes=8.0, rl_minutes=9.0, eval_prompts=200, rl_eval_prompts=50),
         "fast": DemoSize(pairs=800, reward_minutes=1.2, rl_minutes=1.2, eval_prompts=60, rl_eval_prompts=20)}


def _cli(argv: list[str], capture: bool = False) -> str:
    """Run a ``spatialt2i`` command in process; raise if it fails; return its stdout if captured."""
    from .cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf) if capture else contextlib.nullcontext():
        code = main(argv)
    if code:
        raise RuntimeError(f"spatialt2i {' '.join(argv)} exited with {code}")
    return buf.getvalue()


def stage_data(out: Path, size: DemoSize) -> dict:
    from .data.builder import build_world
    from .data.show import show_pairs

    ds = out / "dataset"
    rep = build_world(ds, size.pairs, seed=0, workers=2, resume=(ds / "build.json").exists())
    show_pairs(ds, out / "figures" / "pairs.png", n=8)
    return {"pairs": rep.pairs, "rejected_candidates": rep.failures}


def stage_reward(out: Path, size: DemoSize) -> dict:
    rw = out / "reward"
    resume = ["--resume"] if (rw / "checkpoints").exists() else []
    _cli(["reward", "train", "--config", "world", "--data", str(out / "dataset"), "--out", str(rw),
          "--max-minutes", str(size.reward_minutes), "--quiet", *resume])
    report = _cli(["reward", "eval", "--model", str(rw / "model"), "--data", str(out / "dataset"),
                   "--baselines", "random,oracle", "--json", "--quiet"], capture=True)
    (rw / "eval.json").write_text(report)
    acc = json.loads(report)["systems"]
    return {k: round(v["overall"]["acc"], 4) for k, v in acc.items()}


def stage_rl(out: Path, size: DemoSize) -> dict:
    rl = out / "rl"
    resume = ["--resume"] if any(rl.glob("checkpoint*")) or (rl / "checkpoints").exists() else []
    _cli(["rl", "train", "--config", "world", "--out", str(rl), "--max-minutes", str(size.rl_minutes),
          "--set", "reward.kind=spatialscore", "--set", f"reward.path={out / 'reward' / 'model'}",
          "--set", f"prompts.eval_prompts={size.rl_eval_prompts}", "--no-progress", *resume])
    return {"lora": str(rl / "lora")}


def stage_eval(out: Path, size: DemoSize) -> dict:
    from .rl.cli import resolve_generator

    gen = resolve_generator(None, None)
    text = _cli(["bench", "indomain", "--generator", gen, "--lora", str(out / "rl" / "lora"),
                 "--reward", str(out / "reward" / "model"), "--n", str(size.eval_prompts),
                 "--out", str(out / "eval"), "--json"], capture=True)
    res = json.loads(text)
    summary: dict = {k: {"mean_spatialscore": round(v["mean_reward"], 4), "all_correct": round(v["all_correct"], 4)}
                     for k, v in res.items() if k != "change"}
    if "change" in res:
        c = res["change"]
        summary["all_correct_change"] = {"only_before": c["only_before"], "only_after": c["only_after"],
                                         "mcnemar_p": round(c["p"], 4)}
    return summary


def stage_report(out: Path, size: DemoSize) -> dict:
    from .bench.demo_report import build_demo_report

    path = build_demo_report(out)
    return {"report": str(path)}


STAGES: list[tuple[str, Callable[[Path, DemoSize], dict]]] = [
    ("data", stage_data), ("reward", stage_reward), ("rl", stage_rl), ("eval", stage_eval), ("report", stage_report)]


def run_demo(out: str | Path, fast: bool = False) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = SIZES["fast" if fast else "default"]
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for name, fn in STAGES:
        marker = out / f".done-{name}"
        if marker.exists():
            print(f"[demo] {name}: done already (cached in {out})", flush=True)
            continue
        print(f"[demo] {name} ...", flush=True)
        t = time.time()
        result = fn(out, size)
        timings[name] = {"seconds": round(time.time() - t, 1), **result}
        timings_file.write_text(json.dumps(timings, indent=2))
        marker.write_text(json.dumps(result))
        print(f"[demo] {name}: {timings[name]['seconds']} s  {json.dumps(result)}", flush=True)
    print(f"[demo] report: {out / 'report.html'}")
    return timings


def _cmd(args: argparse.Namespace) -> int:
    run_demo(args.out, fast=args.fast)
    return 0


def register(groups: dict) -> None:
    p = groups["_top"].add_parser("demo", help="end-to-end run on the built-in world (cached, resumable)")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--fast", action="store_true", help="smaller settings (about 5 minutes)")
    p.set_defaults(func=_cmd)
