"""The world generator's text stage alone: does each mention learn which side of its partner it goes?

Runs ``gen.text_pretrain.TextStage`` on the preset's scene stream and schedule (the ``world
pretrain`` text stage without the rest) from a pipeline's encoders (``--init-from``) or random ones,
and prints, every ``--every`` steps, the mean over that window of the side read-out accuracy (sign of
the clause-fixed x/y offsets), the draw-order accuracy, the attention hint loss and colour/shape
accuracy. Compare ``--hint-weight 0`` with the preset's 3 on the same encoders.

    python benchmarks/text_stage.py --init-from DIR [--steps 1500] [--hint-weight 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init-from", default=None, help="a Flux pipeline folder (default: random tiny encoders)")
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's text_steps")
    ap.add_argument("--hint-weight", type=float, default=None, help="default: the preset's text_hint_weight")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    import transformers

    from spatialt2i.gen.pretrain import load_config
    from spatialt2i.gen.scene_stream import SceneStream
    from spatialt2i.gen.schedule import lr_factor
    from spatialt2i.gen.text_pretrain import TextStage
    from spatialt2i.gen.tiny import build_world_pipeline

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    cfg = load_config(init_from=args.init_from, text_steps=args.steps, text_hint_weight=args.hint_weight)
    torch.manual_seed(cfg.seed)
    stage = TextStage(build_world_pipeline(cfg), cfg.text_stage_lr, cfg.text_where_weight, cfg.max_sequence_length,
                      cfg.text_hint_weight)
    stream = SceneStream(cfg, cfg.seed + 12345)      # the stream `world pretrain` uses
    print(f"text stage: {cfg.text_steps} steps, batch {cfg.text_batch}, hint weight {cfg.text_hint_weight}, "
          f"encoders from {args.init_from or 'random init'}")
    t0, window = time.monotonic(), []
    for step in range(cfg.text_steps):
        scenes, prompts, spans = stream.described(cfg.text_batch)
        window.append(stage.step(scenes, prompts, spans, lr_factor(step, cfg.text_steps, 50, 0.05))[1])
        if (step + 1) % args.every == 0 or step + 1 == cfg.text_steps:
            mean = {k: sum(w.get(k, 0.0) for w in window) / len(window) for k in window[-1]}
            print(f"step {step + 1:5d}  side {mean['side_acc']:.3f}  order {mean['order_acc']:.3f}  "
                  f"hint {mean.get('hint', 0.0):.3f}  colour {mean['colour_acc']:.3f}  shape {mean['shape_acc']:.3f}  "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
            window = []


if __name__ == "__main__":
    main()
