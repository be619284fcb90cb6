"""The VAE stage of the world generator's pretraining, as functions of a VAE, a scene stream and the config.

* :func:`vae_step` — one step on random crops (the VAE is fully convolutional): L1 + MSE with object
  pixels weighted (the white background is ~90 % of a scene) and a small KL term.
* :func:`latent_scale` — the ``shift_factor``/``scaling_factor`` that give unit-scale latents.
* :func:`reconstruction_check` — the oracle on reconstructions of held-out scenes (the ceiling of
  any generator decoded by this VAE); :func:`roundtrip` — one batch through the VAE and back.
* :func:`finetune_decoder` — an optional decoder-only stage after flow matching.
* :func:`load_vae` — reuse a trained VAE (``init_vae``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from spatialt2i.gen.pretrain_config import PretrainConfig
from spatialt2i.gen.scene_stream import SceneStream, to_pixels
from spatialt2i.gen.schedule import lr_factor


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def vae_step(vae: torch.nn.Module, opt: torch.optim.Optimizer, stream: SceneStream, cfg: PretrainConfig,
             lr: float) -> float:
    """One optimiser step on a batch of ``cfg.vae_crop`` px crops of fresh scenes; returns the
    reconstruction loss."""
    _, imgs, _ = stream.batch(cfg.vae_batch)
    x = to_pixels(imgs).to(_device(vae))
    c = cfg.vae_crop
    if c < cfg.image_size:
        crops = []
        for i in range(x.shape[0]):
            oy, ox = (int(v) for v in stream.rng.integers(0, cfg.image_size - c + 1, size=2))
            crops.append(x[i, :, oy:oy + c, ox:ox + c])
        x = torch.stack(crops)
    for g in opt.param_groups:
        g["lr"] = lr
    post = vae.encode(x).latent_dist
    z = post.sample()
    rec = vae.decode(z).sample
    # L1 + MSE keep flat colours exact and edges sharp; object pixels weigh more than the
    # white background (which would otherwise dominate); KL keeps the latent well scaled
    w = 1.0 + (cfg.vae_object_weight - 1.0) * (x < 0.99).any(1, keepdim=True).float()
    err = rec - x
    l_rec = ((err.abs() + err.pow(2)) * w).sum() / (w.sum() * 3)
    kl = post.kl().mean() / z[0].numel()
    loss = l_rec + cfg.kl_weight * kl
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 5.0)
    opt.step()
    return float(l_rec.detach())


@torch.no_grad()
def reconstruction_check(vae: torch.nn.Module, image_size: int, n: int = 64, seed: int = 777) -> dict[str, float]:
    """Oracle on VAE reconstructions of held-out scenes: presence and all-correct (upper bounds)."""
    from spatialt2i.gen.evaluate import heldout_scenes
    from spatialt2i.world.oracle import judge
    from spatialt2i.world.render import render

    was_training = vae.training
    vae.eval()
    scenes, _ = heldout_scenes(n, seed=seed)
    imgs = np.stack([np.asarray(render(s, image_size)) for s in scenes])
    out = roundtrip(vae, imgs)
    v = [judge(s, o) for s, o in zip(scenes, out)]
    vae.train(was_training)
    mse = (to_pixels(out) - to_pixels(imgs)).pow(2).mean()
    return {"presence": float(np.mean([x.presence for x in v])),
            "all_correct": float(np.mean([x.all_correct for x in v])),
            "mse": float(mse)}


@torch.no_grad()
def roundtrip(vae: torch.nn.Module, imgs: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) images encoded (posterior mode) and decoded by ``vae``, as uint8 again."""
    rec = vae.decode(vae.encode(to_pixels(imgs).to(_device(vae))).latent_dist.mode()).sample
    return ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def latent_scale(vae: torch.nn.Module, stream: SceneStream, n: int = 256) -> tuple[float, float]:
    """Set ``vae``'s shift/scaling factors from the latents of ``n`` fresh scenes (unit-scale
    flow-matching targets); the stream's RNG is left where it was. Returns (shift, scale)."""
    vae.eval()
    rng_state = stream.state()
    zs = []
    for _ in range(max(1, n // 64)):
        _, imgs, _ = stream.batch(64)
        zs.append(vae.encode(to_pixels(imgs).to(_device(vae))).latent_dist.mode())
    stream.set_state(rng_state)
    z = torch.cat(zs)
    shift, std = float(z.mean()), float(z.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
    return shift, 1.0 / std





def finetune_decoder(vae: torch.nn.Module, cfg: PretrainConfig, progress: Any = None) -> dict[str, torch.Tensor]:
    """Fine-tune a copy of ``vae``'s decoder for ``cfg.decoder_steps`` on frozen-encoder latents.

    Depends only on the VAE it is given and ``cfg`` (its own data stream, seeded from
    ``cfg.seed``), so it gives the same result whenever it runs. Returns the new VAE state dict.
    """
    import copy

    vae = copy.deepcopy(vae).float()
    vae.train()
    for q in vae.parameters():
        q.requires_grad_(False)
    params = list(vae.decoder.parameters())
    for q in params:
        q.requires_grad_(True)
    stream = SceneStream(cfg, cfg.seed + 777)
    gen = torch.Generator().manual_seed(cfg.seed + 778)
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    std = 1.0 / float(vae.config.scaling_factor)
    c, n = cfg.vae_crop, cfg.image_size
    losses = []
    for step in range(cfg.decoder_steps):
        _, imgs, _ = stream.batch(cfg.vae_batch)
        x = to_pixels(imgs).to(_device(vae))
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            z = z + cfg.decoder_latent_noise * std * torch.randn(z.shape, generator=gen).to(z.device)
        # crop in latent space (factor = VAE scale factor) and the matching pixels
        f = n // z.shape[-1]
        zc, xc = [], []
        for i in range(z.shape[0]):
            oy, ox = (int(v) for v in stream.rng.integers(0, (n - c) // f + 1, size=2))
            zc.append(z[i, :, oy:oy + c // f, ox:ox + c // f])
            xc.append(x[i, :, oy * f:oy * f + c, ox * f:ox * f + c])
        z, x = torch.stack(zc), torch.stack(xc)
        for g in opt.param_groups:
            g["lr"] = cfg.decoder_lr * lr_factor(step, cfg.decoder_steps, 20, 0.05)
        rec = vae.decode(z).sample
        w = 1.0 + (cfg.vae_object_weight - 1.0) * (x < 0.99).any(1, keepdim=True).float()
        err = rec - x
        loss = ((err.abs() + err.pow(2)) * w).sum() / (w.sum() * 3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None and (step + 1) % cfg.log_every == 0:
            progress(step + 1, float(np.mean(losses)))
            losses = []
    vae.eval()
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def load_vae(path: str | Path, latent_channels: int):
    """A trained world VAE (with its latent shift/scale) from a pipeline folder or a VAE folder."""
    from diffusers import AutoencoderKL

    from spatialt2i.errors import ConfigError

    p = Path(path)
    folder = p / "vae" if (p / "vae" / "config.json").is_file() else p
    if not (folder / "config.json").is_file():
        raise ConfigError(f"init_vae: no AutoencoderKL at {path} (expected config.json there or in its vae/)")
    vae = AutoencoderKL.from_pretrained(str(folder), torch_dtype=torch.float32)
    if vae.config.latent_channels != latent_channels:
        raise ConfigError(f"init_vae: {folder} has {vae.config.latent_channels} latent channels, "
                          f"the config's model.latent_channels is {latent_channels}")
    return vae
