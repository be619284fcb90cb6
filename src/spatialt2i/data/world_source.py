"""The world as a pair source: random scene -> perturbation -> two renders -> oracle check."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, UnsatisfiableSceneError
from ..world.oracle import judge, violates
from ..world.render import check_size, render
from ..world.sample import SceneConfig, random_scene
from ..world.text import Style, describe
from .perturb import DEFAULT_KIND_WEIGHTS, KINDS, PerturbationFailed, perturb
from .schema import image_cell

MAX_ATTEMPTS = 50


@dataclass(frozen=True)
class PerturbConfig:
    kinds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    multi_counts: tuple[float, ...] = (0.6, 0.4)

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ConfigError(f"perturbations.kinds: unknown kind(s) {sorted(unknown)} (known: {', '.join(KINDS)})")
        if not any(v > 0 for v in self.kinds.values()):
            raise ConfigError("perturbations.kinds: at least one kind needs a positive weight")
        if len(self.multi_counts) != 2 or min(self.multi_counts) < 0 or sum(self.multi_counts) <= 0:
            raise ConfigError(f"perturbations.multi_counts: expected two weights (2 and 3 flips), got {self.multi_counts}")


@dataclass(frozen=True)
class WorldDataConfig:
    image_size: int = 64
    test_fraction: float = 0.1
    shard_size: int = 1000
    scene: SceneConfig = field(default_factory=SceneConfig)
    perturbations: PerturbConfig = field(default_factory=PerturbConfig)

    def __post_init__(self) -> None:
        check_size(self.image_size)
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"test_fraction: must be in [0, 1), got {self.test_fraction}")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size: must be >= 1, got {self.shard_size}")


class Rejected(Exception):
    """A candidate pair failed a check; the message is the reason key counted in the report."""


def make_world_pair(rng: np.random.Generator, cfg: WorldDataConfig) -> dict:
    """One oracle-verified pair (a row without id/seed/source), or ``Rejected`` with the reason."""
    try:
        scene = random_scene(rng, cfg.scene)
    except UnsatisfiableSceneError:
        raise Rejected("scene_sampling_failed") from None
    style = Style.draw(rng, len(scene.relations))
    try:
        pert = perturb(scene, rng, weights=cfg.perturbations.kinds, multi_counts=cfg.perturbations.multi_counts)
    except PerturbationFailed:
        raise Rejected("no_valid_perturbation") from None
    chosen, rejected = render(scene, cfg.image_size), render(pert.scene, cfg.image_size)
    if not judge(scene, chosen).all_correct:
        raise Rejected("oracle:chosen_violates_prompt")
    changed = [i for i, (a, b) in enumerate(zip(scene.relations, pert.scene.relations)) if a != b]
    if not violates(scene, rejected, first=changed):
        raise Rejected("oracle:rejected_satisfies_prompt")
    return {
        "prompt": describe(scene, style),
        "perturbed_prompt": describe(pert.scene, style),
        "chosen": image_cell(chosen),
        "rejected": image_cell(rejected),
        "perturbations": pert.records,
        "perturbation_kind": pert.kind,
        "n_perturbations": len(pert.records),
        "n_objects": len(scene.objects),
        "n_relations": len(scene.relations),
        "relation_kinds": [r.kind for r in scene.relations],
        "scene": scene.to_json(),
        "perturbed_scene": pert.scene.to_json(),
        "verified": None,
    }


def make_world_rows(task, cfg: WorldDataConfig) -> tuple[list[dict], dict[str, int]]:
    """Rows of one shard: row k uses the seed (task.seed, split, k, attempt) -- order-independent."""
    split_code = 0 if task.split == "train" else 1
    rows, failures = [], Counter()
    for k in range(task.first_id, task.first_id + task.n_rows):
        for attempt in range(MAX_ATTEMPTS):
            rng = np.random.default_rng([task.seed, split_code, k, attempt])
            try:
                row = make_world_pair(rng, cfg)
            except Rejected as e:
                failures[str(e)] += 1
                continue
            row.update(id=f"{task.split}-{k:07d}", seed=int(task.seed), source="world/world")
            rows.append(row)
            break
        else:
            raise RuntimeError(f"row {task.split}-{k}: no valid pair in {MAX_ATTEMPTS} attempts ({dict(failures)})")
    return rows, dict(failures)
