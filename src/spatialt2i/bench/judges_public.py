"""Judges for the public benchmarks, each suite scored with its own protocol.

Two judge back-ends, one interface:

- :class:`ChatJudge` -- any OpenAI-compatible chat endpoint with images (GPT-4o, Gemini, a vLLM
  serving Qwen2.5-VL-72B ...): ``complete(image, text) -> str``.
- :class:`QwenJudge` -- a local Qwen2.5-VL through transformers: ``yes_no(image, questions)``
  compares the next-token logits of "yes" and "no" after each question (never malformed), and
  ``complete`` generates text greedily (used for GenEval's boxes).

Protocols (:func:`score_item`):

- ``geneval``: a detector returns labelled boxes and GenEval's rule decides (:mod:`.geneval`).
- ``yesno``: the suite's questions in one request, one "yes"/"no" line each (TIIF-Bench's
  checklist protocol; UniGenBench++ testpoints with the prompt; DPG-Bench's questions;
  T2I-CompBench's prompt as one question). A question passes when the answer equals its expected
  answer. DPG-Bench: a question whose parent was answered "no" scores 0 in ``overall``; category
  columns use the raw answers (as ``compute_dpg_bench.py`` does).

A malformed answer (wrong number of yes/no lines, bad JSON, boxes out of the image) is asked again
up to ``retries`` times; still malformed, the image is recorded as a failure with the reason and
every question counts as failed -- never as a pass. An unreachable endpoint raises
``EndpointError`` (after ``ChatClient``'s own retries) and stops the run.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from ..errors import ConfigError, MalformedAnswer
from .geneval import Detector, geneval_verdict
from .suites import BenchItem, Suite

log = logging.getLogger(__name__)


class JudgeFailure(Exception):
    """Every try gave a malformed answer; ``reason`` is the last one."""

    def __init__(self, reason: str, attempts: int, answer: str = "") -> None:
        super().__init__(f"{reason} (after {attempts} tries)")
        self.reason, self.attempts, self.answer = reason, attempts, answer


# -------------------------------------------------------------------------------------- prompts

QUESTIONS_PROMPT = """Look carefully at the image and answer each yes/no question below.

Questions:
{questions}

Reply with exactly {n} line(s), one per question, in the same order. Begin each line with "yes" \
or "no", optionally followed by a short reason. Write nothing else."""

TESTPOINTS_PROMPT = """The image was generated from this description:
"{prompt}"

Check the image against each test point below (a test dimension and what the description asks \
for). Is it satisfied?

Test points:
{questions}

Reply with exactly {n} line(s), one per test point, in the same order. Begin each line with "yes" \
(satisfied) or "no" (not satisfied), optionally followed by a short reason. Write nothing else."""

def yes_no_prompt(style: str, item: BenchItem) -> str:
    qs = "\n".join(f"{k}. {q.text}" for k, q in enumerate(item.questions, 1))
    template = TESTPOINTS_PROMPT if style == "testpoints" else QUESTIONS_PROMPT
    return template.format(questions=qs, n=len(item.questions), prompt=item.prompt)


_YESNO = re.compile(r"^\s*(?:[-*]\s*)?(?:\(?\d+\s*[.):]\)?\s*)?[*_\"']*\s*(yes|no)\b", re.I)


def parse_yes_no(text: str, n: int) -> list[bool]:
    """The answers of lines that begin with yes/no (after an optional "1." numbering); exactly ``n``."""
    if not (text or "").strip():
        raise MalformedAnswer("empty answer")
    found = [m.group(1).lower() == "yes" for m in map(_YESNO.match, text.splitlines()) if m]
    if len(found) != n:
        raise MalformedAnswer(f"expected {n} yes/no line(s), got {len(found)}")
    return found


# --------------------------------------------------------------------------------------- judges

def image_part(img: Image.Image) -> dict[str, Any]:
    import base64
    import io

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": url}}


class ChatJudge:
    """A VLM behind an OpenAI-compatible chat-completions endpoint (``data.llm.ChatClient``)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.name = f"openai:{client.config.model}"

    def complete(self, image: Image.Image, text: str) -> str:
        return self.client.complete([{"role": "user", "content": [image_part(image), {"type": "text", "text": text}]}])

    def close(self) -> None:
        self.client.close()


class QwenJudge:
    """A local Qwen2.5-VL (folder or hub id) through transformers."""

    def __init__(self, name_or_path: str, device: str | None = None, max_new_tokens: int = 512) -> None:
        import torch

        from ..reward.backbone import check_model_source, load_image_processor, load_tokenizer, load_vlm

        src = check_model_source(name_or_path, "judge")
        self.tok, self.ip = load_tokenizer(src), load_image_processor(src)
        dtype = torch.bfloat16 if device and device.startswith("cuda") else torch.float32
        self.model = load_vlm(src, dtype).eval()
        if device:
            self.model.to(device)
        self.name, self.max_new_tokens = f"qwen:{name_or_path}", max_new_tokens
        ids = [self.tok(w, add_special_tokens=False)["input_ids"] for w in ("yes", "no")]
        if not all(ids) or ids[0][0] == ids[1][0]:
            raise ConfigError(f"judge {name_or_path}: its tokenizer cannot tell 'yes' from 'no' by the first token")
        self.yes_id, self.no_id = ids[0][0], ids[1][0]

    def _chat(self, text: str) -> str:
        from ..reward.backbone import IMAGE_PAD

        return f"<|im_start|>user\n<|vision_start|>{IMAGE_PAD}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"

    def _inputs(self, texts: list[str], images: list[Image.Image]) -> dict[str, Any]:
        from ..reward.backbone import encode

        dev = next(self.model.parameters()).device
        return {k: v.to(dev) for k, v in encode(self.tok, self.ip, texts, images).items()}

    def yes_no(self, image: Image.Image, questions: Sequence[str]) -> list[bool]:
        import torch

        texts = [self._chat(f"{q} Answer yes or no.") for q in questions]
        with torch.no_grad():
            h = self.model.model(**self._inputs(texts, [image] * len(texts)), use_cache=False).last_hidden_state[:, -1]
            logits = self.model.lm_head(h).float()
        return (logits[:, self.yes_id] > logits[:, self.no_id]).tolist()

    def complete(self, image: Image.Image, text: str) -> str:
        import torch

        enc = self._inputs([self._chat(text)], [image])
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def make_judge(spec: str, *, url: str | None = None, model: str | None = None, api_key: str | None = None,
               device: str | None = None, timeout: float = 120.0) -> Any:
    """``openai`` (endpoint from ``url``/``model`` or SPATIALT2I_LLM_* / OPENAI_* env vars) or ``qwen:PATH``."""
    if spec == "openai":
        from ..data.llm import ChatClient, LLMConfig

        cfg: dict[str, Any] = {"temperature": 0.0, "max_tokens": 1024, "send_seed": False, "timeout": timeout}
        for key, val in (("base_url", url), ("model", model), ("api_key", api_key)):
            if val:
                cfg[key] = val
        return ChatJudge(ChatClient(LLMConfig.from_dict(cfg)))
    if spec.startswith("qwen:") and len(spec) > 5:
        return QwenJudge(spec[5:], device=device)
    raise ConfigError(f"--judge {spec!r}: expected 'openai' (with --judge-url/--judge-model) or 'qwen:PATH'")


# -------------------------------------------------------------------------------------- scoring

def ask(call: Callable[[], Any], retries: int) -> tuple[Any, int]:
    """``call()`` until it does not raise :class:`MalformedAnswer` (1 + ``retries`` tries)."""
    reason = ""
    for attempt in range(1, retries + 2):
        try:
            return call(), attempt
        except MalformedAnswer as e:
            reason = e.reason
            log.warning("judge: malformed answer (try %d/%d): %s", attempt, retries + 1, reason)
    raise JudgeFailure(reason, retries + 1)


def _dims(suite: Suite, item: BenchItem, passed: Sequence[bool]) -> dict[str, list[float]]:
    """Per column: [questions passed in this image, number of questions] (score = passed / n)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for q, ok in zip(item.questions, passed):
        groups[suite.column(q.dimension)].append(ok)
        if suite.name == "dpg-bench":
            groups[q.dimension.split("-")[0].strip()].append(ok)
    dims = {c: [float(sum(v)), len(v)] for c, v in groups.items()}
    if suite.name == "dpg-bench":
        by_id = dict(zip((q.qid for q in item.questions), passed))
        adj = [ok and all(by_id.get(p, True) for p in q.parents) for q, ok in zip(item.questions, passed)]
        dims["overall"] = [float(sum(adj)), len(adj)]
    return dims


def score_item(suite: Suite, item: BenchItem, image: Image.Image, judge: Any, *,
               detector: Detector | None = None, retries: int = 2) -> dict[str, Any]:
    """Judge one image of ``item``: ``{"answers", "dims", "failure", "attempts", ...}``."""
    rec: dict[str, Any] = {"failure": None}
    try:
        if suite.protocol == "geneval":
            if detector is None:
                raise ConfigError(f"suite {suite.name} needs a detector")
            classes = [r["class"] for r in item.meta["include"]]
            boxes, rec["attempts"] = ask(lambda: detector.detect(image, classes), retries)
            ok, why = geneval_verdict(item.meta["include"], boxes)
            answers = [ok]
            rec["reason"] = why
            rec["boxes"] = [vars(b) for b in boxes]
        elif hasattr(judge, "yes_no"):
            answers, rec["attempts"] = judge.yes_no(image, [q.text for q in item.questions]), 1
        else:
            text = yes_no_prompt(suite.style, item)
            answers, rec["attempts"] = ask(lambda: parse_yes_no(judge.complete(image, text), len(item.questions)),
                                           retries)
    except JudgeFailure as e:
        rec.update(failure=e.reason, attempts=e.attempts)
        answers = [None] * len(item.questions)
    passed = [a is not None and a == q.expected for q, a in zip(item.questions, answers)]
    rec["answers"] = [{"qid": q.qid, "dimension": q.dimension, "answer": a, "passed": p}
                      for q, a, p in zip(item.questions, answers, passed)]
    rec["dims"] = _dims(suite, item, passed)
    return rec
