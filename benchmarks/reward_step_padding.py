"""What ordering a step's pairs by prompt length saves in reward training (``PairTable.by_length``).

    python benchmarks/reward_step_padding.py --data DIR [--model asset:world-vlm-small] [--steps 12]
                                             [--batch 32] [--micro 16] [--threads 2]

The reward trainer cuts each optimizer step's pairs into micro-batches; every micro-batch pads its
prompts to the longest one. For the same ``--steps`` steps of the same seeded order it times forward
+ backward of the world preset's model (LoRA + head) over the micro-batches cut (a) in draw order and
(b) longest prompt first, alternating the two per step, and prints the padded / real text-token ratio
and the seconds per step of each, and their ratio. The summed gradient of a step is the same either way.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a pair dataset (spatialt2i data build)")
    ap.add_argument("--model", default="asset:world-vlm-small")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--micro", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from spatialt2i.reward.collate import collate_pairs
    from spatialt2i.reward.model import SpatialScore
    from spatialt2i.reward.pair_table import PairTable, StepOrder
    from spatialt2i.reward.train_config import load_train_config
    from spatialt2i.reward.trainer import pair_losses

    torch.set_num_threads(args.threads)
    cfg = load_train_config("world", {"base_model": args.model})
    model = SpatialScore.from_backbone(cfg.resolved_base_model(), lora=cfg.lora.settings(), device="cpu")
    model.train()
    table = PairTable(args.data, "train")
    order = StepOrder(len(table), args.batch, cfg.seed)
    tok = model.tokenizer

    def step(idx: np.ndarray) -> tuple[float, int, int]:
        t0, padded, real = time.perf_counter(), 0, 0
        for k in range(0, len(idx), args.micro):
            batch = collate_pairs(table.rows(idx[k:k + args.micro]))
            n = [len(tok(p)["input_ids"]) for p in batch.prompts]
            padded, real = padded + max(n) * len(n), real + sum(n)
            loss, _ = pair_losses(model(*batch.model_inputs()), len(batch), cfg)
            (loss / args.micro).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, padded, real

    step(order.step(0))  # warm-up
    res = {"draw order": np.zeros(3), "longest first": np.zeros(3)}
    for s in range(1, args.steps + 1):
        idx = order.step(s)
        pairs = (("draw order", idx), ("longest first", table.by_length(idx)))
        for name, ids in pairs if s % 2 else pairs[::-1]:
            res[name] += step(ids)
    print(f"{args.steps} steps of {args.batch} pairs in micro-batches of {args.micro}, {args.threads} threads, "
          f"{args.data}")
    for name, (sec, padded, real) in res.items():
        print(f"  {name:<14} padded/real text tokens {padded / real:.2f}   {sec / args.steps:.2f} s/step")
    a, b = res["draw order"][0], res["longest first"][0]
    print(f"  speed-up of longest first: {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
