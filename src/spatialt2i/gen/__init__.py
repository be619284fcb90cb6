"""Generator adapters (FLUX via diffusers) and sampling schedules."""
