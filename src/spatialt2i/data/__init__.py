"""Stage 1: adversarial pair datasets (perturbations, prompt and image sources, builder, stats)."""
