"""Loading a Flux pipeline from a local folder or a hub id, with errors that name the source."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from spatialt2i.errors import SpatialT2IError


class GeneratorLoadError(SpatialT2IError, ValueError):
    """A generator path or hub id is missing, unreachable, or not a Flux pipeline."""


def _looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name)) and not name.startswith((".", "~"))


def check_flux_folder(path: Path) -> None:
    """Raise :class:`GeneratorLoadError` unless ``path`` is a saved diffusers Flux pipeline."""
    index = path / "model_index.json"
    if not index.is_file():
        raise GeneratorLoadError(f"generator path {path} is not a diffusers pipeline folder "
                                 f"(no model_index.json)")
    try:
        spec = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GeneratorLoadError(f"generator path {path}: model_index.json is unreadable ({e})") from e
    transformer = spec.get("transformer") if isinstance(spec, dict) else None
    if not (isinstance(transformer, list) and transformer[-1:] == ["FluxTransformer2DModel"]):
        raise GeneratorLoadError(
            f"generator path {path} holds a {spec.get('_class_name', '?') if isinstance(spec, dict) else '?'} "
            f"whose transformer is {transformer!r}, not a Flux pipeline (FluxTransformer2DModel)")


def load_flux_pipeline(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None,
                       device: str | torch.device | None = None) -> Any:
    """``FluxPipeline.from_pretrained`` of a local pipeline folder (checked first) or a hub id, in
    ``dtype`` (default fp32), progress bar off; a :class:`GeneratorLoadError` naming the source."""
    from diffusers import FluxPipeline

    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise GeneratorLoadError(f"generator path {path} is a file, not a pipeline folder")
        check_flux_folder(path)
        source = str(path)
    elif _looks_like_hub_id(name):
        source = name
    else:
        raise GeneratorLoadError(f"generator path {name} does not exist (and is not a hub id owner/name)")
    try:
        pipe = FluxPipeline.from_pretrained(source, dtype=dtype or torch.float32)
    except Exception as e:  # diffusers/hub raise many types; name the source either way
        raise GeneratorLoadError(f"could not load a Flux pipeline from {name}: {e}") from e
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    return pipe
