"""Fresh world scenes for the generator's pretraining: placed scenes, their images and prompts."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from spatialt2i.errors import UnsatisfiableSceneError
from spatialt2i.gen.pretrain_config import PretrainConfig


class SceneStream:
    """Fresh random world scenes (placed), their rendered images and prompts, from one RNG."""

    def __init__(self, cfg: PretrainConfig, seed: int | Sequence[int]) -> None:
        from spatialt2i.world.sample import SceneConfig

        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        d = cfg.data
        self._cfgs: dict[int, Any] = {}
        for k in set(d.relations) | set(d.curriculum_relations):
            if k > 0:
                self._cfgs[k] = SceneConfig(relations={k: 1.0}, min_objects=2, max_objects=d.max_objects)
        self._cfgs[0] = SceneConfig(relations={1: 1.0}, min_objects=2, max_objects=d.max_objects)
        for kk in (1, 2, 3):  # for objects-only prompts (negative keys: not a relation count)
            self._cfgs[-kk] = SceneConfig(relations={kk: 1.0}, min_objects=2, max_objects=d.max_objects)

    def _one(self, easy: bool):
        from spatialt2i.world.sample import random_scene, true_relations
        from spatialt2i.world.scene import Scene

        d, rng = self.cfg.data, self.rng
        dist = d.curriculum_relations if easy else d.relations
        ks = sorted(dist)
        p = np.array([dist[k] for k in ks], float)
        k = int(ks[int(rng.choice(len(ks), p=p / p.sum()))])
        for _ in range(10):
            try:
                if rng.random() < d.single_object:
                    base = random_scene(rng, self._cfgs[0], 1)
                    obj = base.objects[int(rng.integers(len(base.objects)))]
                    one = Scene((obj,), ())
                    rels = [r for r in true_relations(one) if r.kind == "at"] if k > 0 else []
                    return Scene((obj,), tuple(rels[:1]))
                if k == 0:  # objects only: a scene's objects with no relation stated
                    kk = 1 if easy else int(rng.integers(1, 4))
                    base = random_scene(rng, self._cfgs[-kk], kk)
                    return Scene(base.objects, ())
                return random_scene(rng, self._cfgs[k], k)
            except UnsatisfiableSceneError:
                continue
        raise RuntimeError("could not sample a training scene in 10 tries")

    def batch(self, n: int, easy: bool = False):
        """``(scenes, images uint8 (n, H, W, 3), prompts)``."""
        from spatialt2i.world.render import render

        scenes, prompts = self.scenes(n, easy)
        imgs = np.stack([np.asarray(render(s, self.cfg.image_size)) for s in scenes])
        return scenes, imgs, prompts

    def scenes(self, n: int, easy: bool = False):
        """``(scenes, prompts)`` without rendering."""
        return self.described(n, easy)[:2]

    def described(self, n: int, easy: bool = False):
        """``(scenes, prompts, clause spans)``: each prompt's character span of each relation's clause
        (the text stage's targets need them); draws the same scenes and prompts as :meth:`scenes`."""
        from spatialt2i.world.text import Style, describe_with_spans

        scenes = [self._one(easy) for _ in range(n)]
        said = [describe_with_spans(s, Style.draw(self.rng, len(s.relations))) for s in scenes]
        return scenes, [p for p, _ in said], [sp for _, sp in said]

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def to_pixels(imgs: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1] (the VAE's input range), on ``imgs``' device."""
    x = imgs if isinstance(imgs, torch.Tensor) else torch.from_numpy(imgs)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
