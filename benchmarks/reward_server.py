"""Reward-server throughput: dynamic batching vs one request at a time, at 1, 8 and 32 concurrent clients.

    python benchmarks/reward_server.py [--model CKPT] [--requests 128] [--threads 1] [--json]

Without ``--model`` a SpatialScore on the world's tiny backbone is used (the shipped
``assets/world-vlm-small`` if present, else a random-init tiny one built in a temp folder; throughput
does not depend on the weights). Each client sends one (prompt, image) per request, closed loop, over
real sockets (aiohttp clients in this process: ``pip install -e .[bench]``). Two ``spatialt2i serve
reward`` processes (``--threads`` torch threads each) run one after the other on the same checkpoint:
"batched" (max_batch 32, max_wait 10 ms) and "one at a time" (max_batch 1). Prints images/s per mode
and concurrency, the mean batch, the share of wall time the model was busy (from ``/health``) and the
ratio. Checks every answer: no request lost, and every request answered with its own score (equal to
the in-process score of that pair within 1e-4, and closer to it than to any other request's score);
exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image, ImageDraw


def make_checkpoint(path: str | None, tmp: Path) -> tuple[str, str]:
    """(checkpoint folder, description): ``path``, or a tiny-backbone SpatialScore saved under ``tmp``."""
    from spatialt2i.reward.model import LoraSettings, SpatialScore
    from spatialt2i.reward.tiny import init_tiny
    from spatialt2i.reward.train_config import ASSETS

    if path:
        return path, path
    asset = ASSETS / "world-vlm-small"
    base = asset if (asset / "config.json").is_file() else init_tiny(tmp / "tiny", "small")
    m = SpatialScore.from_backbone(base, lora=LoraSettings(r=8, alpha=16))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return str(m.save_pretrained(tmp / "ckpt")), f"{base} + random LoRA/head"


def make_requests(n: int, side: int = 64) -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(0)
    colours = ["red", "blue", "green", "yellow", "pink", "orange", "black", "purple"]
    out = []
    for i in range(n):
        img = Image.new("RGB", (side, side), (255, 255, 255))
        d = ImageDraw.Draw(img)
        for _ in range(3):
            x, y = rng.integers(4, side - 16, 2)
            d.rectangle([x, y, x + 12, y + 12], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        a, b = rng.choice(colours, 2, replace=False)
        out.append((f"request {i}: the {a} square is to the left of the {b} square", img))
    return out


def run_level(url: str, reqs: list[tuple[str, str]], clients: int) -> tuple[float, dict[int, float | None]]:
    """Images/s and each request's mu (None if lost) for ``clients`` closed-loop clients.

    The clients are aiohttp sessions with one connection each, in this process: on a 2-core machine
    the load generator shares the CPU with the server it measures, and aiohttp costs ~0.4 ms of CPU
    per request here against 2.7-4.6 ms for httpx (whose shared pool also slows as clients grow)."""
    import aiohttp

    answers: dict[int, float | None] = {}
    bodies = [json.dumps({"prompts": [p], "images": [im]}).encode() for p, im in reqs]  # encoded once, up front
    headers = {"content-type": "application/json"}

    async def client(k: int) -> None:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) as http:
            for i in range(k, len(reqs), clients):
                try:
                    async with http.post(url + "/score", data=bodies[i], headers=headers) as r:
                        answers[i] = (await r.json())["mu"][0] if r.status == 200 else None
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, IndexError):
                    answers[i] = None

    async def all_clients() -> None:
        await asyncio.gather(*(client(k) for k in range(clients)))

    t0 = time.perf_counter()
    asyncio.run(all_clients())
    return len(reqs) / (time.perf_counter() - t0), answers


def start_server(ckpt: str, settings: dict[str, float], threads: int) -> tuple[subprocess.Popen, str]:
    """``spatialt2i serve reward`` in its own process (its own GIL, like a deployment); waits for /health."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "spatialt2i.cli", "serve", "reward", "--model", ckpt, "--port", str(port),
           "--device", "cpu", "--max-batch", str(settings["max_batch"]), "--max-wait-ms", str(settings["max_wait_ms"]),
           "--queue", "4096"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"reward server did not start: {' '.join(cmd)}")
        time.sleep(0.2)


def check(answers: dict[int, float | None], expected: np.ndarray) -> tuple[int, int]:
    """(lost, wrong): no answer; or an answer not matching its own request's score (or nearer another's)."""
    lost = sum(1 for i in range(len(expected)) if answers.get(i) is None)
    wrong = 0
    for i, v in answers.items():
        if v is None:
            continue
        own = abs(v - expected[i])
        others = np.abs(np.delete(expected, i) - v)
        if own > 1e-4 or (others.size and others.min() < own):
            wrong += 1
    return lost, wrong


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="SpatialScore checkpoint (default: tiny world backbone)")
    ap.add_argument("--requests", type=int, default=128, help="requests per concurrency level")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2, help="the servers' torch CPU threads (default: this machine's 2 cores)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from spatialt2i.reward.client import encode_image

    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        from spatialt2i.reward.model import SpatialScore

        ckpt, name = make_checkpoint(args.model, Path(tmp))
        model = SpatialScore.from_pretrained(ckpt, device="cpu").eval()
        pairs = make_requests(args.requests)
        expected = np.array([model.score([p], [im])["mu"].item() for p, im in pairs])  # one by one, in process
        del model
        reqs = [(p, encode_image(im)) for p, im in pairs]
        modes = {"batched": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms},
                 "one-at-a-time": {"max_batch": 1, "max_wait_ms": 0.0}}
        results: dict[str, dict[int, dict[str, float]]] = {}
        ok = True
        for mode, settings in modes.items():
            results[mode] = {}
            proc, url = start_server(ckpt, settings, args.threads)
            try:
                run_level(url, reqs[:8], 4)  # warm-up
                for c in levels:
                    h0 = httpx.get(url + "/health").json()
                    t0 = time.perf_counter()
                    ips, answers = run_level(url, reqs, c)
                    wall = time.perf_counter() - t0
                    h1 = httpx.get(url + "/health").json()
                    lost, wrong = check(answers, expected)
                    ok &= lost == 0 and wrong == 0
                    mean_batch = (h1["images"] - h0["images"]) / max(1, h1["batches"] - h0["batches"])
                    busy = (h1["model_seconds"] - h0["model_seconds"]) / wall
                    results[mode][c] = {"images_per_s": ips, "lost": lost, "wrong": wrong, "mean_batch": mean_batch,
                                        "model_busy": busy}
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    ratios = {c: results["batched"][c]["images_per_s"] / results["one-at-a-time"][c]["images_per_s"] for c in levels}
    if args.json:
        print(json.dumps({"model": name, "requests": args.requests, "threads": args.threads, "results": results,
                          "ratio": ratios, "ok": ok}, indent=2))
    else:
        print(f"model: {name}; {args.requests} requests of 1 image per level; torch threads {args.threads}")
        print(f"{'clients':>8} {'batched img/s':>14} {'mean batch':>11} {'model busy':>11} {'single img/s':>13} "
              f"{'model busy':>11} {'ratio':>7} {'lost':>5} {'wrong':>6}")
        for c in levels:
            b, s = results["batched"][c], results["one-at-a-time"][c]
            print(f"{c:>8} {b['images_per_s']:>14.1f} {b['mean_batch']:>11.1f} {b['model_busy']:>11.0%} "
                  f"{s['images_per_s']:>13.1f} {s['model_busy']:>11.0%} {ratios[c]:>6.2f}x "
                  f"{b['lost'] + s['lost']:>5} {b['wrong'] + s['wrong']:>6}")
        print("all requests answered with their own score" if ok else "FAILED: lost or mixed-up answers")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
