"""World prompt sets for RL: a deterministic training stream and fixed held-out sets.

Scenes have 2-4 objects and 1-3 relations by default (:class:`PromptSettings`). The training
stream is a pure function of ``(seed, iteration)`` so a resumed run sees the same prompts; the
held-out set is a pure function of ``(heldout_seed, n)`` and the stream never yields a held-out
prompt text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from spatialt2i.rl.config import PromptSettings


@dataclass(frozen=True)
class WorldPrompt:
    text: str
    scene: str          # the placed scene as JSON (the oracle's ground truth)

    @property
    def metadata(self) -> dict[str, str]:
        return {"scene": self.scene}


def _scene_config(cfg: PromptSettings):
    from spatialt2i.world.sample import SceneConfig

    rel = {k: 1.0 for k in range(cfg.min_relations, cfg.max_relations + 1)}
    return SceneConfig(relations=rel, min_objects=cfg.min_objects, max_objects=cfg.max_objects)


def draw_prompt(rng: np.random.Generator, cfg: PromptSettings) -> WorldPrompt:
    from spatialt2i.world.sample import random_scene
    from spatialt2i.world.text import Style, describe

    scene_cfg = _scene_config(cfg)
    while True:
        scene = random_scene(rng, scene_cfg)
        if cfg.min_objects <= len(scene.objects) <= cfg.max_objects and scene.relations:
            break
    return WorldPrompt(describe(scene, Style.draw(rng, len(scene.relations))), scene.to_json())


@lru_cache(maxsize=8)
def _heldout(cfg: PromptSettings, n: int) -> tuple[WorldPrompt, ...]:
    rng = np.random.default_rng([cfg.heldout_seed, n])
    out: list[WorldPrompt] = []
    seen: set[str] = set()
    while len(out) < n:
        p = draw_prompt(rng, cfg)
        if p.text not in seen:
            seen.add(p.text)
            out.append(p)
    return tuple(out)


def heldout_prompts(cfg: PromptSettings, n: int | None = None) -> list[WorldPrompt]:
    """The fixed held-out set of ``n`` (default ``cfg.eval_prompts``) distinct prompts."""
    return list(_heldout(_frozen(cfg), int(n if n is not None else cfg.eval_prompts)))


def train_prompts(cfg: PromptSettings, seed: int, iteration: int, n: int) -> list[WorldPrompt]:
    """The ``n`` training prompts of ``iteration``: a pure function of its arguments."""
    banned = {p.text for p in heldout_prompts(cfg)}
    rng = np.random.default_rng([seed, iteration, 7919])
    out: list[WorldPrompt] = []
    while len(out) < n:
        p = draw_prompt(rng, cfg)
        if p.text not in banned:
            out.append(p)
    return out


def _frozen(cfg: PromptSettings) -> PromptSettings:
    """PromptSettings is a plain (unhashable) dataclass; key the cache on its values."""
    return _Key(cfg.min_objects, cfg.max_objects, cfg.min_relations, cfg.max_relations,
                cfg.heldout_seed, cfg.eval_prompts)  # type: ignore[return-value]


@dataclass(frozen=True)
class _Key:
    min_objects: int
    max_objects: int
    min_relations: int
    max_relations: int
    heldout_seed: int
    eval_prompts: int
