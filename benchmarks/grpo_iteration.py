"""Time one GRPO iteration on the issue's fixed tiny Flux (rollout, train, total seconds).

Setting (issue 4, never changed here): tiny Flux at 64x64 px, VAE scale factor 4 -> 64 image
tokens; transformer 2 double + 2 single blocks, 4 heads x 32, joint dim 64, pooled 32, guidance
embedding; CLIP hidden 32 and T5 d_model 64, 2 layers each; 128 T5 tokens; group 24, 6 SDE steps
(flow_sde, noise 0.9), 5 trained steps, LoRA r32 on to_q/k/v/out.0, fp32, 2 threads, reward =
mean red channel. Reported: median of 5 iterations after one warm-up, for all 24 trained and for
top-6 + bottom-6 trained. Flow-GRPO's own code: 4.40 s per iteration (rollout 1.69 s, train 2.67 s).

    python benchmarks/grpo_iteration.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(topk: int, gen_dir: str, repeats: int) -> dict[str, float]:
    from spatialt2i.gen.flux import FluxGenerator
    from spatialt2i.rl.config import RLConfig, LoraSettings, RewardSettings, SampleSettings, TrainSettings
    from spatialt2i.rl.rewards import build_scorer
    from spatialt2i.rl.trainer import GRPOTrainer

    cfg = RLConfig(
        iterations=repeats + 1, prompts_per_iteration=1,
        sample=SampleSettings(group_size=24, steps=6, dynamics="flow_sde", noise_level=0.9, guidance=3.5,
                              height=64, width=64, max_sequence_length=128),
        # 6 samples x 5 steps = 30 rows per forward/backward pass: few passes, each cache-sized
        train=TrainSettings(topk=topk, lr=3e-4, clip_range=1e-4, train_steps=[0, 1, 2, 3, 4], micro_batch=6),
        reward=RewardSettings(kind="red"),
        lora=LoraSettings(rank=32, alpha=32, targets=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = FluxGenerator.from_pretrained(gen_dir, height=64, width=64, max_sequence_length=128, guidance_scale=3.5)
    trainer = GRPOTrainer(cfg, gen, build_scorer(cfg.reward))
    roll, train, cpu = [], [], []
    try:
        for it in range(repeats + 1):
            c0, t0 = time.process_time(), time.perf_counter()
            groups = trainer.rollout(it)
            t1 = time.perf_counter()
            trainer.update(groups)
            t2, c2 = time.perf_counter(), time.process_time()
            if it > 0:  # the first iteration is the warm-up
                roll.append(t1 - t0)
                train.append(t2 - t1)
                cpu.append(c2 - c0)
    finally:
        trainer.close()
    r, t = statistics.median(roll), statistics.median(train)
    tot = statistics.median([a + b for a, b in zip(roll, train)])
    return {"rollout_s": r, "train_s": t, "total_s": tot, "cpu_s": statistics.median(cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from spatialt2i.gen.tiny import build_tiny_flux_pipeline

    with tempfile.TemporaryDirectory() as d:
        build_tiny_flux_pipeline(d, seed=0)
        print(f"tiny Flux 64x64, 64 image + 128 text tokens, G=24, 6 SDE steps, 5 trained, LoRA r32, "
              f"fp32, {args.threads} threads; median of {args.repeats} after 1 warm-up")
        for name, k in (("all 24 trained", 0), ("top-6 + bottom-6 trained", 6)):
            res = run(k, d, args.repeats)
            print(f"{name:26s} rollout {res['rollout_s']:.3f} s  train {res['train_s']:.3f} s  "
                  f"total {res['total_s']:.3f} s  (process CPU time {res['cpu_s']:.2f} s)", flush=True)
    print("reference: Flow-GRPO's code 4.40 s (rollout 1.69 s, train 2.67 s); target <= 2.9 s")
    print(f"load average while measuring: {os.getloadavg()[0]:.2f} (timings are only comparable on a quiet machine)")


if __name__ == "__main__":
    main()
