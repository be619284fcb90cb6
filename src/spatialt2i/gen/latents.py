"""Flux latent layout: 2x2 patch packing, image-token position ids and the dynamic-shift ``mu``."""

from __future__ import annotations

import torch


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Flux's dynamic-shift ``mu``: linear in the image token count (same as diffusers)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + base_shift - m * base_seq_len


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): Flux's 2x2 patch packing."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """(B, H/2 * W/2, 4C) -> (B, C, H, W); the inverse of :func:`pack_latents`."""
    b, _, ch = packed.shape
    x = packed.view(b, latent_height // 2, latent_width // 2, ch // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, ch // 4, latent_height, latent_width)


def image_ids(grid_height: int, grid_width: int, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(h*w, 3) position ids of the packed image tokens: (0, row, col)."""
    ids = torch.zeros(grid_height, grid_width, 3)
    ids[..., 1] = torch.arange(grid_height)[:, None]
    ids[..., 2] = torch.arange(grid_width)[None, :]
    return ids.reshape(grid_height * grid_width, 3).to(device=device, dtype=dtype)
