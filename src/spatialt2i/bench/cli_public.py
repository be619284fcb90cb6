"""``spatialt2i bench run`` (public benchmarks) and ``spatialt2i bench suites``."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_suites(args: argparse.Namespace) -> int:
    from .suites import SUITES, benchmarks_dir

    print(f"prompt files from: {benchmarks_dir()}")
    for name, desc in SUITES.items():
        print(f"  {name:26s} {desc}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .geneval import make_detector
    from .judges_public import make_judge
    from .public import run_suite
    from .suites import load_suite

    suite = load_suite(args.suite, tiif_path=args.tiif_path, dpg_csv=args.dpg_csv)
    judge = make_judge(args.judge, url=args.judge_url, model=args.judge_model, api_key=args.judge_api_key,
                       device=args.judge_device)
    detector = make_detector(args.detector, judge) if suite.protocol == "geneval" else None
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    n = len(seeds) if seeds and args.n_images is None else (args.n_images or 4)
    try:
        run_suite(suite, args.generator, lora=args.lora, judge=judge, out=args.out, n_images=n, seeds=seeds,
                  max_prompts=args.max_prompts, steps=args.steps, guidance=args.guidance,
                  resolution=args.resolution, batch_size=args.batch_size, detector=detector,
                  retries=args.retries, workers=args.workers)
    finally:
        close = getattr(judge, "close", None)
        if close:
            close()
    return 0


def register(groups: dict[str, Any]) -> None:
    bench = groups["bench"]
    p = bench.add_parser("run", help="run a public benchmark (generate, judge, tabulate)")
    p.add_argument("--suite", required=True, help="suite name (see `spatialt2i bench suites`)")
    p.add_argument("--generator", required=True, help="Flux pipeline folder or hub id")
    p.add_argument("--lora", default=None, help="generator LoRA folder (diffusers format)")
    p.add_argument("--judge", required=True, help="'openai' (any OpenAI-compatible endpoint) or 'qwen:PATH'")
    p.add_argument("--judge-url", default=None,
                   help="endpoint base URL (default: $SPATIALT2I_LLM_BASE_URL / $OPENAI_BASE_URL)")
    p.add_argument("--judge-model", default=None, help="endpoint model name (default: $SPATIALT2I_LLM_MODEL)")
    p.add_argument("--judge-api-key", default=None, help="API key (default: $SPATIALT2I_LLM_API_KEY / $OPENAI_API_KEY)")
    p.add_argument("--judge-device", default=None, help="device of a local qwen judge (e.g. cuda)")
    p.add_argument("--detector", default="vlm", help="GenEval boxes: 'vlm' (ask the judge) or 'world'")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--n-images", type=int, default=None, help="images per prompt (default 4, or one per --seeds)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, one per image index (default 0..N-1)")
    p.add_argument("--max-prompts", type=int, default=None, help="only the first M prompts")
    p.add_argument("--tiif-path", default=None, help="TIIF-Bench checkout or its data/ folder (tiif-* suites)")
    p.add_argument("--dpg-csv", default=None, help="DPG-Bench's dpg_bench.csv (dpg-bench suite)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--guidance", type=float, default=3.5)
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--retries", type=int, default=2, help="re-asks after a malformed judge answer")
    p.add_argument("--workers", type=int, default=4, help="parallel judge requests")
    p.set_defaults(func=cmd_run)
    s = bench.add_parser("suites", help="list the public benchmark suites")
    s.set_defaults(func=cmd_suites)
