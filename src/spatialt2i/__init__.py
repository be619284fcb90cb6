"""spatialt2i: spatial preference data, the SpatialScore reward model and GRPO for text-to-image models."""

__version__ = "0.1.0"
