"""Full-size timings on one CUDA GPU, with random weights built from the public configs (no download).

* ``flux``: one GRPO iteration of the ``flux-dev`` preset on a FLUX.1-dev-sized pipeline (12B
  transformer, T5-XXL, CLIP-L, the 16-channel VAE) at 512x512: one group of 24 sampled in batches
  of 12, 6 SDE steps, top-6 + bottom-6 trained on 5 steps, LoRA r32 on to_q/k/v/out.0 (fp32 adapter
  over the bf16 base), KL 0.01 (one more forward with the adapter off), micro-batch 2 with
  gradient checkpointing. The reward is the mean red channel, so the figure is the generator's
  alone; SpatialScore's share is timed in ``reward`` (scoring one group of 24).
* ``reward``: SpatialScore on a Qwen2.5-VL-7B-sized backbone (the ``qwen7b`` preset: LoRA r64 on
  every linear layer of the language model, batch 32 pairs = 64 images in micro-batches of 4, bf16,
  gradient checkpointing), trained for a few steps by ``spatialt2i reward train``'s own trainer on
  world pairs rendered at 512 px (``spatialt2i data build --size 512``), then loaded back with
  ``SpatialScore.from_pretrained`` to score 24 images. ``reward-parts`` splits a 24-image forward
  (CPU preprocessing, vision tower, whole model); ``reward-step-parts`` times one micro-batch's
  forward + backward with and without LoRA dropout and gradient checkpointing.

The tokenizers are the world's (ids stay inside the public vocabularies); the token counts match the
real models' (512 T5 tokens, 1024 image tokens; 324 visual tokens per 512 px image for Qwen2.5-VL).

    python benchmarks/fullscale_gpu.py --data PAIRS_DIR [--parts flux,reward] [--no-ckpt-variant]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# public configs (black-forest-labs/FLUX.1-dev, Qwen/Qwen2.5-VL-7B-Instruct)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                guidance_embeds=True, axes_dims_rope=(16, 56, 56))
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611,
                shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, is_encoder_decoder=False)
QWEN7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6, vocab_size=152064,
                   layer_types=["full_attention"] * 28,
                   rope_parameters={"mrope_section": [16, 24, 24], "rope_theta": 1e6, "rope_type": "default"})
QWEN7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                     patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                     fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)


@contextlib.contextmanager
def building(device: str, dtype: torch.dtype = torch.bfloat16):
    """Construct modules straight on ``device`` in ``dtype`` (no fp32 copy, no CPU init)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def sync() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def timed(fn, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` over the repeats after the first (the warm-up)."""
    ts = []
    for _ in range(repeats):
        t0 = sync()
        fn()
        ts.append(sync() - t0)
    return round(statistics.median(ts[1:]), 3)


def reward_inputs(n: int) -> tuple[list[str], list]:
    """``n`` world-style prompts and 512 px images for the reward timings (contents do not matter)."""
    from PIL import Image

    prompt = "a red circle to the left of a blue square, and a green triangle above the circle"
    return [prompt] * n, [Image.new("RGB", (512, 512), (40 * (i % 6), 90, 200)) for i in range(n)]


def gib(n: int) -> float:
    return round(n / 2 ** 30, 1)


def billions(m: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in m.parameters()) / 1e9, 2)


# ---------------------------------------------------------------------------------------------- flux
def flux_pipeline(device: str):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from spatialt2i.gen.pretrain_config import world_generator_path

    tiny = FluxPipeline.from_pretrained(str(world_generator_path()))  # only its tokenizers are used
    with building(device):
        parts = dict(transformer=FluxTransformer2DModel(**FLUX_DEV), vae=AutoencoderKL(**FLUX_VAE),
                     text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                     text_encoder_2=T5EncoderModel(T5Config(**T5_XXL)))
    for m in parts.values():
        m.eval().requires_grad_(False)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), tokenizer=tiny.tokenizer,
                        tokenizer_2=tiny.tokenizer_2, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_flux(device: str, ckpt_variant: bool, cudnn_attention: bool = False) -> dict:
    from spatialt2i.gen.flux import FluxGenerator
    from spatialt2i.rl.config import load_rl_config
    from spatialt2i.rl.rewards import RedChannelScorer
    from spatialt2i.rl.trainer import GRPOTrainer

    t0 = time.perf_counter()
    pipe = flux_pipeline(device)
    res: dict = {"build_s": round(sync() - t0, 1), "transformer_b": billions(pipe.transformer),
                 "t5_b": billions(pipe.text_encoder_2)}
    print(f"[flux] built in {res['build_s']} s: transformer {res['transformer_b']}B, T5 {res['t5_b']}B", flush=True)
    cfg = load_rl_config("flux-dev", {"reward.kind": "red", "prompts_per_iteration": 1, "iterations": 3,
                                      "prompts.eval_prompts": 0, "train.cudnn_attention": cudnn_attention})
    gen = FluxGenerator(pipe, height=cfg.sample.height, width=cfg.sample.width,
                        max_sequence_length=cfg.sample.max_sequence_length, guidance_scale=cfg.sample.guidance)
    tr = GRPOTrainer(cfg, gen, RedChannelScorer())
    res["lora_params_m"] = round(sum(p.numel() for p in tr.params) / 1e6, 1)
    try:
        for it in range(2):  # the first is the warm-up
            torch.cuda.reset_peak_memory_stats()
            t0 = sync()
            groups = tr.rollout(it)
            t1 = sync()
            stats = tr.update(groups)
            t2 = sync()
            row = {"rollout_s": round(t1 - t0, 2), "update_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
                   "peak_gib": gib(torch.cuda.max_memory_allocated()), "ratio": stats["ratio"],
                   "kept": stats["kept_samples"]}
            print(f"[flux] iteration {it}{' (warm-up)' if it == 0 else ''}: {row}", flush=True)
        res["iteration"] = row
        if ckpt_variant:  # the same update without checkpointing, micro-batch 1 (5 rows per pass)
            tr.gen.transformer.disable_gradient_checkpointing()
            tr.cfg.train.micro_batch = 1
            torch.cuda.reset_peak_memory_stats()
            t1 = sync()
            try:
                tr.update(groups)
                res["no_ckpt_mb1"] = {"update_s": round(sync() - t1, 2),
                                      "peak_gib": gib(torch.cuda.max_memory_allocated())}
            except torch.OutOfMemoryError:
                res["no_ckpt_mb1"] = "out of memory"
            print(f"[flux] update without gradient checkpointing, micro-batch 1: {res['no_ckpt_mb1']}", flush=True)
    finally:
        tr.close()
    return res


# -------------------------------------------------------------------------------------------- reward
def qwen7b(device: str):
    """A Qwen2.5-VL-7B-shaped model with random weights, the world's tokenizer folder and a
    preprocessor config with Qwen's patch size and pixel bounds."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from spatialt2i.reward.train_config import ASSETS

    src = ASSETS / "world-vlm-base"
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"].update(QWEN7B_TEXT)
    cfg["vision_config"].update(QWEN7B_VISION)
    cfg["dtype"] = "bfloat16"
    with building(device):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(cfg))
    proc = json.loads((src / "preprocessor_config.json").read_text())
    proc.update(patch_size=14, size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})  # Qwen's defaults
    return model, src, proc


def qwen7b_folder(out: Path, device: str) -> float:
    """:func:`qwen7b` saved as a checkpoint folder; returns its size in billions of parameters."""
    model, src, proc = qwen7b(device)
    size = billions(model)
    model.save_pretrained(out)
    del model
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(src / name, out / name)
    (out / "preprocessor_config.json").write_text(json.dumps(proc, indent=2))
    return size


def bench_reward_parts(device: str) -> dict:
    """Where one forward of 24 prompt/image pairs goes: preprocessing (CPU), vision tower, the rest."""
    from spatialt2i.reward.backbone import encode, image_processor_class, load_tokenizer
    from spatialt2i.reward.prompt import reward_text

    model, src, proc = qwen7b(device)
    model.eval()
    tok, ip = load_tokenizer(str(src)), image_processor_class().from_dict(proc)
    prompts, imgs = reward_inputs(24)
    texts = [reward_text(tok, p) for p in prompts]
    res = {"preprocess_s": timed(lambda: encode(tok, ip, texts, imgs))}
    enc = {k: v.to(device) for k, v in encode(tok, ip, texts, imgs).items()}
    enc["pixel_values"] = enc["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        res["vision_s"] = timed(lambda: model.model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]))
        res["forward_s"] = timed(lambda: model.model(**enc, use_cache=False))
        res["attn_implementation"] = model.config.vision_config._attn_implementation
    print(f"[reward-parts] 24 pairs at 512 px: {res}", flush=True)
    return res


def bench_reward(device: str, data: str, steps: int, work: Path) -> dict:
    from spatialt2i.reward.model import SpatialScore
    from spatialt2i.reward.train_config import load_train_config
    from spatialt2i.reward.trainer import train_reward

    base, out = work / "qwen7b", work / "spatialscore"
    t0 = time.perf_counter()
    res: dict = {"backbone_b": qwen7b_folder(base, device)}
    res["build_and_save_s"] = round(time.perf_counter() - t0, 1)
    print(f"[reward] {res['backbone_b']}B backbone built and saved in {res['build_and_save_s']} s", flush=True)
    cfg = load_train_config("qwen7b", {"base_model": str(base), "max_steps": steps, "log_every": 1,
                                       "eval_every": 0, "save_every": 0, "warmup_steps": 0})
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train_reward(cfg, data, out, progress=False)
    res["train_run_s"] = round(time.perf_counter() - t0, 1)
    res["train_peak_gib"] = gib(torch.cuda.max_memory_allocated())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_s = [r["train/pairs_per_s"] for r in rows if "train/pairs_per_s" in r]
    step_s = [cfg.batch_size / p for p in per_s]
    res["step_s"] = [round(s, 2) for s in step_s]
    res["step_s_median_after_first"] = round(statistics.median(step_s[1:] or step_s), 2)
    print(f"[reward] {steps} steps of {cfg.batch_size} pairs: {res['step_s']} s per step; "
          f"peak {res['train_peak_gib']} GiB; whole run {res['train_run_s']} s", flush=True)
    model = SpatialScore.from_pretrained(out / "model", device=device)
    prompts, imgs = reward_inputs(24)
    res["tokens_per_sample"] = int(model.encode(prompts[:1], imgs[:1])["input_ids"].shape[1])
    res["score_24_s"] = timed(lambda: model.score(prompts, imgs, batch_size=24))
    print(f"[reward] scoring one group of 24 images (512 px, {res['tokens_per_sample']} tokens each): "
          f"{res['score_24_s']} s", flush=True)
    return res


def bench_reward_step_parts(device: str) -> dict:
    """One micro-batch of the qwen7b preset (4 pairs = 8 images) forward + backward through the LoRA
    backbone, with and without LoRA dropout and gradient checkpointing (where the step's time goes)."""
    from peft import LoraConfig, get_peft_model

    from spatialt2i.reward.backbone import encode, image_processor_class, load_tokenizer
    from spatialt2i.reward.model import LoraSettings
    from spatialt2i.reward.prompt import reward_text
    from spatialt2i.reward.train_config import load_train_config

    pre = load_train_config("qwen7b").lora
    lora = LoraSettings(r=pre.r, alpha=pre.alpha, dropout=pre.dropout, targets=tuple(pre.targets))
    model, src, proc = qwen7b(device)
    model.requires_grad_(False)
    # the adapter SpatialScore adds (its _build needs a saved backbone folder; this stays in memory)
    vlm = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                           target_modules=lora.target_regex(), bias="none")).get_base_model()
    tok, ip = load_tokenizer(str(src)), image_processor_class().from_dict(proc)
    prompts, imgs = reward_inputs(8)
    enc = {k: v.to(device) for k, v in encode(tok, ip, [reward_text(tok, p) for p in prompts], imgs).items()}
    enc["pixel_values"] = enc["pixel_values"].to(torch.bfloat16)

    def set_dropout(p: float) -> None:
        for m in vlm.modules():
            if hasattr(m, "lora_dropout") and "default" in m.lora_dropout:
                m.lora_dropout["default"] = torch.nn.Dropout(p) if p > 0 else torch.nn.Identity()

    def step() -> None:
        h = vlm.model(**enc, use_cache=False).last_hidden_state
        h[:, -1].float().pow(2).mean().backward()

    vlm.train()
    res: dict = {"lora_dropout": lora.dropout}
    for ckpt in (True, False):
        if ckpt:
            vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            vlm.gradient_checkpointing_disable()
        for drop in (lora.dropout, 0.0):
            set_dropout(drop)
            torch.cuda.reset_peak_memory_stats()
            key = f"ckpt_{'on' if ckpt else 'off'}_dropout_{drop}"
            res[key] = {"s": timed(step), "peak_gib": gib(torch.cuda.max_memory_allocated())}
            print(f"[reward-step-parts] 8 images fwd+bwd, {key}: {res[key]}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="flux,reward", help="comma-separated: flux, reward, reward-parts, reward-step-parts")
    ap.add_argument("--data", help="world pairs at 512 px (spatialt2i data build --size 512), for reward")
    ap.add_argument("--steps", type=int, default=3, help="reward-training steps to time")
    ap.add_argument("--no-ckpt-variant", action="store_true", help="skip the update without checkpointing")
    ap.add_argument("--cudnn-attention", action="store_true",
                    help="flux: let attention use cuDNN (train.cudnn_attention; off by default)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("fullscale_gpu.py: needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = "cuda"
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    print(f"{out['gpu']}, torch {out['torch']}", flush=True)
    parts = args.parts.split(",")
    if "reward" in parts and not args.data:
        raise SystemExit("--data: the reward part needs a pair dataset (spatialt2i data build --size 512)")
    for part in parts:  # a failing part is reported and the next one still runs
        try:
            if part == "flux":
                out["flux"] = bench_flux(dev, not args.no_ckpt_variant, args.cudnn_attention)
            elif part == "reward-parts":
                out[part] = bench_reward_parts(dev)
            elif part == "reward-step-parts":
                out[part] = bench_reward_step_parts(dev)
            elif part == "reward":
                with tempfile.TemporaryDirectory() as d:
                    out["reward"] = bench_reward(dev, args.data, args.steps, Path(d))
            else:
                raise SystemExit(f"--parts: unknown part {part!r} (flux, reward, reward-parts, reward-step-parts)")
        except Exception as e:  # noqa: BLE001 -- a benchmark reports and goes on
            traceback.print_exc()
            out[part] = f"failed: {type(e).__name__}: {e}"
        gc.collect()
        torch.cuda.empty_cache()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
