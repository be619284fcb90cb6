"""The reward server over real sockets: batching, each request its own scores, bad input -> 4xx naming the
field while serving goes on, queue full -> 503; the HTTP client; spatialscore.score; the serve CLI."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from spatialt2i.errors import EndpointError
from spatialt2i.reward.client import RewardClient, encode_image
from spatialt2i.reward.server import RewardServer, ServerSettings
from test_reward_train import cli_env, tiny_backbone

torch.set_num_threads(1)


class FakeModel:
    """``score`` = len(prompt) + mean pixel / 255, so every answer can be checked; optional delay and gate."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay, self.gate = delay, gate
        self.entered = threading.Event()
        self.batches: list[int] = []

    @staticmethod
    def expected(prompt: str, image: Image.Image) -> float:
        return len(prompt) + float(np.asarray(image, dtype=np.float32).mean()) / 255

    def score(self, prompts: list[str], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.delay)
        self.batches.append(len(prompts))
        mu = torch.tensor([self.expected(p, i) for p, i in zip(prompts, images)], dtype=torch.float64)
        return {"reward": mu, "mu": mu, "sigma": torch.ones_like(mu)}


def img(i: int, side: int = 16) -> Image.Image:
    return Image.new("RGB", (side, side), (i * 7 % 256, i * 13 % 256, i * 29 % 256))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_concurrent_requests_are_batched_and_each_gets_its_own_score() -> None:
    model = FakeModel(delay=0.05)
    with RewardServer(model, ServerSettings(max_batch=8, max_wait_ms=30, queue=64)) as server:
        def one(i: int) -> tuple[int, list[float]]:
            prompt = "p" * (i + 1)
            r = httpx.post(server.url + "/score", json={"prompts": [prompt], "images": [encode_image(img(i))]}, timeout=60)
            assert r.status_code == 200, r.text
            return i, r.json()["mu"]

        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(one, range(24)))
        for i, mu in results:
            assert mu == [pytest.approx(FakeModel.expected("p" * (i + 1), img(i)), abs=1e-6)]
        health = httpx.get(server.url + "/health").json()
    assert sum(model.batches) == 24 and health["images"] == 24
    assert health["largest_batch"] > 1 and len(model.batches) < 24   # requests shared model calls
    assert max(model.batches) <= 8
    assert health["model_seconds"] >= 0.05 * len(model.batches)        # each model call sleeps 50 ms


def test_a_lone_client_does_not_wait_for_a_batch_to_fill() -> None:
    """With no other request queued or arriving, a request is scored at once, not after max_wait_ms."""
    with RewardServer(FakeModel(), ServerSettings(max_batch=8, max_wait_ms=3000)) as server:
        with httpx.Client(timeout=60) as http:
            t0 = time.monotonic()
            for i in range(4):
                r = http.post(server.url + "/score", json={"prompts": ["p"], "images": [encode_image(img(i))]})
                assert r.status_code == 200, r.text
            waited = time.monotonic() - t0
    assert waited < 3.0, f"4 lone requests took {waited:.1f} s: each waited for company"  # 12 s if they had


def test_bad_inputs_get_4xx_naming_the_field_and_serving_goes_on() -> None:
    settings = ServerSettings(max_batch=4, max_wait_ms=1, queue=16, max_side=128, max_image_bytes=20_000)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8))
    good = encode_image(img(1))
    with RewardServer(FakeModel(), settings) as server:
        def post(body: object) -> httpx.Response:
            return httpx.post(server.url + "/score", json=body, timeout=30)

        cases = [
            ({"prompts": ["a"], "images": ["%%% not base64"]}, 400, "images[0]", "base64"),
            ({"prompts": ["a", "b"], "images": [good, b64(b"not an image at all")]}, 400, "images[1]", "decodable"),
            ({"prompts": ["a"], "images": [encode_image(img(2, side=200))]}, 413, "images[0]", "max_side"),
            ({"prompts": ["a"], "images": [encode_image(noise)]}, 413, "images[0]", "larger than"),
            ({"prompts": ["ok", "  "], "images": [good, good]}, 400, "prompts[1]", "empty"),
            ({"prompts": ["a", "b"], "images": [good]}, 400, "images", "2 prompts but 1 images"),
            ({"prompts": [], "images": []}, 400, "prompts", "empty batch"),
        ]
        for body, status, field, words in cases:
            r = post(body)
            assert r.status_code == status, (field, r.text)
            assert r.json()["field"] == field and words in r.json()["error"], r.text
        missing = post({"images": [good]})
        assert missing.status_code == 422 and ["body", "prompts"] in [e["loc"] for e in missing.json()["detail"]]
        wrong_type = post({"prompts": "a", "images": [good]})
        assert wrong_type.status_code == 422 and "prompts" in wrong_type.text
        not_json = httpx.post(server.url + "/score", content=b"{oops", headers={"content-type": "application/json"})
        assert not_json.status_code == 422
        ok = post({"prompts": ["still here"], "images": [good], "metadata": [{"scene": "{}"}]})  # rl.rewards sends it
        assert ok.status_code == 200 and ok.json()["mu"] == [pytest.approx(FakeModel.expected("still here", img(1)))]
        assert httpx.get(server.url + "/health").json()["status"] == "ok"
        schema = httpx.get(server.url + "/openapi.json").json()
        assert {"/score", "/health"} <= set(schema["paths"]) and "ScoreRequest" in schema["components"]["schemas"]


def test_queue_full_answers_503_then_recovers() -> None:
    gate = threading.Event()
    model = FakeModel(gate=gate)
    with RewardServer(model, ServerSettings(max_batch=2, max_wait_ms=0, queue=4)) as server:
        def post(n: int, tag: str) -> httpx.Response:
            return httpx.post(server.url + "/score", timeout=60,
                              json={"prompts": [f"{tag}{k}" for k in range(n)], "images": [encode_image(img(k)) for k in range(n)]})

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, 2, "a")         # taken by the worker, which then blocks on the gate
            assert model.entered.wait(30)
            second = pool.submit(post, 4, "b")        # fills the queue (4 images waiting)
            deadline = time.monotonic() + 30
            while httpx.get(server.url + "/health").json()["queued"] < 4:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            full = post(1, "c")
            assert full.status_code == 503 and full.json()["field"] == "queue" and full.headers["retry-after"] == "1"
            gate.set()
            assert first.result().status_code == 200 and second.result().status_code == 200
            assert second.result().json()["mu"] == [pytest.approx(FakeModel.expected(f"b{k}", img(k))) for k in range(4)]
        assert post(1, "c").status_code == 200


# ---- the real model, the client, spatialscore.score, the CLI ---------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spatialt2i.reward.model import LoraSettings, SpatialScore

    root = tmp_path_factory.mktemp("model")
    m = SpatialScore.from_backbone(tiny_backbone(root / "tiny"), lora=LoraSettings(r=4, alpha=8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m.save_pretrained(root / "ckpt")


def test_real_model_over_http_matches_in_process(ckpt: Path) -> None:
    from spatialt2i import spatialscore
    from spatialt2i.reward.model import SpatialScore

    prompts = ["a red circle left of a blue square", "a green star", "two shapes", "a pink diamond at the top"]
    images = [img(i, 64) for i in range(4)]
    spatialscore.clear_cache()
    local = spatialscore.score(prompts, images, model=ckpt)
    assert spatialscore.load(ckpt) is spatialscore.load(str(ckpt))        # loaded once, cached
    assert isinstance(spatialscore.load(ckpt), SpatialScore)
    assert set(local) == {"reward", "mu", "sigma"} and local["mu"].std() > 0
    with RewardServer(spatialscore.load(ckpt), ServerSettings(max_batch=4, max_wait_ms=20)) as server:
        with RewardClient(server.url) as client:
            remote = client.score(prompts, [torch.from_numpy(np.array(i)).permute(2, 0, 1) / 255 for i in images])
        over_url = spatialscore.score(prompts, images, model=server.url)
    for k in ("reward", "mu", "sigma"):
        torch.testing.assert_close(remote[k], local[k], atol=2e-5, rtol=0)
        torch.testing.assert_close(over_url[k], local[k], atol=2e-5, rtol=0)
    spatialscore.clear_cache()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Flaky(http.server.BaseHTTPRequestHandler):
    """503 twice, then a valid answer; or garbage when the path says so."""

    hits = 0

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["content-length"]))
        type(self).hits += 1
        if self.path.startswith("/garbage"):
            body, status = b"hello, not json", 200
        elif self.path.startswith("/short"):
            body, status = json.dumps({"reward": [1.0], "mu": [1.0], "sigma": [1.0]}).encode(), 200
        elif type(self).hits <= 2:
            body, status = b'{"field": "queue", "error": "full"}', 503
        else:
            body, status = json.dumps({"reward": [0.5, 0.25], "mu": [0.5, 0.25], "sigma": [1.0, 1.0]}).encode(), 200
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_client_retries_and_clear_errors() -> None:
    with pytest.raises(EndpointError, match="unreachable"):
        RewardClient(f"http://127.0.0.1:{_free_port()}", retries=1, backoff=0.01).score(["a"], [img(0)])
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        out = RewardClient(base, retries=3, backoff=0.01).score(["a", "b"], [img(0), img(1)])
        assert out["mu"].tolist() == [0.5, 0.25] and _Flaky.hits == 3        # two 503s retried
        with pytest.raises(EndpointError, match="not JSON"):
            RewardClient(base + "/garbage", retries=0).score(["a"], [img(0)])
        with pytest.raises(EndpointError, match="without 2 numbers"):
            RewardClient(base + "/short", retries=0).score(["a", "b"], [img(0), img(1)])
        with pytest.raises(ValueError, match=r"images\[0\]"):
            RewardClient(base).score(["a"], ["not an image"])
    finally:
        srv.shutdown()


def test_serve_cli(ckpt: Path, tmp_path: Path) -> None:
    missing = subprocess.run([sys.executable, "-m", "spatialt2i.cli", "serve", "reward", "--model",
                              str(tmp_path / "no-such-ckpt")], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no-such-ckpt" in missing.stderr and "Traceback" not in missing.stderr
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "spatialt2i.cli", "serve", "reward", "--model", str(ckpt),
                             "--port", str(port), "--max-batch", "4", "--max-wait-ms", "5", "--queue", "8"],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with RewardClient(f"http://127.0.0.1:{port}", retries=60, backoff=0.5, max_backoff=0.5) as client:
            out = client.score(["a red circle"], [img(3, 64)])
            assert out["mu"].shape == (1,)
            health = client.health()
            assert health["max_batch"] == 4 and health["queue"] == 8
    finally:
        proc.terminate()
        proc.wait(timeout=30)
