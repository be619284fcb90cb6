"""Stage 2: the SpatialScore reward model (Qwen2.5-VL + LoRA + Gaussian head)."""
