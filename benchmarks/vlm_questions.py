"""Held-out yes/no accuracy of a world VLM backbone, as its pretraining evaluates it.

    python benchmarks/vlm_questions.py [--model DIR|asset:NAME] [--questions 300] [--threads 2]

Prints the pretraining's VQA accuracies (``reward/pretrain_eval.py``: LM argmax over yes/no) on the
same held-out sets: the full world, easy scenes, and in front of / behind only -- e.g. to place a
checkpoint made before the depth-only set existed beside a new run's ``metrics-*.jsonl``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="asset:world-vlm-small")
    ap.add_argument("--questions", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from spatialt2i.reward.pretrain import load_backbone, load_config
    from spatialt2i.reward.pretrain_losses import Probes
    from spatialt2i.reward.pretrain_batch import answer_ids
    from spatialt2i.reward.pretrain_eval import evaluate, make_eval_sets
    from spatialt2i.reward.train_config import resolve_asset

    torch.set_num_threads(args.threads)
    model, tok, ip = load_backbone(resolve_asset(args.model))
    cfg = load_config("vlm-pretrain-small")
    sets = {k: v for k, v in make_eval_sets(tok, cfg, args.questions).items() if k.startswith("vqa")}
    res = evaluate(model, Probes(model.config.text_config.hidden_size), tok, ip, sets, answer_ids(tok), cfg)
    for name in sets:
        print(f"{name:<10} {len(sets[name]):>4} questions  yes/no accuracy {res[f'{name}_acc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
