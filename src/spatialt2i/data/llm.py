"""Prompt pairs from any OpenAI-compatible chat-completions endpoint.

``ChatClient`` is a small synchronous client (httpx) for ``POST {base_url}/chat/completions``:
timeout, retries with exponential back-off on connection errors, 429 and 5xx (a numeric
Retry-After is honoured, capped at ``max_backoff``), and an ``EndpointError`` naming the URL and
the cause once the retries are spent. Other 4xx answers (a bad key, an unknown model) fail at once.

``LLMPromptSource`` asks the model for one adversarial pair per call. The request is seeded by
row: the seed picks the number of relations (3-12, mode 7 like the paper), the perturbation kind
(swap / flip / attribute / multi) and the number of perturbations (1 for swap, flip and attribute;
2-3 for multi, which flips several relations at once). The answer must be a JSON object::

    {"prompt": str, "perturbed_prompt": str,
     "perturbations": [{"type": "swap"|"flip"|"attribute", "before": str, "after": str}, ...],
     "n_objects": int, "n_relations": int}

optionally inside a ```json fence. ``validate_answer`` checks it strictly against the request;
a malformed answer is logged with its reason and skipped, never written. Extra keys are ignored.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import httpx

from ..errors import ConfigError, EndpointError

log = logging.getLogger(__name__)

PERTURBATION_TYPES: tuple[str, ...] = ("swap", "flip", "attribute")
KINDS: tuple[str, ...] = ("swap", "flip", "attribute", "multi")
# Relations per prompt, 3..12, mode 7 (the paper: 3-12, mostly 5-9).
RELATION_WEIGHTS: dict[int, float] = {3: 2, 4: 4, 5: 9, 6: 13, 7: 15, 8: 13, 9: 9, 10: 5, 11: 3, 12: 2}
# Perturbation kinds: 60 % single-perturbation pairs (swap/flip/attribute), 40 % multi.
KIND_WEIGHTS: dict[str, float] = {"swap": 0.2, "flip": 0.25, "attribute": 0.15, "multi": 0.4}
MAX_WORDS = 250
MAX_COUNT = 40

SYSTEM_PROMPT = """\
You write adversarial prompt pairs for training a reward model that checks spatial relations in \
generated images.

For each request, write:
1. "prompt": one natural, concrete description of a scene (45-80 words) with the requested number \
of explicit spatial relations between distinct, easy-to-draw objects (left of / right of, above / \
below, in front of / behind, diagonals, between, corners and edges of the image, bigger / smaller). \
Every object must be identifiable by its name and attributes.
2. "perturbed_prompt": a copy of the prompt in which exactly the requested number of spatial \
facts are changed, and nothing else (same objects, same attributes, same wording elsewhere). \
Perturbation types:
   - "swap": two objects exchange their positions;
   - "flip": one relation is reversed (left <-> right, above <-> below, front <-> behind, a corner \
to the opposite corner);
   - "attribute": the attributes (colour, size, material) of two objects at two positions are \
exchanged, so the wrong attribute appears at each position.
3. "perturbations": one entry per change, {"type": "swap"|"flip"|"attribute", "before": the exact \
phrase of the prompt that was changed, "after": the exact phrase that replaces it in the \
perturbed prompt}. "before" must appear verbatim in "prompt" and "after" verbatim in \
"perturbed_prompt".
4. "n_objects": the number of objects in the scene; "n_relations": the number of spatial relations \
stated in "prompt".

Answer with a single JSON object with exactly these keys and nothing else:
{"prompt": "...", "perturbed_prompt": "...", "perturbations": [{"type": "...", "before": "...", \
"after": "..."}], "n_objects": 0, "n_relations": 0}"""

ENV_BASE_URL = ("SPATIALT2I_LLM_BASE_URL", "OPENAI_BASE_URL")
ENV_MODEL = ("SPATIALT2I_LLM_MODEL",)
ENV_API_KEY = ("SPATIALT2I_LLM_API_KEY", "OPENAI_API_KEY")


def _env(names: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    for n in names:
        if env.get(n):
            return env[n]
    return None


@dataclass
class LLMConfig:
    """Where and how to call the chat endpoint. ``params`` are extra request-body fields."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    max_retries: int = 5
    backoff: float = 1.0          # first wait in seconds; doubles after each failed try
    max_backoff: float = 60.0
    temperature: float = 1.0
    max_tokens: int | None = 1024
    send_seed: bool = True        # pass the row seed as the request's "seed"
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None) -> LLMConfig:
        """Build from a config dict; ``base_url``, ``model`` and ``api_key`` fall back to env vars
        (SPATIALT2I_LLM_BASE_URL / _MODEL / _API_KEY, then OPENAI_BASE_URL / OPENAI_API_KEY)."""
        cfg = dict(cfg or {})
        env = os.environ if env is None else env
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"llm config: unknown key(s) {unknown}; known: {sorted(known)}")
        cfg.setdefault("base_url", _env(ENV_BASE_URL, env))
        cfg.setdefault("model", _env(ENV_MODEL, env))
        cfg.setdefault("api_key", _env(ENV_API_KEY, env))
        if not cfg["base_url"]:
            raise ConfigError("llm config: no base_url (set llm.base_url or SPATIALT2I_LLM_BASE_URL "
                              "or OPENAI_BASE_URL)")
        if not cfg["model"]:
            raise ConfigError("llm config: no model (set llm.model or SPATIALT2I_LLM_MODEL)")
        for key in ("timeout", "backoff", "max_backoff", "temperature"):
            if not isinstance(cfg.get(key, 0.0), (int, float)) or cfg.get(key, 0.0) < 0:
                raise ConfigError(f"llm config: {key} must be a number >= 0, got {cfg[key]!r}")
        if not isinstance(cfg.get("max_retries", 0), int) or cfg.get("max_retries", 0) < 0:
            raise ConfigError(f"llm config: max_retries must be an int >= 0, got {cfg['max_retries']!r}")
        if not isinstance(cfg.get("params", {}), dict):
            raise ConfigError(f"llm config: params must be a mapping, got {cfg['params']!r}")
        return cls(**cfg)

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"


class ChatClient:
    """Synchronous OpenAI-compatible chat-completions client with retries (thread-safe)."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        headers = {"Content-Type": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._http = httpx.Client(timeout=config.timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self, messages: list[dict[str, Any]], **params: Any) -> str:
        """The content of the first choice ("" if it is null). ``EndpointError`` if the endpoint
        is unreachable, keeps failing (429/5xx) after the retries, or answers 4xx / non-protocol."""
        cfg = self.config
        body: dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature}
        if cfg.max_tokens is not None:
            body["max_tokens"] = cfg.max_tokens
        body.update(cfg.params)
        body.update(params)
        url = cfg.url
        cause, retry_after = "no attempt made", 0.0
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                wait = min(cfg.max_backoff, max(retry_after, cfg.backoff * 2 ** (attempt - 1)))
                log.warning("chat endpoint %s: %s; retry %d/%d in %.2fs", url, cause, attempt,
                            cfg.max_retries, wait)
                time.sleep(wait)
            try:
                resp = self._http.post(url, json=body)
            except httpx.TransportError as e:  # connect/read/write errors and timeouts
                cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                cause = f"HTTP {resp.status_code} {_snippet(resp.text)}"
                retry_after = _retry_after(resp)
                continue
            if resp.status_code >= 400:
                raise EndpointError(f"chat endpoint {url} refused the request: HTTP "
                                    f"{resp.status_code} {_snippet(resp.text)}")
            return _content(resp, url)
        raise EndpointError(f"chat endpoint {url} failed after {cfg.max_retries + 1} attempt(s): {cause}")


def _retry_after(resp: httpx.Response) -> float:
    """The server's Retry-After in seconds (numeric form only), else 0."""
    try:
        return max(0.0, float(resp.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0


def _snippet(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


def _content(resp: httpx.Response, url: str) -> str:
    try:
        msg = resp.json()["choices"][0]["message"]
        content = msg.get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise EndpointError(f"chat endpoint {url} answered without choices[0].message: "
                            f"{_snippet(resp.text)}") from None
    if content is None:
        return ""
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


# ----------------------------------------------------------------------------- requests

@dataclass(frozen=True)
class PairRequest:
    """What one call asks for; drawn from the row seed."""

    n_relations: int
    n_perturbations: int
    kind: str
    seed: int

    @classmethod
    def from_seed(cls, seed: int) -> PairRequest:
        rnd = random.Random(seed)
        n_rel = rnd.choices(list(RELATION_WEIGHTS), weights=list(RELATION_WEIGHTS.values()))[0]
        kind = rnd.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        n_pert = rnd.choice((2, 3)) if kind == "multi" else 1
        return cls(n_relations=n_rel, n_perturbations=n_pert, kind=kind, seed=seed)

    def message(self) -> str:
        if self.kind == "multi":
            change = (f"{self.n_perturbations} perturbations at once (any mix of swap, flip and "
                      f"attribute; flips preferred)")
        else:
            change = f"exactly 1 perturbation of type \"{self.kind}\""
        spec = json.dumps({"n_relations": self.n_relations, "n_perturbations": self.n_perturbations,
                           "kind": self.kind, "seed": self.seed})
        return (f"Write one pair. The prompt states {self.n_relations} spatial relations. The "
                f"perturbed prompt applies {change}. Use the seed to vary objects, scene and "
                f"wording.\nRequest: {spec}")


@dataclass(frozen=True)
class PromptPair:
    prompt: str
    perturbed_prompt: str
    perturbations: list[dict[str, str]]
    n_objects: int
    n_relations: int
    kind: str


class AnswerError(ValueError):
    """A model answer that fails validation; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.S)


def _norm(s: str) -> str:
    return " ".join(s.split()).casefold()


def _text_field(obj: Mapping[str, Any], key: str, where: str = "") -> str:
    if key not in obj:
        raise AnswerError("missing_field", f"{where}{key!r} is missing")
    val = obj[key]
    if not isinstance(val, str):
        raise AnswerError("bad_type", f"{where}{key!r} must be a string, got {type(val).__name__}")
    if not val.strip():
        raise AnswerError("empty_field", f"{where}{key!r} is empty")
    return " ".join(val.split())


def _count_field(obj: Mapping[str, Any], key: str, lo: int) -> int:
    if key not in obj:
        raise AnswerError("missing_field", f"{key!r} is missing")
    val = obj[key]
    if isinstance(val, bool) or not isinstance(val, int):
        raise AnswerError("bad_type", f"{key!r} must be an integer, got {val!r}")
    if not lo <= val <= MAX_COUNT:
        raise AnswerError("bad_count", f"{key!r} = {val} is outside {lo}..{MAX_COUNT}")
    return val


def parse_json_answer(content: str) -> Any:
    """The JSON value of an answer: the whole text, or the inside of its ```json fence."""
    text = content.strip()
    m = _FENCE.search(text)
    if m:
        text = m.group(1).strip()
    if not text:
        raise AnswerError("empty_answer", "the answer is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnswerError("bad_json", f"not JSON ({e.msg} at char {e.pos})") from None


def validate_answer(content: str, request: PairRequest | None = None) -> PromptPair:
    """Parse and check an answer strictly; ``AnswerError(reason, detail)`` if it is malformed.

    With ``request``, the number of perturbations and their types must match what was asked.
    """
    obj = parse_json_answer(content)
    if not isinstance(obj, dict):
        raise AnswerError("not_object", f"the answer is a JSON {type(obj).__name__}, not an object")
    prompt = _text_field(obj, "prompt")
    perturbed = _text_field(obj, "perturbed_prompt")
    if _norm(prompt) == _norm(perturbed):
        raise AnswerError("same_prompt", "perturbed_prompt equals prompt")
    for key, text in (("prompt", prompt), ("perturbed_prompt", perturbed)):
        if len(text.split()) > MAX_WORDS:
            raise AnswerError("too_long", f"{key!r} has {len(text.split())} words (max {MAX_WORDS})")
    if "perturbations" not in obj:
        raise AnswerError("missing_field", "'perturbations' is missing")
    perts = obj["perturbations"]
    if not isinstance(perts, list):
        raise AnswerError("bad_type", f"'perturbations' must be a list, got {type(perts).__name__}")
    if not 1 <= len(perts) <= 3:
        raise AnswerError("n_perturbations", f"{len(perts)} perturbations (need 1-3)")
    out: list[dict[str, str]] = []
    for i, p in enumerate(perts):
        where = f"perturbations[{i}]."
        if not isinstance(p, dict):
            raise AnswerError("bad_type", f"perturbations[{i}] must be an object, got {type(p).__name__}")
        ptype = _text_field(p, "type", where).lower()
        if ptype not in PERTURBATION_TYPES:
            raise AnswerError("unknown_type", f"{where}type {ptype!r} is not one of {list(PERTURBATION_TYPES)}")
        before, after = _text_field(p, "before", where), _text_field(p, "after", where)
        if _norm(before) == _norm(after):
            raise AnswerError("same_phrase", f"{where}before equals after ({before!r})")
        if _norm(before) not in _norm(prompt):
            raise AnswerError("before_not_in_prompt", f"{where}before {before!r} is not in the prompt")
        if _norm(after) not in _norm(perturbed):
            raise AnswerError("after_not_in_perturbed",
                              f"{where}after {after!r} is not in the perturbed prompt")
        out.append({"type": ptype, "before": before, "after": after})
    n_objects = _count_field(obj, "n_objects", 2)
    n_relations = _count_field(obj, "n_relations", 1)
    kind = "multi" if len(out) > 1 else out[0]["type"]
    if request is not None:
        if len(out) != request.n_perturbations:
            raise AnswerError("wrong_n_perturbations",
                              f"asked for {request.n_perturbations} perturbation(s), got {len(out)}")
        if request.kind != "multi" and kind != request.kind:
            raise AnswerError("wrong_kind", f"asked for a {request.kind!r} perturbation, got {kind!r}")
    return PromptPair(prompt, perturbed, out, n_objects, n_relations, kind)


# ----------------------------------------------------------------------------- source

class LLMPromptSource:
    """Adversarial prompt pairs from a chat model; one call per pair, seeded by row."""

    def __init__(self, client: ChatClient, system_prompt: str = SYSTEM_PROMPT) -> None:
        self.client = client
        self.system_prompt = system_prompt

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None = None,
                    env: Mapping[str, str] | None = None) -> LLMPromptSource:
        cfg = dict(cfg or {})
        system_prompt = cfg.pop("system_prompt", SYSTEM_PROMPT)
        return cls(ChatClient(LLMConfig.from_dict(cfg, env)), system_prompt)

    @property
    def name(self) -> str:
        return f"llm:{self.client.config.model}"

    def close(self) -> None:
        self.client.close()

    def messages(self, request: PairRequest) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": request.message()}]

    def generate(self, seed: int) -> tuple[PromptPair | None, str | None]:
        """One pair for ``seed``: ``(pair, None)``, or ``(None, reason)`` if the answer was
        malformed (logged). ``EndpointError`` propagates: an unreachable endpoint stops the run."""
        request = PairRequest.from_seed(seed)
        params = {"seed": seed % 2**31} if self.client.config.send_seed else {}
        content = self.client.complete(self.messages(request), **params)
        try:
            return validate_answer(content, request), None
        except AnswerError as e:
            log.warning("LLM answer skipped (seed %d): %s; answer: %s", seed, e, _snippet(content, 300))
            return None, e.reason
