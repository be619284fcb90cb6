"""Images from any diffusers text-to-image pipeline (FLUX.1-dev at full scale, a tiny Flux in tests).

``DiffusersImageSource(path)`` loads ``DiffusionPipeline.from_pretrained(path)`` (a local folder
or a Hugging Face Hub id) and renders prompts with one ``torch.Generator`` per image, seeded by
the caller; the two prompts of a pair get the same seed, so they start from the same noise and the
pair differs only where the prompts do. Generators live on the CPU, so a seed gives the same
initial noise on any device.

Device: ``device`` if given, else ``cuda:$LOCAL_RANK`` under ``accelerate launch``/torchrun,
``cuda`` when available, else ``cpu``. Dtype: fp32 on CPU, bf16 by default on CUDA.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def default_device() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local_rank)}" if local_rank is not None else "cuda"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"images.dtype: unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _dtype_kwarg() -> str:
    """``dtype`` on diffusers that deprecate ``torch_dtype`` (>= 0.36), ``torch_dtype`` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def load_pipeline(path: str | os.PathLike, dtype: torch.dtype) -> Any:
    """``DiffusionPipeline.from_pretrained(path)``; ``ConfigError`` naming ``path`` if it is not a
    diffusers pipeline folder or a loadable Hub id."""
    from diffusers import DiffusionPipeline

    name = str(path)
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ConfigError(f"diffusers pipeline {name!r}: is a file, not a pipeline folder")
        if not (local / "model_index.json").is_file():
            raise ConfigError(f"diffusers pipeline {name!r}: not a diffusers pipeline "
                              f"(no model_index.json in the folder)")
        where, source = f"folder {name!r}", str(local)
    elif _HUB_ID.match(name) and not name.startswith((".", "~")):
        where, source = f"{name!r} (no such local folder; tried it as a Hugging Face Hub id)", name
    else:
        raise ConfigError(f"diffusers pipeline {name!r}: no such folder")
    try:
        pipe = DiffusionPipeline.from_pretrained(source, **{_dtype_kwarg(): dtype})
    except Exception as e:  # diffusers/hub raise many types (OSError, ValueError, HTTP errors)
        raise ConfigError(f"diffusers pipeline {where}: cannot be loaded "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if "prompt" not in inspect.signature(pipe.__call__).parameters:
        raise ConfigError(f"diffusers pipeline {name!r}: {type(pipe).__name__} is not a "
                          f"text-to-image pipeline (its __call__ takes no 'prompt')")
    return pipe


class DiffusersImageSource:
    """Render prompts with a diffusers text-to-image pipeline, one seeded generator per image."""

    def __init__(self, path: str | os.PathLike, device: str | None = None,
                 dtype: str | torch.dtype | None = None, steps: int = 28, guidance: float | None = 3.5,
                 height: int = 1024, width: int = 1024, batch_size: int = 1,
                 extra_kwargs: dict[str, Any] | None = None, cpu_offload: bool = False) -> None:
        for key, val in (("steps", steps), ("height", height), ("width", width), ("batch_size", batch_size)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ConfigError(f"images.{key} must be a positive integer, got {val!r}")
        self.path = str(path)
        self.device = device or default_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.steps, self.guidance = steps, guidance
        self.height, self.width, self.batch_size = height, width, batch_size
        self.extra_kwargs = dict(extra_kwargs or {})
        self.pipe = load_pipeline(self.path, self.dtype)
        if cpu_offload:
            self.pipe.enable_model_cpu_offload(device=self.device)
        else:
            self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self._call_params = inspect.signature(self.pipe.__call__).parameters

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> DiffusersImageSource:
        cfg = dict(cfg)
        if "path" not in cfg:
            raise ConfigError("images config: 'path' (a diffusers pipeline folder or Hub id) is required")
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"images config: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**cfg)

    @property
    def name(self) -> str:
        return f"diffusers:{Path(self.path.rstrip('/')).name}"

    def _kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"num_inference_steps": self.steps, "height": self.height,
                              "width": self.width, "output_type": "pil"}
        if self.guidance is not None:
            kw["guidance_scale"] = self.guidance
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in self._call_params.values())
        kw = {k: v for k, v in kw.items() if accepts_any or k in self._call_params}
        kw.update(self.extra_kwargs)
        return kw

    @torch.no_grad()
    def render(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        """One RGB image per prompt; image i starts from the noise of ``seeds[i]``."""
        if len(prompts) != len(seeds):
            raise ValueError(f"render: {len(prompts)} prompts but {len(seeds)} seeds")
        kw = self._kwargs()
        out: list[Image.Image] = []
        for i in range(0, len(prompts), self.batch_size):
            batch = list(prompts[i:i + self.batch_size])
            gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i:i + self.batch_size]]
            images = self.pipe(prompt=batch, generator=gens, **kw).images
            out.extend(img.convert("RGB") for img in images)
        return out
