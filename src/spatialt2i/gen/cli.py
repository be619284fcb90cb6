"""``spatialt2i world pretrain`` (train the world's base generator) and ``world eval-generator``."""

from __future__ import annotations

import argparse
import json


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    world = groups["world"]
    p = world.add_parser("pretrain", help="train the world's base generator (a tiny Flux pipeline)")
    p.add_argument("--out", required=True, help="output folder (the pipeline; train_state/, logs/ inside)")
    p.add_argument("--config", default="world-generator", help="YAML file or preset (default: world-generator)")
    p.add_argument("--minutes", type=float, default=None, help="total wall-time budget (overrides the config)")
    p.add_argument("--seed", type=int, default=None, help="seed (overrides the config)")
    p.add_argument("--vae-steps", type=int, default=None, help="fixed VAE steps (then --minutes is only a cap)")
    p.add_argument("--steps", type=int, default=None, help="fixed flow-matching steps (then --minutes is only a cap)")
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop flow matching after this many steps (the lr schedule still spans --steps)")
    p.add_argument("--batch", type=int, default=None, help="flow-matching batch size (overrides the config)")
    p.add_argument("--init-from", default=None,
                   help="a pipeline folder to continue from: every part starts from it (no VAE stage)")
    p.add_argument("--text-steps", type=int, default=None, help="text-stage steps (overrides the config; 0: none)")
    p.add_argument("--grounding-weight", type=float, default=None, help="token grounding loss weight (overrides)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state after a kill")
    p.add_argument("--lr", type=float, default=None, help="flow-matching learning rate (overrides the config)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cpu (default) or cuda: where every stage runs")
    p.add_argument("--data-workers", type=int, default=None,
                   help="render flow-matching batches in this many processes (for a GPU; default 0)")
    p.add_argument("--fp16", action="store_true", help="also save an fp16 copy in OUT/fp16 (half the size)")
    p.set_defaults(func=_pretrain)

    e = world.add_parser("eval-generator", help="oracle figures of a generator on held-out world prompts")
    e.add_argument("generator", help="a Flux pipeline folder (default: the shipped world generator)", nargs="?")
    e.add_argument("-n", type=int, default=200, help="number of held-out prompts (default 200)")
    e.add_argument("--steps", type=int, default=6, help="sampling steps (default 6, as the RL preset)")
    e.add_argument("--max-sequence-length", type=int, default=128)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    e.set_defaults(func=_eval)


def _pretrain(args: argparse.Namespace) -> int:
    import torch

    from spatialt2i.gen.pretrain import Pretrainer, load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, minutes=args.minutes, seed=args.seed, vae_steps=args.vae_steps,
                      fm_steps=args.steps, fm_stop=args.stop_at, batch=args.batch, init_from=args.init_from,
                      text_steps=args.text_steps, grounding_weight=args.grounding_weight, lr=args.lr,
                      device=args.device, data_workers=args.data_workers)
    tr = Pretrainer(cfg, args.out, resume=args.resume)
    res = tr.run()
    if args.fp16:
        tr.save(f"{args.out}/fp16", dtype=torch.float16)
    print(json.dumps({k: v for k, v in res.items() if k not in ("images",)}, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from spatialt2i.gen.evaluate import evaluate_generator, format_report
    from spatialt2i.gen.flux import FluxGenerator
    from spatialt2i.gen.pretrain import world_generator_path

    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.generator or world_generator_path()
    gen = FluxGenerator.from_pretrained(path, height=64, width=64, max_sequence_length=args.max_sequence_length)
    res = evaluate_generator(gen, n=args.n, steps=args.steps)
    print(json.dumps(res, indent=2) if args.json else format_report(res))
    return 0
