"""``spatialt2i reward train|eval`` and ``spatialt2i serve reward`` (heavy imports inside handlers)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _train(args: argparse.Namespace) -> int:
    from .train_config import load_train_config
    from .trainer import train_reward

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"base_model": args.base_model, "max_steps": args.max_steps, "batch_size": args.batch_size,
                 "micro_batch_size": args.micro_batch_size, "lr": args.lr, "max_minutes": args.max_minutes,
                 "seed": args.seed}
    cfg = load_train_config(args.config, {k: v for k, v in overrides.items() if v is not None})
    res = train_reward(cfg, args.data, args.out, resume=args.resume, progress=not args.quiet)
    from accelerate import PartialState

    from .trainer import use_cpu

    if PartialState(cpu=use_cpu()).is_main_process:
        ev = res.eval
        acc = f"; test acc {ev['acc']:.4f} (1-pert {ev['acc_1']:.4f}, 2-3-pert {ev['acc_23']:.4f})" if ev else ""
        print(f"{res.out}/model: {res.steps} steps ({res.pairs_seen} pairs, resumed at {res.resumed_from}) "
              f"in {res.seconds:.1f} s; {res.skipped} row(s) skipped{acc}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_dataset, format_table
    from .judges import make_baselines

    baselines = make_baselines([b for b in (args.baselines or "").split(",") if b.strip()], args)
    report = evaluate_dataset(args.model, args.data, split=args.split, batch_size=args.batch_size,
                              limit=args.limit, baselines=baselines, progress=not args.quiet and not args.json)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .server import ServerSettings, serve

    serve(args.model, ServerSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue=args.queue,
                                     max_image_bytes=args.max_image_mb * 2 ** 20, max_side=args.max_side),
          host=args.host, port=args.port, device=args.device, access_log=args.access_log)
    return 0


def register(groups: dict) -> None:
    g = groups["reward"]
    p = g.add_parser("train", help="train SpatialScore on a pair dataset (accelerate launch for several processes)")
    p.add_argument("--config", default="world", help="preset (world, qwen7b) or YAML file")
    p.add_argument("--data", required=True, help="pair dataset folder")
    p.add_argument("--out", required=True, help="output folder (checkpoints, tb/, model/)")
    p.add_argument("--base-model", help="backbone folder or hub id (overrides the config)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    p.add_argument("--batch-size", type=int, help="override the global batch (pairs)")
    p.add_argument("--micro-batch-size", type=int, help="override pairs per process per forward")
    p.add_argument("--lr", type=float, help="override the LoRA learning rate")
    p.add_argument("--max-minutes", type=float, help="override the training time budget")
    p.add_argument("--seed", type=int, help="override the seed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = g.add_parser("eval", help="pairwise accuracy of a SpatialScore checkpoint (+ baselines)")
    p.add_argument("--model", help="SpatialScore checkpoint folder (omit to run baselines only)")
    p.add_argument("--data", required=True, help="pair dataset folder")
    p.add_argument("--split", default="test")
    p.add_argument("--baselines", default="", help="comma list: random, oracle, judge, judge-pairwise")
    p.add_argument("--judge-url", help="OpenAI-compatible base URL for the judge (or SPATIALT2I_LLM_BASE_URL)")
    p.add_argument("--judge-model", help="judge model name (or SPATIALT2I_LLM_MODEL)")
    p.add_argument("--judge-retries", type=int, default=2, help="re-asks after a malformed answer")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per forward")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N pairs")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_eval)

    p = groups["serve"].add_parser("reward", help="HTTP reward server with dynamic batching")
    p.add_argument("--model", required=True, help="SpatialScore checkpoint folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--max-batch", type=int, default=32, help="images per model call")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits to fill")
    p.add_argument("--queue", type=int, default=256, help="queued images before answering 503")
    p.add_argument("--max-image-mb", type=int, default=16, help="largest accepted image (encoded)")
    p.add_argument("--max-side", type=int, default=4096, help="largest accepted image side in pixels")
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs ~a request's parsing)")
    p.set_defaults(func=_serve)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
