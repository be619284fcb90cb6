"""Judges for the public benchmarks, each suite scored with its own protocol.

Two judge back-ends, one interface:

- :class:`ChatJudge` -- any OpenAI-compatible chat endpoint with images (GPT-4o, Gemini, a vLLM
  serving Qwen2.5-VL-72B ...): ``complete(image, text) -> str``.
- :class:`QwenJudge` -- a local Qwen2.5-VL through transformers: ``yes_no(image, questions)``
  compares the next-token logits of "yes" and "no" after each question (never malformed), and
  ``complete`` generates text greedily (used for GenEval's boxes).

Protocols (:func:`score_item`):

- ``geneval``: a :class:`Detector` returns labelled boxes; GenEval's rule then decides: the top
  ``count`` boxes of each class must exist, and every (object, reference) pair must satisfy the
  position by the box-centre rule (``world.geometry.directional``, one axis at a time with that
  axis's box sizes, as GenEval does). :class:`VLMDetector` asks the judge for boxes in JSON;
  :class:`WorldDetector` finds world shapes ("red circle") by the world's colour segmentation.
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
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ..errors import ConfigError
from .suites import BenchItem, Suite

log = logging.getLogger(__name__)


class MalformedAnswer(ValueError):
    """A judge answer that does not follow the protocol; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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

BOXES_PROMPT = """Find every instance of these objects in the image: {classes}. The image is \
{width}x{height} pixels.

Reply with JSON only: {{"objects": [{{"label": "<one of the names above>", "box": [x1, y1, x2, y2], \
"score": <confidence from 0 to 1>}}]}}, box corners in pixels (x to the right, y down). Reply \
{{"objects": []}} if none is visible."""


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


# ---------------------------------------------------------------------------------------- boxes

@dataclass(frozen=True)
class Box:
    """A labelled box; corners as fractions of the image width/height, y down."""

    label: str
    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


class Detector(Protocol):
    name: str

    def detect(self, image: Image.Image, classes: Sequence[str]) -> list[Box]:
        """Boxes of the named classes (labels from ``classes``); may raise :class:`MalformedAnswer`."""
        ...


def parse_boxes(text: str, classes: Sequence[str], width: int, height: int) -> list[Box]:
    """Boxes from a JSON answer (``{"objects": [...]}`` or a bare list); labels not in ``classes`` dropped."""
    from ..data.llm import AnswerError, parse_json_answer

    try:
        obj = parse_json_answer(text)
    except AnswerError as e:
        raise MalformedAnswer(f"boxes: {e}") from None
    objs = obj.get("objects") if isinstance(obj, dict) else obj
    if not isinstance(objs, list):
        raise MalformedAnswer("boxes: expected {\"objects\": [...]}")
    names = {c.lower(): c for c in classes}
    out = []
    for i, o in enumerate(objs):
        if not isinstance(o, dict) or not isinstance(o.get("label"), str):
            raise MalformedAnswer(f"boxes: objects[{i}] has no string label")
        box = o.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                for v in box)):
            raise MalformedAnswer(f"boxes: objects[{i}].box must be 4 numbers [x1, y1, x2, y2]")
        x0, y0, x1, y1 = (float(v) for v in box)
        slack = 0.02 * max(width, height)
        if not (-slack <= x0 < x1 <= width + slack and -slack <= y0 < y1 <= height + slack):
            raise MalformedAnswer(f"boxes: objects[{i}].box {box} is not inside the {width}x{height} image")
        score = o.get("score", 1.0)
        score = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else 1.0
        label = names.get(o["label"].strip().lower())
        if label is not None:
            out.append(Box(label, x0 / width, y0 / height, x1 / width, y1 / height, score))
    return out


class VLMDetector:
    """Boxes from a judge that writes text (``complete``), asked for JSON."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge
        self.name = f"vlm:{judge.name}"

    def detect(self, image: Image.Image, classes: Sequence[str]) -> list[Box]:
        text = BOXES_PROMPT.format(classes=", ".join(f'"{c}"' for c in classes), width=image.width,
                                   height=image.height)
        return parse_boxes(self.judge.complete(image, text), classes, image.width, image.height)


class WorldDetector:
    """The built-in world's detector: classes are "<colour> <shape>" (e.g. "red circle")."""

    name = "world"

    def detect(self, image: Image.Image, classes: Sequence[str]) -> list[Box]:
        from ..world.detect import find, label_pixels

        labels = label_pixels(image)
        h, w = labels.shape
        out = []
        for c in classes:
            parts = c.split()
            if len(parts) != 2:
                raise ConfigError(f"world detector: class {c!r} is not '<colour> <shape>'")
            try:
                det = find(labels, parts[0], parts[1])
            except ValueError:
                raise ConfigError(f"world detector: unknown colour or shape in {c!r}") from None
            if det is not None:
                x0, y0, x1, y1 = det.box
                out.append(Box(c, x0 / w, y0 / h, (x1 + 1) / w, (y1 + 1) / h, det.fit))
        return out


_RELATIONS = {"left of": "left_of", "right of": "right_of", "above": "above", "below": "below"}


def geneval_relation(rel: str, a: Box, b: Box) -> bool:
    """GenEval's box-centre rule: is ``a`` ``rel`` of ``b``? (the world's ``directional``, per axis)."""
    from ..world.geometry import directional

    kind = _RELATIONS.get(rel)
    if kind is None:
        raise ConfigError(f"geneval: unknown position {rel!r} (one of {list(_RELATIONS)})")
    horizontal = kind in ("left_of", "right_of")
    (ax, ay), (bx, by) = a.centre, b.centre
    sa, sb = (a.x1 - a.x0, b.x1 - b.x0) if horizontal else (a.y1 - a.y0, b.y1 - b.y0)
    return bool(directional(kind, (np.float64(ax), np.float64(ay), sa), (np.float64(bx), np.float64(by), sb)))


def geneval_verdict(include: Sequence[dict[str, Any]], boxes: Sequence[Box]) -> tuple[bool, str]:
    """GenEval's position check: each class's top-``count`` boxes exist; every pair satisfies the position."""
    found = []
    for req in include:
        mine = sorted((b for b in boxes if b.label == req["class"]), key=lambda b: -b.score)[: req.get("count", 1)]
        if len(mine) < req.get("count", 1):
            return False, f"{req['class']}: found {len(mine)} of {req.get('count', 1)}"
        found.append(mine)
    for i, req in enumerate(include):
        if "position" not in req:
            continue
        rel, target = req["position"]
        for a in found[i]:
            for b in found[int(target)]:
                if not geneval_relation(rel, a, b):
                    return False, f"{req['class']} is not {rel} {include[int(target)]['class']}"
    return True, ""


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


def make_detector(spec: str, judge: Any) -> Detector:
    if spec == "vlm":
        if not hasattr(judge, "complete"):
            raise ConfigError(f"--detector vlm: judge {judge.name} cannot write text")
        return VLMDetector(judge)
    if spec == "world":
        return WorldDetector()
    raise ConfigError(f"--detector {spec!r}: expected 'vlm' or 'world'")


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
