"""Stage 3: online GRPO with top-k filtering on flow-matching generators."""
