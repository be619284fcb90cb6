"""In-process SpatialScore: ``spatialscore.score(prompts, images, model=DIR) -> {"reward", "mu", "sigma"}``.

The checkpoint is loaded on first use and cached (per folder, device and dtype), so calling ``score``
in a loop costs one load. ``model`` may also be an ``http://`` URL of ``spatialt2i serve reward``
(the same interface over HTTP), or omitted when ``SPATIALSCORE_MODEL`` is set.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

ENV_MODEL = "SPATIALSCORE_MODEL"
_CACHE: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()


def load(model: str | os.PathLike | None = None, device: str | None = None, dtype: str | None = None) -> Any:
    """The cached scorer for ``model`` (a SpatialScore checkpoint folder or a reward-server URL)."""
    from .errors import ConfigError

    name = str(model) if model is not None else os.environ.get(ENV_MODEL, "")
    if not name:
        raise ConfigError(f"spatialscore: no model given (pass model=DIR or set {ENV_MODEL})")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith(("http://", "https://")):
        key = (name, "http", "")
    else:
        name = str(Path(name).expanduser().resolve())
        key = (name, dev, str(dtype))
    with _LOCK:
        if key not in _CACHE:
            if key[1] == "http":
                from .reward.client import RewardClient
                _CACHE[key] = RewardClient(name)
            else:
                from .reward.model import SpatialScore
                _CACHE[key] = SpatialScore.from_pretrained(name, device=dev, dtype=dtype)
        return _CACHE[key]


def score(prompts: Sequence[str], images: Sequence[Any], model: str | os.PathLike | None = None,
          device: str | None = None, batch_size: int | None = 32) -> dict[str, torch.Tensor]:
    """``{"reward", "mu", "sigma"}`` (fp32 CPU tensors, one value per image) for prompt/image pairs."""
    scorer = load(model, device)
    if hasattr(scorer, "url"):
        return scorer.score(prompts, images)
    return scorer.score(list(prompts), list(images), batch_size=batch_size)


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
