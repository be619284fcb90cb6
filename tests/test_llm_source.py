"""The OpenAI-compatible LLM prompt source, against a local chat-completions server (real sockets)."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import Counter

import pytest

from spatialt2i.data.llm import (
    AnswerError, ChatClient, LLMConfig, LLMPromptSource, PairRequest, validate_answer,
)
from spatialt2i.errors import ConfigError, EndpointError
from spatialt2i.testing import ChatServer, fake_pair_answer, fake_pair_llm, request_of

GOOD = {
    "prompt": "A red cube sits to the left of a blue ball, and a green cone is above the ball.",
    "perturbed_prompt": "A red cube sits to the right of a blue ball, and a green cone is above the ball.",
    "perturbations": [{"type": "flip", "before": "to the left of", "after": "to the right of"}],
    "n_objects": 3,
    "n_relations": 2,
}
FLIP1 = PairRequest(n_relations=2, n_perturbations=1, kind="flip", seed=7)


def fast_client(url: str, **kw) -> ChatClient:
    return ChatClient(LLMConfig(base_url=url, model="fake-llm", api_key="sk-test", timeout=5.0,
                                backoff=0.01, max_backoff=0.05, **kw))


def with_(**changes) -> str:
    return json.dumps({**GOOD, **changes})


# ------------------------------------------------------------------ validation (no server)

def test_valid_answer_plain_and_fenced():
    for content in (json.dumps(GOOD), "Here you go:\n```json\n" + json.dumps(GOOD) + "\n```\n"):
        pair = validate_answer(content, FLIP1)
        assert pair.prompt == GOOD["prompt"] and pair.perturbed_prompt == GOOD["perturbed_prompt"]
        assert pair.perturbations == GOOD["perturbations"]
        assert (pair.kind, pair.n_objects, pair.n_relations) == ("flip", 3, 2)


@pytest.mark.parametrize("content, reason", [
    ("not json at all {", "bad_json"),
    ("", "empty_answer"),
    ("[1, 2]", "not_object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "perturbed_prompt"}), "missing_field"),
    (with_(prompt=42), "bad_type"),
    (with_(prompt="   "), "empty_field"),
    (with_(perturbed_prompt=GOOD["prompt"].upper()), "same_prompt"),
    (with_(perturbations=[]), "n_perturbations"),
    (with_(perturbations=[GOOD["perturbations"][0]] * 4), "n_perturbations"),
    (with_(perturbations="flip"), "bad_type"),
    (with_(perturbations=[{"type": "rotate", "before": "to the left of", "after": "to the right of"}]),
     "unknown_type"),
    (with_(perturbations=[{"type": "flip", "before": "to the left of"}]), "missing_field"),
    (with_(perturbations=[{"type": "flip", "before": "in front of", "after": "to the right of"}]),
     "before_not_in_prompt"),
    (with_(perturbations=[{"type": "flip", "before": "to the left of", "after": "behind"}]),
     "after_not_in_perturbed"),
    (with_(n_objects="3"), "bad_type"),
    (with_(n_objects=True), "bad_type"),
    (with_(n_relations=0), "bad_count"),
])
def test_malformed_answers_rejected_with_reason(content, reason):
    with pytest.raises(AnswerError) as e:
        validate_answer(content, FLIP1)
    assert e.value.reason == reason


def test_answer_must_match_request():
    with pytest.raises(AnswerError) as e:
        validate_answer(json.dumps(GOOD), PairRequest(2, 1, "swap", 0))
    assert e.value.reason == "wrong_kind"
    with pytest.raises(AnswerError) as e:
        validate_answer(json.dumps(GOOD), PairRequest(2, 2, "multi", 0))
    assert e.value.reason == "wrong_n_perturbations"


def test_requests_are_seeded_and_cover_the_ranges():
    reqs = [PairRequest.from_seed(s) for s in range(2000)]
    assert reqs[:50] == [PairRequest.from_seed(s) for s in range(50)]
    assert {r.n_relations for r in reqs} == set(range(3, 13))
    assert {r.kind for r in reqs} == {"swap", "flip", "attribute", "multi"}
    assert all((r.n_perturbations in (2, 3)) == (r.kind == "multi") for r in reqs)
    assert sum(r.n_perturbations == 1 for r in reqs) / len(reqs) >= 0.4
    assert Counter(r.n_relations for r in reqs).most_common(1)[0][0] in (6, 7, 8)


def test_fake_llm_answers_are_valid_for_every_request_shape():
    for s in range(300):
        req = PairRequest.from_seed(s)
        validate_answer(json.dumps(fake_pair_answer(req.__dict__)), req)


# ------------------------------------------------------------------ config

def test_config_from_env_and_dict(monkeypatch):
    for k in ("SPATIALT2I_LLM_BASE_URL", "SPATIALT2I_LLM_MODEL", "SPATIALT2I_LLM_API_KEY",
              "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://fallback/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback")
    monkeypatch.setenv("SPATIALT2I_LLM_MODEL", "m1")
    cfg = LLMConfig.from_dict({})
    assert (cfg.base_url, cfg.model, cfg.api_key) == ("http://fallback/v1", "m1", "sk-fallback")
    assert cfg.url == "http://fallback/v1/chat/completions"
    monkeypatch.setenv("SPATIALT2I_LLM_BASE_URL", "http://mine/v1/")
    assert LLMConfig.from_dict({}).url == "http://mine/v1/chat/completions"
    assert LLMConfig.from_dict({"model": "m2", "base_url": "http://x/v1/chat/completions"}).url == \
        "http://x/v1/chat/completions"
    with pytest.raises(ConfigError, match="modle"):
        LLMConfig.from_dict({"modle": "m"})
    with pytest.raises(ConfigError, match="timeout"):
        LLMConfig.from_dict({"timeout": "soon"})
    monkeypatch.delenv("SPATIALT2I_LLM_MODEL")
    with pytest.raises(ConfigError, match="SPATIALT2I_LLM_MODEL"):
        LLMConfig.from_dict({})


# ------------------------------------------------------------------ over real sockets

def test_good_answer_parsed_over_http():
    with ChatServer(fake_pair_llm) as server:
        source = LLMPromptSource(fast_client(server.url))
        pair, reason = source.generate(123)
        source.close()
    req = PairRequest.from_seed(123)
    assert reason is None and pair is not None
    assert len(pair.perturbations) == req.n_perturbations and pair.n_relations == req.n_relations
    body = server.requests[0]
    assert body["model"] == "fake-llm" and body["seed"] == 123
    assert body["messages"][0]["role"] == "system" and "perturbed_prompt" in body["messages"][0]["content"]
    assert request_of(body["messages"]) == {"n_relations": req.n_relations,
                                           "n_perturbations": req.n_perturbations,
                                           "kind": req.kind, "seed": 123}
    assert source.name == "llm:fake-llm"


def test_malformed_answers_skipped_with_reasons(caplog):
    answers = iter([
        "Sure! Here is your pair: {prompt: oops}",
        json.dumps({k: v for k, v in GOOD.items() if k != "n_objects"}),
        with_(perturbations=[{"type": "flip", "before": "in front of", "after": "to the right of"}]),
    ])
    with ChatServer(lambda messages: next(answers)) as server:
        source = LLMPromptSource(fast_client(server.url))
        with caplog.at_level(logging.WARNING, logger="spatialt2i.data.llm"):
            results = [source.generate(s) for s in range(3)]
        source.close()
    assert [r for _, r in results] == ["bad_json", "missing_field", "before_not_in_prompt"]
    assert all(pair is None for pair, _ in results)
    assert "before_not_in_prompt" in caplog.text and "'n_objects' is missing" in caplog.text


def test_transient_500_and_429_are_retried():
    replies = iter([500, (429, "slow down"), 503, "ok"])
    with ChatServer(lambda messages: next(replies)) as server:
        with fast_client(server.url, max_retries=3) as client:
            assert client.complete([{"role": "user", "content": "hi"}]) == "ok"
    assert len(server.requests) == 4


def test_retry_after_is_honoured_up_to_max_backoff(monkeypatch):
    import httpx

    from spatialt2i.data import llm

    waits = []
    monkeypatch.setattr(llm.time, "sleep", waits.append)
    client = fast_client("http://llm.invalid/v1", max_retries=2)
    replies = iter([httpx.Response(429, headers={"Retry-After": "0.03"}, text="busy"),
                    httpx.Response(503, headers={"Retry-After": "120"}, text="down"),
                    httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})])
    client._http = httpx.Client(transport=httpx.MockTransport(lambda request: next(replies)))
    assert client.complete([{"role": "user", "content": "hi"}]) == "ok"
    assert waits == [0.03, 0.05]  # Retry-After beats the 0.01 back-off; 120 s is capped at 0.05


def test_persistent_5xx_gives_up_with_endpoint_error():
    with ChatServer(lambda messages: 503) as server:
        with fast_client(server.url, max_retries=2) as client, pytest.raises(EndpointError) as e:
            client.complete([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 3
    assert server.url in str(e.value) and "503" in str(e.value)


def test_client_error_is_not_retried():
    with ChatServer(lambda messages: (401, "invalid api key")) as server:
        with fast_client(server.url, max_retries=3) as client, pytest.raises(EndpointError) as e:
            client.complete([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1
    assert "401" in str(e.value) and "invalid api key" in str(e.value)


def test_unreachable_endpoint_names_url_fast():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    source = LLMPromptSource(fast_client(url, max_retries=2))
    t0 = time.monotonic()
    with pytest.raises(EndpointError) as e:
        source.generate(0)
    assert time.monotonic() - t0 < 3.0
    assert f"127.0.0.1:{port}/v1/chat/completions" in str(e.value)
    assert "ConnectError" in str(e.value) and "3 attempt" in str(e.value)


def test_server_accepts_image_parts_and_handler_errors():
    from PIL import Image
    import base64
    import io

    from spatialt2i.testing import message_images, message_text

    buf = io.BytesIO()
    Image.new("RGB", (8, 4), (255, 0, 0)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    seen = {}

    def judge(messages):
        seen["images"] = message_images(messages[-1])
        seen["text"] = message_text(messages[-1])
        if seen["text"] == "crash":
            raise RuntimeError("boom")
        return "yes"

    with ChatServer(judge) as server, fast_client(server.url, max_retries=0) as client:
        parts = [{"type": "text", "text": "Is it red?"}, {"type": "image_url", "image_url": {"url": url}}]
        assert client.complete([{"role": "user", "content": parts}]) == "yes"
        assert seen["text"] == "Is it red?" and seen["images"][0].size == (8, 4)
        assert seen["images"][0].getpixel((0, 0)) == (255, 0, 0)
        with pytest.raises(EndpointError, match="boom"):
            client.complete([{"role": "user", "content": "crash"}])
