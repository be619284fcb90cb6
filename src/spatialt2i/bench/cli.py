"""``spatialt2i bench indomain``: the in-domain spatial benchmark on held-out world prompts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_indomain(args: argparse.Namespace) -> int:
    import torch

    from spatialt2i.bench.indomain import describe_change, evaluate, image_grid, paired_change, save_report
    from spatialt2i.gen.flux import FluxGenerator
    from spatialt2i.rl.config import PromptSettings
    from spatialt2i.rl.lora import WEIGHT_NAME, LoraLoadError, load_lora_pipeline
    from spatialt2i.rl.prompts import heldout_prompts
    from spatialt2i.rl.rewards import SpatialScoreScorer

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lora is not None and not (Path(args.lora) / WEIGHT_NAME).is_file():
        raise LoraLoadError(f"--lora {args.lora}: no {WEIGHT_NAME} (expected a folder written by rl train)")
    prompts = heldout_prompts(PromptSettings(eval_prompts=args.n), args.n)
    scorer = SpatialScoreScorer(args.reward) if args.reward else None
    gen = FluxGenerator.from_pretrained(args.generator, height=args.size, width=args.size,
                                        max_sequence_length=args.max_sequence_length, guidance_scale=args.guidance)
    want_grid = args.out is not None
    runs = {}
    if args.lora is None or want_grid:
        runs["base"] = evaluate(gen, prompts, steps=args.steps, seed=args.seed, batch=args.batch, scorer=scorer,
                                return_images=want_grid)
    if args.lora is not None:
        load_lora_pipeline(gen.pipe, args.lora)
        runs["lora"] = evaluate(gen, prompts, steps=args.steps, seed=args.seed, batch=args.batch, scorer=scorer,
                                return_images=want_grid)
    result = runs.get("lora", runs.get("base"))
    report: dict = {k: {kk: vv for kk, vv in v.items() if kk != "images"} for k, v in runs.items()}
    if len(runs) == 2:
        report["change"] = paired_change(runs["base"], runs["lora"])
    if want_grid:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        n = min(args.grid, len(prompts))
        rows = [runs[k]["images"][:n] for k in runs]
        image_grid(rows, labels=list(runs)).save(out / "grid.png")
        (out / "grid_prompts.txt").write_text("\n".join(p.text for p in prompts[:n]) + "\n")
        save_report(report, out / "indomain.json")
    if args.json:
        print(json.dumps(report if len(report) > 1 else {k: v for k, v in result.items() if k != "images"},
                         indent=2))
    else:
        for name, r in runs.items():
            print(f"{name}: mean reward ({r['reward']}) {r['mean_reward']:.4f}  all-correct {r['all_correct']:.3f}  "
                  f"relation acc {r['relation_accuracy']:.3f}  presence {r['presence']:.3f}  (n={r['n_prompts']})")
        if "change" in report:
            print("base -> lora: " + describe_change(report["change"]))
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["bench"].add_parser("indomain", help="held-out world prompts: reward, oracle accuracy, presence")
    p.add_argument("--generator", required=True, help="Flux pipeline folder or hub id")
    p.add_argument("--lora", help="LoRA folder (diffusers format) to evaluate against the base")
    p.add_argument("--reward", help="SpatialScore checkpoint: mean reward is its mu (else the oracle score)")
    p.add_argument("--n", type=int, default=200, help="held-out prompts (2-4 objects, 1-3 relations)")
    p.add_argument("--steps", type=int, default=6, help="ODE sampling steps")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--guidance", type=float, default=3.5)
    p.add_argument("--max-sequence-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--out", help="folder for grid.png (base row, LoRA row) and indomain.json")
    p.add_argument("--grid", type=int, default=16, help="prompts in the image grid")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_indomain)
