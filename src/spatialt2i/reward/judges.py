"""Baselines for pairwise accuracy, scored on the same pairs as SpatialScore.

Every judge answers ``credit(batch, scenes) -> (credits, failures)``: one credit per pair of the
:class:`~spatialt2i.reward.collate.PairBatch` (1 = chose the right image, 0.5 = tie, 0 = wrong or
failed) and the number of pairs it failed on.

- ``random``: a fair coin per pair (seeded), the chance row.
- ``oracle``: the world oracle (``world.oracle.judge``) scores each image by the share of the
  prompt's relations that hold in its pixels; the upper bound. Needs the ``scene`` column.
- ``judge`` / ``judge-pairwise``: a zero-shot VLM behind any OpenAI-compatible chat endpoint (the
  paper's GPT-5 / Gemini / Qwen-72B rows). Pointwise: each image is rated 0-10 on its own and the
  higher rating wins. Pairwise: both images in one request ("which image, 1 or 2?"), in a seeded
  random order so that a position bias cannot pass for skill. An answer that does not parse is
  re-asked up to ``retries`` times; a pair still without a valid answer is a *failure* and gets
  credit 0 (reported in the ``failures`` column). An unreachable endpoint stops the evaluation with
  ``EndpointError`` (``ChatClient`` retries transport errors, 429 and 5xx first).
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from PIL import Image

from ..errors import DatasetError
from .collate import PairBatch

log = logging.getLogger(__name__)


class PairJudge(Protocol):
    name: str
    needs: tuple[str, ...]   # dataset columns it reads beyond the pair itself

    def credit(self, batch: PairBatch, scenes: Sequence[str | None]) -> tuple[list[float], int]: ...


def _compare(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


class RandomJudge:
    name, needs = "random", ()

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def credit(self, batch: PairBatch, scenes: Sequence[str | None]) -> tuple[list[float], int]:
        return [float(self.rng.random() < 0.5) for _ in range(len(batch))], 0


class OracleJudge:
    """Share of the prompt's relations that the oracle finds in each image; the higher share wins."""

    name, needs = "oracle", ("scene",)

    def credit(self, batch: PairBatch, scenes: Sequence[str | None]) -> tuple[list[float], int]:
        from ..world.oracle import judge
        from ..world.scene import Scene

        out = []
        for rid, scene_json, c, r in zip(batch.ids, scenes, batch.chosen, batch.rejected):
            if not scene_json:
                raise DatasetError(f"row {rid}: the oracle baseline needs the 'scene' column (world datasets only)")
            scene = Scene.from_json(scene_json, f"row {rid}: field 'scene'")
            out.append(_compare(judge(scene, c).score, judge(scene, r).score))
        return out, 0


POINTWISE_PROMPT = ("Rate how well the image matches this description, paying attention to where each object "
                    "is and how the objects are placed relative to each other.\nDescription: {prompt}\n"
                    "Answer with a single integer from 0 (does not match) to 10 (matches exactly) and nothing else.")
PAIRWISE_PROMPT = ("Two images follow. Which one matches this description better, paying attention to where each "
                   "object is and how the objects are placed relative to each other?\nDescription: {prompt}\n"
                   "Answer with a single digit, 1 for the first image or 2 for the second, and nothing else.")
_RATING = re.compile(r"^\s*(?:rating\s*[:=]?\s*)?(\d{1,2}(?:\.\d+)?)\s*(?:/\s*10)?\s*\.?\s*$", re.I)
_CHOICE = re.compile(r"^\s*(?:image\s*)?([12])\s*\.?\s*$", re.I)


def parse_rating(text: str) -> float | None:
    """A 0-10 rating from an answer like ``7``, ``7/10``, ``Rating: 7``; None if malformed."""
    m = _RATING.match(text or "")
    if not m:
        return None
    v = float(m.group(1))
    return v if 0 <= v <= 10 else None


def parse_choice(text: str) -> int | None:
    """1 or 2 from an answer like ``2``, ``Image 1``; None if malformed."""
    m = _CHOICE.match(text or "")
    return int(m.group(1)) if m else None


def image_part(img: Image.Image) -> dict[str, Any]:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}


@dataclass
class JudgeStats:
    requests: int = 0
    malformed: int = 0
    failures: int = 0


class VLMJudge:
    """Zero-shot VLM judge over an OpenAI-compatible endpoint (``mode``: ``pointwise`` or ``pairwise``)."""

    needs = ()

    def __init__(self, client: Any, mode: str = "pointwise", retries: int = 2, seed: int = 0, workers: int = 4) -> None:
        if mode not in ("pointwise", "pairwise"):
            raise ValueError(f"mode: unknown judge mode {mode!r} (pointwise or pairwise)")
        self.client, self.mode, self.retries, self.workers = client, mode, retries, workers
        self.rng = random.Random(seed)
        self.stats = JudgeStats()
        self._lock = threading.Lock()
        self.name = "judge" if mode == "pointwise" else "judge-pairwise"

    def _ask(self, content: list[dict[str, Any]], parse: Any, what: str) -> Any:
        """Ask until the answer parses (1 + ``retries`` tries); None after that."""
        for attempt in range(self.retries + 1):
            with self._lock:
                self.stats.requests += 1
            answer = self.client.complete([{"role": "user", "content": content}])
            value = parse(answer)
            if value is not None:
                return value
            with self._lock:
                self.stats.malformed += 1
            log.warning("judge: malformed answer for %s (try %d/%d): %r", what, attempt + 1, self.retries + 1,
                        answer[:200])
        return None

    def rate(self, prompt: str, image: Image.Image, what: str = "image") -> float | None:
        content = [image_part(image), {"type": "text", "text": POINTWISE_PROMPT.format(prompt=prompt)}]
        return self._ask(content, parse_rating, what)

    def choose(self, prompt: str, first: Image.Image, second: Image.Image, what: str = "pair") -> int | None:
        content = [image_part(first), image_part(second), {"type": "text", "text": PAIRWISE_PROMPT.format(prompt=prompt)}]
        return self._ask(content, parse_choice, what)

    def _one(self, job: tuple[str, str, Image.Image, Image.Image, bool]) -> float | None:
        rid, prompt, c, r, swap = job
        if self.mode == "pointwise":
            sc, sr = self.rate(prompt, c, f"row {rid} chosen"), self.rate(prompt, r, f"row {rid} rejected")
            return None if sc is None or sr is None else _compare(sc, sr)
        pick = self.choose(prompt, *((r, c) if swap else (c, r)), what=f"row {rid}")
        if pick is None:
            return None
        return float(pick == (2 if swap else 1))

    def credit(self, batch: PairBatch, scenes: Sequence[str | None]) -> tuple[list[float], int]:
        jobs = [(rid, p, c, r, self.rng.random() < 0.5)
                for rid, p, c, r in zip(batch.ids, batch.prompts, batch.chosen, batch.rejected)]
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            results = list(pool.map(self._one, jobs))
        failures = sum(v is None for v in results)
        self.stats.failures += failures
        return [0.0 if v is None else v for v in results], failures


BASELINES = ("random", "oracle", "judge", "judge-pairwise")


def make_baselines(names: Sequence[str], args: argparse.Namespace | None = None) -> list[PairJudge]:
    """Judges for ``--baselines``; the VLM judge's endpoint comes from ``--judge-url/--judge-model`` or the
    SPATIALT2I_LLM_* / OPENAI_* environment variables (see ``data.llm.LLMConfig``)."""
    from ..errors import ConfigError

    out: list[PairJudge] = []
    for name in (n.strip() for n in names):
        if name == "random":
            out.append(RandomJudge())
        elif name == "oracle":
            out.append(OracleJudge())
        elif name in ("judge", "judge-pairwise"):
            from ..data.llm import ChatClient, LLMConfig

            cfg: dict[str, Any] = {"temperature": 0.0, "max_tokens": 16}
            if args is not None and getattr(args, "judge_url", None):
                cfg["base_url"] = args.judge_url
            if args is not None and getattr(args, "judge_model", None):
                cfg["model"] = args.judge_model
            retries = getattr(args, "judge_retries", 2) if args is not None else 2
            out.append(VLMJudge(ChatClient(LLMConfig.from_dict(cfg)),
                                "pointwise" if name == "judge" else "pairwise", retries=retries))
        else:
            raise ConfigError(f"--baselines: unknown baseline {name!r} (choose from {', '.join(BASELINES)})")
    return out
