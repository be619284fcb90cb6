"""The zero-shot VLM judge baseline against a local OpenAI-compatible chat server (pointwise and pairwise)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialt2i.data.llm import ChatClient, LLMConfig
from spatialt2i.data.schema import decode_image, iter_rows
from spatialt2i.errors import EndpointError
from spatialt2i.reward.evaluate import evaluate_dataset
from spatialt2i.reward.judges import VLMJudge, parse_choice, parse_rating
from spatialt2i.testing.chat_server import ChatServer, message_images, message_text
from test_reward_train import build_tiny_dataset


def key(img: Image.Image) -> str:
    return hashlib.md5(np.asarray(img.convert("RGB")).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dataset(tmp_path_factory.mktemp("ds") / "world", pairs=20, seed=2)


@pytest.fixture(scope="module")
def truth(dataset: Path) -> tuple[dict[str, str], list[str]]:
    """image key -> "chosen"/"rejected", and the test split's chosen keys in row order."""
    labels, chosen = {}, []
    for row in iter_rows(dataset, "train"):
        c, r = decode_image(row["chosen"], "c"), decode_image(row["rejected"], "r")
        labels[key(c)], labels[key(r)] = "chosen", "rejected"
        chosen.append(key(c))
    return labels, chosen


def client(server: ChatServer) -> ChatClient:
    return ChatClient(LLMConfig(base_url=server.url, model="test-model", max_retries=0, backoff=0.0,
                                temperature=0.0, max_tokens=16))


def test_answer_parsers() -> None:
    assert [parse_rating(s) for s in ("7", " 10 ", "7/10", "Rating: 3", "8.5", "11", "seven", "7 because", "")] == \
        [7, 10, 7, 3, 8.5, None, None, None, None]
    assert [parse_choice(s) for s in ("1", "2.", "Image 2", "3", "both", "1 or 2")] == [1, 2, 2, None, None, None]


def test_pointwise_judge_with_retries_and_a_failure(dataset: Path, truth: tuple) -> None:
    labels, chosen = truth
    retried, failing = chosen[0], chosen[1]   # first pair: one malformed answer; second: never a valid one
    calls: Counter = Counter()

    def handler(messages: list[dict]) -> str:
        imgs = message_images(messages[-1])
        assert len(imgs) == 1 and "integer from 0" in message_text(messages[-1])
        k = key(imgs[0])
        calls[k] += 1
        if k == failing:
            return "it depends"
        if k == retried and calls[k] == 1:
            return "I would say quite good"
        return "9" if labels[k] == "chosen" else "2"

    with ChatServer(handler) as server:
        judge = VLMJudge(client(server), "pointwise", retries=2)
        rep = evaluate_dataset(None, dataset, split="train", batch_size=8, baselines=[judge])
    n = rep["pairs"]
    t = rep["systems"]["judge"]
    assert t["failures"] == 1 and judge.stats.failures == 1
    assert t["overall"]["acc"] == pytest.approx((n - 1) / n)      # the failed pair counts as wrong
    assert calls[retried] == 2 and calls[failing] == 3            # retried once; failed after 1 + 2 tries
    assert judge.stats.malformed == 1 + 3
    assert judge.stats.requests == 2 * n + 1 + 2


def test_pairwise_judge_sees_both_orders(dataset: Path, truth: tuple) -> None:
    labels, _ = truth
    answers: Counter = Counter()

    def handler(messages: list[dict]) -> str:
        imgs = message_images(messages[-1])
        assert len(imgs) == 2 and "1 for the first image" in message_text(messages[-1])
        ans = "1" if labels[key(imgs[0])] == "chosen" else "Image 2"
        answers[ans] += 1
        return ans

    with ChatServer(handler) as server:
        rep = evaluate_dataset(None, dataset, split="train", baselines=[VLMJudge(client(server), "pairwise", seed=0)])
    t = rep["systems"]["judge-pairwise"]
    assert t["overall"]["acc"] == 1.0 and t["failures"] == 0
    assert answers["1"] > 0 and answers["Image 2"] > 0   # the chosen image was shown first and second

    # a judge that always says "1" is at chance-ish, not perfect: position order is randomised
    with ChatServer(lambda m: "1") as server:
        rep = evaluate_dataset(None, dataset, split="train", baselines=[VLMJudge(client(server), "pairwise", seed=0)])
    assert 0.0 < rep["systems"]["judge-pairwise"]["overall"]["acc"] < 1.0


def test_unreachable_judge_endpoint_is_an_error(dataset: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    judge = VLMJudge(ChatClient(LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=0)))
    with pytest.raises(EndpointError, match=str(port)):
        evaluate_dataset(None, dataset, split="train", baselines=[judge])
