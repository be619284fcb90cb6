"""Optional absolute position features for the merged visual tokens of a *tiny* Qwen2.5-VL.

Why: the stock Qwen2.5-VL vision tower has no absolute position embedding (2-D RoPE only) and does
not bring its merged tokens to the scale of the text embeddings. A random-init tiny model then
cannot tell where an object is (``shared/notes/world-reward-learnability.md``, trial 2: flat for
700 steps; with this fix, cell-level localisation in minutes). A pretrained 7B model does not need it.

What: a small module run as a **forward hook on ``model.model.visual``**. It rewrites the merged
tokens (``pooler_output``) of each image as

    LayerNorm(tokens - mean over the image's tokens) + row_emb[r] + col_emb[c] (+ coordinate code)

where (r, c) is the token's cell on the merged grid (+ the optional pixel stem below). The optional coordinate code (``coord_scale`` > 0)
is fixed, not learned: the token's centre x and y in [-1, 1], times ``coord_scale``, in hidden dims
0-3 and 4-7, so that an attention-weighted mix of tokens carries its mean position linearly and
"left of" is a linear comparison of two gathered vectors.

The optional **pixel stem** (``stem`` > 0 channels, :class:`PixelStem`) adds, per merged token, a small
convolutional reading of its pixels: three 3x3 convolutions over the image put back together from the
flattened patches, average- and max-pooled to the merged grid, through a linear map that starts at
zero (adding a stem to a trained module changes nothing until it learns). The linear patch embedding
and two vision layers of the tiny tower do not see which of two overlapping shapes is on top (a few
pixels decide "in front of"); convolutions over the full-resolution pixels do. Nothing in the Qwen2.5-VL classes changes: the
checkpoint folder stays a plain ``save_pretrained`` folder that ``from_pretrained`` loads, plus two
small files written next to it (``posfeat.json`` + ``posfeat.safetensors``). :func:`attach_if_present`
attaches the hook only when the folder contains them, so the full-scale path (a hub id or a folder
without them) is untouched. Loading code calls it right after ``from_pretrained``::

    vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    posfeat.attach_if_present(vlm, path)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_FILE = "posfeat.json"
WEIGHTS_FILE = "posfeat.safetensors"
ATTR = "_spatialt2i_posfeat"  # where the attached module lives on the VLM (keeps it out of state_dict)


def patches_to_images(pixel_values: torch.Tensor, grid_thw: torch.Tensor, merge: int, patch: int,
                      temporal: int, channels: int = 3) -> list[torch.Tensor]:
    """Undo the Qwen2-VL image processor's patch flattening: per image, its first frame as a (C, H, W)
    tensor (normalised values). Rows are ordered (frame, block row, block col, row in block, col in
    block), each row (C, temporal, patch, patch)."""
    out, start = [], 0
    for t, h, w in grid_thw.tolist():
        n = t * h * w
        x = pixel_values[start:start + n].view(t, h // merge, w // merge, merge, merge, channels, temporal, patch, patch)
        start += n
        x = x[0, :, :, :, :, :, 0]                                   # (bh, bw, mh, mw, C, P, P)
        out.append(x.permute(4, 0, 2, 5, 1, 3, 6).reshape(channels, h * patch, w * patch))
    return out


class PixelStem(nn.Module):
    """Three 3x3 convolutions (full, 1/2, 1/4 resolution) pooled (mean and max) per merged token."""

    def __init__(self, hidden: int, channels: int, patch: int, temporal: int, merge: int) -> None:
        super().__init__()
        if (merge * patch) % 4:
            raise ValueError(f"pixel stem: a merged token's {merge * patch} px do not split into 4 px cells")
        self.channels, self.patch, self.temporal, self.merge = channels, patch, temporal, merge
        c = channels
        self.convs = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.GELU(),
                                   nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GELU(),
                                   nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GELU())
        self.out = nn.Linear(4 * c, hidden)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """(total merged tokens, hidden), in the vision tower's token order."""
        cell = self.merge * self.patch // 4
        feats = []
        images = patches_to_images(pixel_values, grid_thw, self.merge, self.patch, self.temporal)
        for img, t in zip(images, grid_thw[:, 0].tolist()):
            f = self.convs(img[None].to(self.out.weight.dtype))
            pooled = torch.cat([F.avg_pool2d(f, cell), F.max_pool2d(f, cell)], 1)[0]   # (4c, rows, cols)
            feats.append(pooled.flatten(1).T.repeat(t, 1))                             # every frame: the first's
        return self.out(torch.cat(feats, 0))


class VisualPosFeat(nn.Module):
    """Centre + LayerNorm the merged visual tokens of each image and add a learned (row, col) embedding
    (and, with a :class:`PixelStem`, its convolutional reading of the token's pixels)."""

    def __init__(self, hidden: int, max_rows: int = 16, max_cols: int = 16, init_std: float = 0.5,
                 coord_scale: float = 0.0) -> None:
        super().__init__()
        self.hidden, self.max_rows, self.max_cols, self.init_std = hidden, max_rows, max_cols, init_std
        self.coord_scale = coord_scale
        self.norm = nn.LayerNorm(hidden)
        self.row = nn.Parameter(torch.randn(max_rows, hidden) * init_std)
        self.col = nn.Parameter(torch.randn(max_cols, hidden) * init_std)
        self.merge = 2
        self.stem: PixelStem | None = None

    def add_stem(self, channels: int, patch: int, temporal: int) -> PixelStem:
        """Give the module a (zero-output) pixel stem; the vision tower's patch and temporal sizes."""
        p = self.row
        self.stem = PixelStem(self.hidden, channels, patch, temporal, self.merge).to(device=p.device, dtype=p.dtype)
        return self.stem

    def config(self) -> dict[str, Any]:
        cfg = {"hidden": self.hidden, "max_rows": self.max_rows, "max_cols": self.max_cols,
               "init_std": self.init_std, "merge": self.merge, "coord_scale": self.coord_scale, "format_version": 1}
        if self.stem is not None:
            cfg["stem"] = {"channels": self.stem.channels, "patch": self.stem.patch, "temporal": self.stem.temporal}
        return cfg

    def forward(self, tokens: torch.Tensor, grid_thw: torch.Tensor,
                pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        stem = None
        if self.stem is not None:
            if pixel_values is None:
                raise ValueError("posfeat: the pixel stem needs the vision tower's pixel input")
            stem = self.stem(pixel_values, grid_thw).to(tokens.dtype)
        out, start = [], 0
        for t, h, w in grid_thw.tolist():
            hh, ww = h // self.merge, w // self.merge
            if hh > self.max_rows or ww > self.max_cols:
                raise ValueError(f"image grid {hh}x{ww} merged tokens exceeds the position table "
                                 f"({self.max_rows}x{self.max_cols})")
            n = t * hh * ww
            x = self.norm(tokens[start:start + n] - tokens[start:start + n].mean(0, keepdim=True))
            if stem is not None:
                x = x + stem[start:start + n]
            start += n
            r = torch.arange(hh, device=x.device).repeat_interleave(ww).repeat(t)
            c = torch.arange(ww, device=x.device).repeat(hh * t)
            y = x + self.row[r].to(x.dtype) + self.col[c].to(x.dtype)
            if self.coord_scale:
                code = torch.zeros_like(y)
                code[:, 0:4] = ((c.to(y.dtype) + 0.5) / ww * 2 - 1)[:, None] * self.coord_scale
                code[:, 4:8] = ((r.to(y.dtype) + 0.5) / hh * 2 - 1)[:, None] * self.coord_scale
                y = y + code
            out.append(y)
        return torch.cat(out, 0)


def _hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    pf: VisualPosFeat = getattr(module, ATTR)
    grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
    if grid is None:
        raise ValueError("posfeat: the vision tower was called without grid_thw")
    pixels = kwargs.get("hidden_states", args[0] if args else None)
    output.pooler_output = pf(output.pooler_output, grid, pixels)
    return output


def _visual(vlm: nn.Module) -> nn.Module:
    inner = getattr(vlm, "model", vlm)
    vis = getattr(inner, "visual", None)
    if vis is None:
        raise ValueError("posfeat: model has no .model.visual vision tower")
    return vis


def attach(vlm: nn.Module, pf: VisualPosFeat) -> VisualPosFeat:
    """Run ``pf`` on the vision tower's merged tokens from now on (replaces an earlier attachment)."""
    vis = _visual(vlm)
    detach(vlm)
    p = next(vis.parameters())
    pf.to(device=p.device)
    object.__setattr__(vis, ATTR, pf)   # not a registered submodule: the VLM's state_dict stays stock
    vis._spatialt2i_posfeat_handle = vis.register_forward_hook(_hook, with_kwargs=True)
    return pf


def detach(vlm: nn.Module) -> None:
    vis = _visual(vlm)
    h = getattr(vis, "_spatialt2i_posfeat_handle", None)
    if h is not None:
        h.remove()
        del vis._spatialt2i_posfeat_handle
    if ATTR in vis.__dict__:
        del vis.__dict__[ATTR]


def attached(vlm: nn.Module) -> VisualPosFeat | None:
    return _visual(vlm).__dict__.get(ATTR)


def new(vlm: nn.Module, init_std: float = 0.5, seed: int = 0, coord_scale: float = 0.0) -> VisualPosFeat:
    """Create and attach a fresh module sized for ``vlm``."""
    hidden = vlm.config.text_config.hidden_size if hasattr(vlm.config, "text_config") else vlm.config.hidden_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pf = VisualPosFeat(hidden, init_std=init_std, coord_scale=coord_scale)
    return attach(vlm, pf)


def save(vlm: nn.Module, out_dir: str | os.PathLike) -> bool:
    """Write the attached module next to a ``save_pretrained`` folder; False if none is attached."""
    pf = attached(vlm)
    if pf is None:
        return False
    from safetensors.torch import save_file

    out = Path(out_dir)
    (out / CONFIG_FILE).write_text(json.dumps(pf.config(), indent=1))
    save_file({k: v.detach().cpu().contiguous() for k, v in pf.state_dict().items()}, str(out / WEIGHTS_FILE))
    return True


def attach_if_present(vlm: nn.Module, path: str | os.PathLike) -> VisualPosFeat | None:
    """Attach the folder's position features if it has them; None (and no change) otherwise."""
    p = Path(str(path))
    if not (p.is_dir() and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()):
        return None
    from safetensors.torch import load_file

    cfg = json.loads((p / CONFIG_FILE).read_text())
    pf = VisualPosFeat(cfg["hidden"], cfg["max_rows"], cfg["max_cols"], cfg.get("init_std", 0.5),
                       cfg.get("coord_scale", 0.0))
    pf.merge = cfg.get("merge", 2)
    if "stem" in cfg:
        pf.add_stem(cfg["stem"]["channels"], cfg["stem"]["patch"], cfg["stem"]["temporal"])
    pf.load_state_dict(load_file(str(p / WEIGHTS_FILE)))
    dtype = next(_visual(vlm).parameters()).dtype
    pf.to(dtype=dtype)
    return attach(vlm, pf)


def load_vlm(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Any:
    """``Qwen2_5_VLForConditionalGeneration.from_pretrained(path)`` plus :func:`attach_if_present`."""
    from .backbone import load_vlm as _load

    vlm = _load(str(path), dtype=dtype)
    attach_if_present(vlm, path)
    return vlm
