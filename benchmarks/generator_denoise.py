"""Where a world generator loses the objects: sample from the held-out scenes' own images noised to a
start sigma (SDEdit-style), by the oracle.

Each held-out scene is rendered, encoded by the generator's VAE, noised to the ``k``-th sigma of a
``--steps``-step schedule (k = 0 is pure noise, the normal sampler) and integrated to sigma 0 with the
same ODE steps. Presence and all-relations-correct per start sigma show whether the model fails to
lay out the scene (only the pure-noise start is poor) or to draw it (poor from every start); the
last line is the VAE alone (encode -> decode), the ceiling.

    python benchmarks/generator_denoise.py [--generator DIR] [--n 48] [--steps 12] [--starts 0,2,4,6]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default=None, help="Flux pipeline folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--starts", default="0,2,4,6", help="start step indices (0 = pure noise)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    from spatialt2i.gen.evaluate import evaluate_images, heldout_scenes, to_uint8
    from spatialt2i.gen.flux import FluxGenerator, pack_latents
    from spatialt2i.gen.pretrain import to_pixels, world_generator_path
    from spatialt2i.rl.sde import sde_step
    from spatialt2i.world.render import render

    torch.set_num_threads(args.threads)
    path = args.generator or str(world_generator_path())
    gen = FluxGenerator.from_pretrained(path, height=64, width=64, max_sequence_length=128)
    vae, n = gen.pipe.vae, args.n
    scenes, prompts = heldout_scenes(n)
    pixels = to_pixels(np.stack([np.asarray(render(s, 64)) for s in scenes]))

    def decode(packed: torch.Tensor) -> list:
        return to_uint8(gen.decode(packed))

    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mode()
        x0 = pack_latents((z - vae.config.shift_factor) * vae.config.scaling_factor)
        emb = gen.encode_prompts(prompts)
        sigmas = gen.sigmas(args.steps, 64, 64)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        print(f"generator {path}; {n} held-out scenes; {args.steps} ODE steps")
        for k in (int(s) for s in args.starts.split(",")):
            s0 = float(sigmas[k])
            x = (1 - s0) * x0 + s0 * noise
            for i in range(k, args.steps):
                v = gen.forward(x, torch.full((n,), float(sigmas[i])), emb.prompt_embeds, emb.pooled,
                                torch.full((n,), gen.guidance_scale))
                x = sde_step(v, x, float(sigmas[i]), float(sigmas[i + 1]), 0.0, dynamics="ode")[0]
            r = evaluate_images(scenes, decode(x))
            print(f"start sigma {s0:.3f} (step {k:2d}): presence {r['presence']:.3f}  all-correct {r['all_correct']:.3f}")
        r = evaluate_images(scenes, decode(x0))
        print(f"VAE alone (encode -> decode):  presence {r['presence']:.3f}  all-correct {r['all_correct']:.3f}")


if __name__ == "__main__":
    main()
