"""``spatialt2i rl train``: GRPO fine-tuning of a Flux generator (one process or ``accelerate launch``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from spatialt2i.errors import ConfigError


def find_world_generator() -> Path | None:
    """The world's shipped base generator: a Flux pipeline folder under ``spatialt2i/assets``."""
    assets = Path(__file__).resolve().parent.parent / "assets"
    if not assets.is_dir():
        return None
    for index in sorted(assets.glob("**/model_index.json")):
        try:
            spec = json.loads(index.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if spec.get("transformer", [None, None])[-1] == "FluxTransformer2DModel":
            return index.parent
    return None


def resolve_generator(arg: str | None, configured: str | None) -> str:
    name = arg or configured
    if name:
        return name
    found = find_world_generator()
    if found is None:
        raise ConfigError("no generator given: pass --generator DIR (a diffusers Flux pipeline folder or hub "
                          "id) or set `generator:` in the config; the world's base generator is not shipped "
                          "in spatialt2i/assets yet")
    return str(found)


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.topk=0")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def load_generator(name: str, cfg: Any, device: Any = None) -> Any:
    import torch

    from spatialt2i.gen.flux import FluxGenerator

    dev = torch.device(device) if device is not None else torch.device("cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    sc = cfg.sample
    gen = FluxGenerator.from_pretrained(name, torch_dtype=dtype, device=dev, height=sc.height, width=sc.width,
                                        max_sequence_length=sc.max_sequence_length, guidance_scale=sc.guidance,
                                        true_cfg_scale=sc.true_cfg_scale, negative_prompt=sc.negative_prompt)
    return gen


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from spatialt2i.rl.config import load_rl_config
    from spatialt2i.rl.prompts import heldout_prompts
    from spatialt2i.rl.rewards import build_scorer
    from spatialt2i.rl.trainer import GRPOTrainer

    cfg = load_rl_config(args.config, _parse_overrides(args.set or []))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or torch.cuda.is_available():
        from accelerate import PartialState

        state = PartialState()  # initialises the process group under `accelerate launch`
        device = state.device
    gen = load_generator(resolve_generator(args.generator, cfg.generator), cfg, device)
    scorer = build_scorer(cfg.reward, device=device or "cpu")
    eval_prompts = heldout_prompts(cfg.prompts) if cfg.prompts.eval_prompts > 0 else None
    eval_scorer = scorer if cfg.reward.kind in ("spatialscore", "http", "mix") else None
    trainer = GRPOTrainer(cfg, gen, scorer, args.out, eval_prompts=eval_prompts, eval_scorer=eval_scorer)
    try:
        history = trainer.train(max_minutes=args.max_minutes, resume=args.resume, progress=not args.no_progress)
    finally:
        trainer.close()
    if trainer.rank == 0 and history:
        last = history[-1]
        print(json.dumps({k: v for k, v in last.items() if isinstance(v, (int, float))}))
        print(f"LoRA saved to {Path(args.out) / 'lora'}")
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["rl"].add_parser("train", help="GRPO fine-tuning of a Flux generator with a LoRA")
    p.add_argument("--config", default="world", help="preset (world, flux-dev) or YAML file")
    p.add_argument("--out", required=True, help="output folder (checkpoints, lora/, tb/, metrics.jsonl)")
    p.add_argument("--generator", help="Flux pipeline folder or hub id (default: the config's, else the "
                                       "world's shipped base generator)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (checkpointed) after this wall time")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.topk=0")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)
