"""GenEval's position protocol: labelled boxes from a detector, then GenEval's rule.

The top ``count`` boxes of each class must exist, and every (object, reference) pair must satisfy
the position by the box-centre rule (``world.geometry.directional``, one axis at a time with that
axis's box sizes, as GenEval does). :class:`VLMDetector` asks a judge for boxes in JSON;
:class:`WorldDetector` finds world shapes ("red circle") by the world's colour segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ..errors import ConfigError, MalformedAnswer

BOXES_PROMPT = """Find every instance of these objects in the image: {classes}. The image is \
{width}x{height} pixels.

Reply with JSON only: {{"objects": [{{"label": "<one of the names above>", "box": [x1, y1, x2, y2], \
"score": <confidence from 0 to 1>}}]}}, box corners in pixels (x to the right, y down). Reply \
{{"objects": []}} if none is visible."""



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


def make_detector(spec: str, judge: Any) -> Detector:
    if spec == "vlm":
        if not hasattr(judge, "complete"):
            raise ConfigError(f"--detector vlm: judge {judge.name} cannot write text")
        return VLMDetector(judge)
    if spec == "world":
        return WorldDetector()
    raise ConfigError(f"--detector {spec!r}: expected 'vlm' or 'world'")
