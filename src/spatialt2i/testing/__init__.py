"""Helpers for tests: local stand-ins for remote services (chat-completions endpoints).

``fake_pair_llm`` is a chat handler for ``ChatServer`` that plays the prompt-pair LLM: it reads
the ``Request: {...}`` line that ``LLMPromptSource`` sends and answers with a valid pair of what
was asked (deterministic per request seed).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from .chat_server import ChatServer, message_images, message_text

__all__ = ["ChatServer", "fake_pair_answer", "fake_pair_llm", "message_images", "message_text", "request_of"]

_OBJECTS = ("cube", "ball", "cone", "mug", "vase", "book", "lamp", "clock", "apple", "shoe", "kettle",
            "pan", "chair")
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown",
            "grey", "cyan", "gold")


def fake_pair_answer(request: dict[str, Any]) -> dict[str, Any]:
    """A valid answer object for a request ``{"n_relations", "n_perturbations", "kind", "seed"}``."""
    rnd = random.Random(request.get("seed", 0))
    n_rel = int(request["n_relations"])
    n_pert = int(request["n_perturbations"])
    kind = request["kind"]
    n_obj = n_rel + 1
    objs = [f"{c} {o}" for c, o in zip(rnd.sample(_COLOURS, n_obj), rnd.sample(_OBJECTS, n_obj))]
    clauses = [f"the {objs[i]} is to the left of the {objs[i + 1]}" for i in range(n_rel)]
    changed = list(clauses)
    perts = []
    for i in range(n_pert):
        ptype = "flip" if kind == "multi" else kind
        a, b = objs[i], objs[i + 1]
        if ptype == "flip":
            after = f"the {a} is to the right of the {b}"
        elif ptype == "swap":
            after = f"the {b} is to the left of the {a}"
        else:  # attribute: exchange colours
            (ca, na), (cb, nb) = a.split(" ", 1), b.split(" ", 1)
            after = f"the {cb} {na} is to the left of the {ca} {nb}"
        changed[i] = after
        perts.append({"type": ptype, "before": clauses[i], "after": after})
    return {"prompt": "In a sunny room, " + "; ".join(clauses) + ".",
            "perturbed_prompt": "In a sunny room, " + "; ".join(changed) + ".",
            "perturbations": perts, "n_objects": n_obj, "n_relations": n_rel}


def request_of(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``Request: {...}`` JSON of the last user message."""
    text = message_text([m for m in messages if m.get("role") == "user"][-1])
    m = re.search(r"^Request: (\{.*\})\s*$", text, re.M)
    if not m:
        raise ValueError(f"no 'Request: {{...}}' line in {text!r}")
    return json.loads(m.group(1))


def fake_pair_llm(messages: list[dict[str, Any]]) -> str:
    """A ``ChatServer`` handler answering each pair request validly, in a ```json fence."""
    return "```json\n" + json.dumps(fake_pair_answer(request_of(messages))) + "\n```"
