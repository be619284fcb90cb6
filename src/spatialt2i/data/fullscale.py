"""Full-scale pair rows: prompt pairs from an LLM, images from a diffusers pipeline.

``make_fullscale_rows(task, prompt_source, image_source)`` is the builder's ``make_rows`` for the
full-scale sources. Row ``k`` of a shard has the stable id ``f"{split}-{first_id + k:07d}"``;
its seed is derived from ``(task.seed, row id, attempt)``, and a slot whose LLM answer is malformed
is retried with the next attempt's seed (up to ``max_attempts``), so ids never spill into the
next shard's range. Both images of a pair use the row's seed. ``scene``/``perturbed_scene`` are
null (no world spec), ``verified`` is null (no human review yet) and ``relation_kinds`` is
inferred from the prompt's wording (a heuristic, see ``infer_relation_kinds``).

``FullScaleRows(cfg)`` wraps this for worker processes: picklable, it loads the sources lazily
once per process (under ``accelerate launch`` each process takes ``cuda:$LOCAL_RANK``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from PIL import Image

from ..errors import ConfigError
from ..world.vocab import RELATIONS
from .diffusers_source import DiffusersImageSource
from .llm import LLMPromptSource, PromptPair
from .schema import image_cell

log = logging.getLogger(__name__)

CONFIG_KEYS = ("llm", "images", "max_attempts", "concurrency", "source_name")


class ShardTaskLike(Protocol):
    split: str
    index: int
    total: int
    n_rows: int
    seed: int
    first_id: int


class PromptSource(Protocol):
    name: str

    def generate(self, seed: int) -> tuple[PromptPair | None, str | None]: ...


class ImageSource(Protocol):
    name: str

    def render(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]: ...


def row_seed(seed: int, row_id: int, attempt: int = 0) -> int:
    """A 63-bit seed for a row (and attempt), stable across runs, processes and machines."""
    h = hashlib.blake2b(f"{seed}:{row_id}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") & (2**63 - 1)


def row_id_str(split: str, row_id: int) -> str:
    return f"{split}-{row_id:07d}"


# Checked in this order; a matched phrase is blanked so that "above and to the left of" does not
# also count as "above" and "left of".
_RELATION_PATTERNS: tuple[tuple[str, str], ...] = (
    ("above_left", r"above and to the left of|(?:upper|top)[- ]left of"),
    ("above_right", r"above and to the right of|(?:upper|top)[- ]right of"),
    ("below_left", r"below and to the left of|(?:lower|bottom)[- ]left of"),
    ("below_right", r"below and to the right of|(?:lower|bottom)[- ]right of"),
    ("at", r"(?:in|at|on|occupies|occupying) the (?:(?:top|bottom|upper|lower)[- ](?:left|right) )?"
           r"(?:corner|(?:top|bottom|left|right) edge|cent(?:er|re)|middle)\b"
           r"|(?:corner|edge|cent(?:er|re)|middle) of the (?:image|picture|scene|frame|canvas)"),
    ("left_of", r"left of|left side of"),
    ("right_of", r"right of|right side of"),
    ("above", r"above|on top of|over"),
    ("below", r"below|beneath|underneath|under"),
    ("in_front_of", r"in front of"),
    ("behind", r"behind"),
    ("between", r"between"),
    ("bigger", r"(?:bigger|larger|taller) than"),
    ("smaller", r"(?:smaller|shorter|tinier) than"),
)


def infer_relation_kinds(prompt: str) -> list[str]:
    """The world relation kinds a prompt's wording mentions, in ``world.vocab.RELATIONS`` order."""
    text = " ".join(prompt.lower().split())
    found = set()
    for kind, pattern in _RELATION_PATTERNS:
        text, n = re.subn(rf"\b(?:{pattern})\b", " ", text)
        if n:
            found.add(kind)
    return [k for k in RELATIONS if k in found]


def make_row(task: ShardTaskLike, row_id: int, seed: int, pair: PromptPair, chosen: Image.Image,
             rejected: Image.Image, source: str) -> dict[str, Any]:
    return {
        "id": row_id_str(task.split, row_id),
        "prompt": pair.prompt,
        "perturbed_prompt": pair.perturbed_prompt,
        "chosen": image_cell(chosen),
        "rejected": image_cell(rejected),
        "perturbations": [dict(p) for p in pair.perturbations],
        "perturbation_kind": pair.kind,
        "n_perturbations": len(pair.perturbations),
        "n_objects": pair.n_objects,
        "n_relations": pair.n_relations,
        "relation_kinds": infer_relation_kinds(pair.prompt),
        "scene": None,
        "perturbed_scene": None,
        "seed": seed,
        "source": source,
        "verified": None,
    }


def make_fullscale_rows(task: ShardTaskLike, prompt_source: PromptSource, image_source: ImageSource,
                        source_name: str | None = None, *, max_attempts: int = 3,
                        concurrency: int = 4) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Up to ``task.n_rows`` rows (fewer if some slots fail ``max_attempts`` times) and a counter
    of failure reasons (one per malformed answer, plus ``gave_up`` per abandoned slot).

    ``concurrency`` LLM requests run at once (threads); images are rendered in chunks of pairs.
    ``EndpointError`` (an unreachable LLM) propagates: the shard is not written.
    """
    if max_attempts < 1:
        raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
    source = source_name or f"{prompt_source.name}/{image_source.name}"
    failures: Counter[str] = Counter()

    def fetch(slot: int) -> tuple[int, PromptPair | None, int, list[str]]:
        row_id = task.first_id + slot
        reasons: list[str] = []
        for attempt in range(max_attempts):
            seed = row_seed(task.seed, row_id, attempt)
            pair, reason = prompt_source.generate(seed)
            if pair is not None:
                return row_id, pair, seed, reasons
            reasons.append(reason or "invalid")
        return row_id, None, -1, reasons

    per_render = max(1, getattr(image_source, "batch_size", 1) // 2)
    chunk = max(concurrency, per_render)
    rows: list[dict[str, Any]] = []
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        for start in range(0, task.n_rows, chunk):
            got = []
            for row_id, pair, seed, reasons in pool.map(fetch, range(start, min(start + chunk, task.n_rows))):
                failures.update(reasons)
                if pair is None:
                    failures["gave_up"] += 1
                    log.warning("row %s: no valid LLM answer in %d attempts (%s); skipped",
                                row_id_str(task.split, row_id), max_attempts, ", ".join(reasons))
                else:
                    got.append((row_id, pair, seed))
            if not got:
                continue
            prompts = [t for _, pair, _ in got for t in (pair.prompt, pair.perturbed_prompt)]
            seeds = [s for _, _, seed in got for s in (seed, seed)]
            images = image_source.render(prompts, seeds)
            if len(images) != len(prompts):
                raise RuntimeError(f"image source {image_source.name} returned {len(images)} images "
                                   f"for {len(prompts)} prompts")
            for k, (row_id, pair, seed) in enumerate(got):
                rows.append(make_row(task, row_id, seed, pair, images[2 * k], images[2 * k + 1], source))
            log.info("%s shard %d/%d: %d/%d rows", task.split, task.index, task.total, len(rows), task.n_rows)
    finally:  # on an error, do not start the chunk's remaining requests
        pool.shutdown(wait=True, cancel_futures=True)
    return rows, dict(failures)


def _check_keys(cfg: Mapping[str, Any]) -> None:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"full-scale config must be a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"full-scale config: unknown key(s) {unknown}; known: {list(CONFIG_KEYS)}")
    for key in ("llm", "images"):
        if not isinstance(cfg.get(key, {}), Mapping):
            raise ConfigError(f"full-scale config: {key!r} must be a mapping")
    if "images" not in cfg:
        raise ConfigError("full-scale config: 'images' (with a diffusers pipeline 'path') is required")


def from_config(cfg: Mapping[str, Any]) -> tuple[LLMPromptSource, DiffusersImageSource]:
    """Both sources from ``{"llm": {...LLMConfig fields, system_prompt}, "images": {"path": ...,
    DiffusersImageSource arguments}}``; the llm block may be empty when env vars name the endpoint."""
    _check_keys(cfg)
    prompts = LLMPromptSource.from_config(cfg.get("llm") or {})
    images = DiffusersImageSource.from_config(dict(cfg["images"]))
    return prompts, images


class FullScaleRows:
    """``make_rows(task)`` for the builder: loads the sources on first use in each process."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        _check_keys(cfg)
        self.cfg = dict(cfg)
        self._sources: tuple[LLMPromptSource, DiffusersImageSource] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "_sources": None}

    def __call__(self, task: ShardTaskLike) -> tuple[list[dict[str, Any]], dict[str, int]]:
        if self._sources is None:
            self._sources = from_config(self.cfg)
        prompts, images = self._sources
        return make_fullscale_rows(task, prompts, images, self.cfg.get("source_name"),
                                   max_attempts=int(self.cfg.get("max_attempts", 3)),
                                   concurrency=int(self.cfg.get("concurrency", 4)))
