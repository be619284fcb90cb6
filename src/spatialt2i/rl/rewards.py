"""Reward scorers behind one interface: ``score(prompts, images, metadata) -> dict of tensors``.

Every scorer returns at least ``"reward"`` (fp32, shape (B,)); others add their own keys
(SpatialScore: ``"mu"``, ``"sigma"``; the oracle: ``"all_correct"``, ``"presence"``).
``images`` are PIL images; ``metadata`` is one dict per image (the world puts the scene JSON
under ``"scene"``).

HTTP protocol (what :class:`HTTPScorer` speaks, and a reward server must answer)::

    POST {url}/score   {"prompts": [str], "images": [base64 PNG], "metadata": [dict]}  (metadata optional)
    200                {"reward": [float], ...other keys: [float]}   (one value per image)

A scorer never returns made-up rewards: a server that is down, slow or answers garbage is retried
``retries`` times with exponential backoff, then :class:`~spatialt2i.errors.EndpointError` stops
the run naming the URL and the last problem (a 503's ``Retry-After`` is honoured). A 4xx answer
(other than 408/429) means the request itself is wrong and stops at once. This matches
``spatialt2i.reward.server`` (which ignores ``metadata``).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from spatialt2i.errors import ConfigError, EndpointError, SpatialT2IError

log = logging.getLogger(__name__)

Scores = dict[str, torch.Tensor]


class RewardError(SpatialT2IError, ValueError):
    """A scorer returned rewards of the wrong shape or non-finite values."""


class Scorer(Protocol):
    def score(self, prompts: Sequence[str], images: Sequence[Image.Image],
              metadata: Sequence[dict[str, Any]]) -> Scores: ...


def _check_batch(prompts: Sequence[str], images: Sequence[Any], metadata: Sequence[Any]) -> None:
    if not (len(prompts) == len(images) == len(metadata)):
        raise ValueError(f"score: got {len(prompts)} prompts, {len(images)} images, {len(metadata)} metadata")


class OracleScorer:
    """The world oracle: reward = share of the prompt's relations that hold in the image, plus
    ``presence_weight`` x the share of its objects that are drawn (a denser signal for a generator
    that often leaves objects out: a relation with a missing object simply fails).

    ``soft_tau`` > 0 grades each relation instead of counting it 0/1: sigmoid(margin / soft_tau),
    the margin in the rules' own units (``world.oracle.relation_margins``; 0 = on the rule's edge,
    1 = the layout solver's safety margin), 0 for a relation with a missing object. A sample that
    moves an object the right way then outscores its group mates before the relation flips.
    ``all_correct`` is always the 0/1 verdict."""

    def __init__(self, presence_weight: float = 0.0, soft_tau: float = 0.0) -> None:
        if presence_weight < 0:
            raise ConfigError(f"oracle reward: presence_weight must be >= 0, got {presence_weight}")
        if soft_tau < 0:
            raise ConfigError(f"oracle reward: soft_tau must be >= 0, got {soft_tau}")
        self.presence_weight = float(presence_weight)
        self.soft_tau = float(soft_tau)

    def score(self, prompts: Sequence[str], images: Sequence[Image.Image],
              metadata: Sequence[dict[str, Any]]) -> Scores:
        from spatialt2i.world.oracle import judge, soft_scores
        from spatialt2i.world.scene import Scene

        _check_batch(prompts, images, metadata)
        verdicts = []
        for i, (img, meta) in enumerate(zip(images, metadata)):
            if "scene" not in meta:
                raise ValueError(f"oracle reward: metadata[{i}] has no 'scene' (world prompts carry one)")
            verdicts.append(judge(Scene.from_json(meta["scene"], f"metadata[{i}].scene"), img,
                                  margins=self.soft_tau > 0))

        def share(v) -> float:
            if self.soft_tau > 0 and v.relations:
                return float(np.mean(soft_scores(v.margins, self.soft_tau)))
            return v.score

        return {
            "reward": torch.tensor([share(v) + self.presence_weight * v.presence for v in verdicts],
                                   dtype=torch.float32),
            "all_correct": torch.tensor([float(v.all_correct) for v in verdicts]),
            "presence": torch.tensor([v.presence for v in verdicts], dtype=torch.float32),
        }


class RedChannelScorer:
    """reward = mean red channel in [0, 1] (the GRPO timing benchmark's stand-in reward)."""

    def score(self, prompts: Sequence[str], images: Sequence[Image.Image],
              metadata: Sequence[dict[str, Any]]) -> Scores:
        _check_batch(prompts, images, metadata)
        red = [np.asarray(img.convert("RGB"), dtype=np.float32)[..., 0].mean() / 255.0 for img in images]
        return {"reward": torch.tensor(red, dtype=torch.float32)}


class SpatialScoreScorer:
    """SpatialScore in process: reward = mu (the paper's metric)."""

    def __init__(self, path: str, device: str | torch.device = "cpu", batch_size: int = 0) -> None:
        from spatialt2i.reward.model import SpatialScore

        self.model = SpatialScore.from_pretrained(path, device=device)
        self.batch_size = batch_size or None

    def score(self, prompts: Sequence[str], images: Sequence[Image.Image],
              metadata: Sequence[dict[str, Any]]) -> Scores:
        _check_batch(prompts, images, metadata)
        out = self.model.score(list(prompts), list(images), batch_size=self.batch_size)
        return {k: v.float().cpu() for k, v in out.items()}


def encode_png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class HTTPScorer:
    """A reward server over HTTP (see the module docstring for the protocol)."""

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise ConfigError(f"reward.url must be an http(s) URL, got {url!r}")
        self.url = url.rstrip("/") + "/score"
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)

    def _parse(self, body: bytes, n: int) -> Scores:
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"answer is not JSON ({e}): {body[:200]!r}") from None
        if not isinstance(data, dict) or "reward" not in data:
            raise ValueError(f"answer has no 'reward' key: {str(data)[:200]}")
        out: Scores = {}
        for key, vals in data.items():
            if not isinstance(vals, list) or len(vals) != n:
                if key == "reward":
                    raise ValueError(f"'reward' must be a list of {n} numbers, got {str(vals)[:200]}")
                continue  # extra non-per-image fields are ignored
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
                if key == "reward":
                    raise ValueError(f"'reward' holds non-finite or non-numeric values: {str(vals)[:200]}")
                continue
            out[key] = torch.tensor(vals, dtype=torch.float32)
        return out

    def score(self, prompts: Sequence[str], images: Sequence[Image.Image],
              metadata: Sequence[dict[str, Any]]) -> Scores:
        _check_batch(prompts, images, metadata)
        payload = json.dumps({"prompts": list(prompts), "images": [encode_png(i) for i in images],
                              "metadata": list(metadata)}).encode()
        problem, retry_after = "no attempt made", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                wait = max(self.backoff * 2 ** (attempt - 1), retry_after)
                log.warning("reward server %s: %s; retry %d/%d in %.1fs", self.url, problem, attempt,
                            self.retries, wait)
                time.sleep(wait)
            req = urllib.request.Request(self.url, data=payload, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = resp.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                problem = f"HTTP {e.code} {e.reason}: {detail}"
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    # the request itself is wrong (bad image, too large): retrying cannot help
                    raise EndpointError(f"reward server {self.url} rejected the request: {problem}") from None
                try:
                    retry_after = min(float(e.headers.get("Retry-After", 0) or 0), 60.0)
                except ValueError:
                    retry_after = 0.0
                continue
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                problem = f"unreachable ({getattr(e, 'reason', e)})"
                continue
            try:
                return self._parse(body, len(prompts))
            except ValueError as e:
                problem = f"bad answer: {e}"
        raise EndpointError(f"reward server {self.url} failed after {self.retries + 1} attempt(s): {problem}")


class MixScorer:
    """Weighted sum of component rewards; each component's keys are kept as ``"<name>/<key>"``."""

    def __init__(self, components: dict[str, tuple[float, Scorer]]) -> None:
        if not components:
            raise ConfigError("a reward mix needs at least one component")
        self.components = components

    def score(self, prompts: Sequence[str], images: Sequence[Image.Image],
              metadata: Sequence[dict[str, Any]]) -> Scores:
        total = torch.zeros(len(prompts))
        out: Scores = {}
        for name, (weight, scorer) in self.components.items():
            part = scorer.score(prompts, images, metadata)
            total = total + weight * part["reward"]
            out.update({f"{name}/{k}": v for k, v in part.items()})
        out["reward"] = total
        return out


def build_scorer(cfg: Any, device: str | torch.device = "cpu") -> Scorer:
    """A scorer from :class:`spatialt2i.rl.config.RewardSettings`."""

    def one(kind: str) -> Scorer:
        if kind == "oracle":
            return OracleScorer(cfg.presence_weight, cfg.soft_tau)
        if kind == "red":
            return RedChannelScorer()
        if kind == "spatialscore":
            if not cfg.path:
                raise ConfigError("reward.kind spatialscore needs reward.path (a SpatialScore checkpoint)")
            return SpatialScoreScorer(cfg.path, device=device, batch_size=cfg.batch_size)
        if kind == "http":
            return HTTPScorer(cfg.url or "", cfg.timeout, cfg.retries, cfg.backoff)
        raise ConfigError(f"unknown reward kind {kind!r}")

    if cfg.kind == "mix":
        return MixScorer({k: (float(w), one(k)) for k, w in cfg.weights.items()})
    return one(cfg.kind)
