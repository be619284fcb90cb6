"""``spatialt2i serve reward``: SpatialScore over HTTP with dynamic batching.

API (FastAPI; the schema is at ``/openapi.json``, docs at ``/docs``)::

    POST /score   {"prompts": [str, ...], "images": [base64 PNG/JPEG, ...]}
               -> {"reward": [float], "mu": [float], "sigma": [float]}
    GET  /health  -> {"status": "ok", "model": ..., "queued": n, "batches": n, "images": n,
                      "model_seconds": s, ...}  (seconds spent scoring: utilisation = its growth / wall time)

Dynamic batching: every image of every request joins one queue. A single worker thread takes the
first waiting image, waits up to ``max_wait_ms`` for more (skipped for a lone client: last batch of
one, nothing queued or being decoded), and scores up to ``max_batch`` images in one model call; each request gets exactly its own scores back (per-image futures). The queue is
bounded (``queue`` images): a request that would overflow it is answered 503 with Retry-After at
once, so a burst cannot grow memory or latency without limit.

Bad input never reaches the model and never stops the server: a missing or empty prompt, a
mismatched number of prompts and images, an empty batch, or an image that is not valid base64 / not
a decodable image gets 400 naming the field (``prompts[2]``, ``images[0]``); an image over
``max_image_bytes`` or ``max_side`` gets 413 naming the field. Validation errors from the schema
(e.g. ``prompts`` missing) are FastAPI's 422 whose ``loc`` names the field.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


class ScoreRequest(BaseModel):
    prompts: list[str] = Field(..., description="one text prompt per image")
    images: list[str] = Field(..., description="base64-encoded PNG or JPEG images, one per prompt")


class ScoreResponse(BaseModel):
    reward: list[float]
    mu: list[float]
    sigma: list[float]


class ErrorBody(BaseModel):
    field: str
    error: str


@dataclass
class ServerSettings:
    max_batch: int = 32            # images per model call
    max_wait_ms: float = 10.0      # how long the first image of a batch waits for company
    queue: int = 256               # images waiting (not yet in a batch) before 503
    max_image_bytes: int = 16 * 2 ** 20
    max_side: int = 4096
    max_images_per_request: int = 256

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue < 1:
            raise ValueError(f"max_batch and queue must be >= 1 (got {self.max_batch}, {self.queue})")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0 (got {self.max_wait_ms})")


class InputError(ValueError):
    """Bad request input; ``field`` names it and ``status`` is the HTTP code."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


class QueueFull(RuntimeError):
    pass


def decode_b64_image(data: Any, field: str, settings: ServerSettings) -> Image.Image:
    """A PIL RGB image from a base64 string (a ``data:image/...;base64,`` prefix is allowed)."""
    if not isinstance(data, str) or not data:
        raise InputError(field, "expected a non-empty base64 string")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    if len(data) * 3 // 4 > settings.max_image_bytes:
        raise InputError(field, f"image is larger than {settings.max_image_bytes} bytes", 413)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "not valid base64") from None
    try:
        img = Image.open(io.BytesIO(raw))
        w, h = img.size
        if max(w, h) > settings.max_side:
            raise InputError(field, f"image is {w}x{h}, larger than max_side {settings.max_side}", 413)
        img.load()
        return img.convert("RGB")
    except InputError:
        raise
    except Exception as e:  # PIL raises many types for corrupt data (and DecompressionBombError)
        raise InputError(field, f"not a decodable image ({type(e).__name__})") from None


def validate_request(prompts: Any, images: Any, settings: ServerSettings) -> tuple[list[str], list[Image.Image]]:
    if not isinstance(prompts, list):
        raise InputError("prompts", "expected a list of strings")
    if not isinstance(images, list):
        raise InputError("images", "expected a list of base64 strings")
    if len(prompts) != len(images):
        raise InputError("images", f"{len(prompts)} prompts but {len(images)} images (one image per prompt)")
    if not prompts:
        raise InputError("prompts", "empty batch")
    if len(prompts) > settings.max_images_per_request:
        raise InputError("images", f"{len(images)} images; at most {settings.max_images_per_request} per request", 413)
    from .prompt import check_prompt

    for i, p in enumerate(prompts):
        try:
            check_prompt(p, i)
        except ValueError as e:
            raise InputError(f"prompts[{i}]", str(e).split(": ", 1)[-1]) from None
    return list(prompts), [decode_b64_image(d, f"images[{i}]", settings) for i, d in enumerate(images)]


class Batcher:
    """One worker thread that scores queued (prompt, image) items in batches of up to ``max_batch``."""

    def __init__(self, score_fn: Any, settings: ServerSettings) -> None:
        self.score_fn, self.settings = score_fn, settings
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0
        self._arriving = 0
        self.last_batch = 0
        self.batches = 0
        self.images = 0
        self.largest_batch = 0
        self.model_seconds = 0.0  # wall time inside score_fn: busy share = its growth / elapsed time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reward-batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, prompts: list[str], images: list[Image.Image], arrived: bool = False) -> list[Future]:
        """Futures of ``{"mu", "sigma"}`` per item; ``QueueFull`` if they do not fit in the queue.

        ``arrived``: this request was counted by :meth:`arriving`; the count drops under the same lock
        that queues its items, so the batcher never sees the items and the request as still arriving."""
        with self._lock:
            if arrived:
                self._arriving -= 1
            if self._pending + len(prompts) > self.settings.queue:
                raise QueueFull(f"queue full ({self._pending} of {self.settings.queue} images waiting)")
            self._pending += len(prompts)
            futs = [Future() for _ in prompts]
            for item in zip(prompts, images, futs):
                self._q.put(item)
        return futs

    def arriving(self, delta: int) -> None:
        """Count requests that are being read/decoded and will submit soon (the batch waits only for those)."""
        with self._lock:
            self._arriving += delta

    def _take(self) -> list[tuple[str, Image.Image, Future]]:
        """The next batch: the first queued item, plus whatever is queued or arrives within ``max_wait_ms``.

        The wait is skipped when the last batch was a single image and nothing is queued or arriving,
        so a lone client does not pay ``max_wait_ms`` per request; under load the batch waits the
        full ``max_wait_ms`` to fill."""
        first = self._q.get()
        if first is None:
            return []
        items = [first]
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        while len(items) < self.settings.max_batch:
            left = deadline - time.monotonic()
            try:
                if self.last_batch <= 1 and self._q.empty() and self._arriving == 0:
                    break  # no sign of load: do not make a lone client wait
                nxt = self._q.get(timeout=min(left, 0.002)) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                if left <= 0:
                    break
                continue
            if nxt is None:
                self._stop.set()
                break
            items.append(nxt)
        with self._lock:
            self._pending -= len(items)
        return items

    def _score(self, items: list[tuple[str, Image.Image, Future]]) -> None:
        try:
            out = self.score_fn([p for p, _, _ in items], [im for _, im, _ in items])
            mu, sigma = out["mu"].tolist(), out["sigma"].tolist()
            for k, (_, _, fut) in enumerate(items):
                fut.set_result({"mu": mu[k], "sigma": sigma[k]})
        except Exception as e:  # keep serving; a batch that fails is retried item by item
            if len(items) == 1:
                log.exception("scoring failed")
                items[0][2].set_exception(e)
                return
            for it in items:
                self._score([it])

    def _run(self) -> None:
        while not self._stop.is_set():
            items = self._take()
            if not items:
                break
            self.batches += 1
            self.images += len(items)
            self.largest_batch = max(self.largest_batch, len(items))
            self.last_batch = len(items)
            t0 = time.perf_counter()
            self._score(items)
            self.model_seconds += time.perf_counter() - t0

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=30)


def build_app(model: Any, settings: ServerSettings | None = None, model_name: str = "spatialscore") -> Any:
    """The FastAPI app around a loaded SpatialScore (anything with ``score(prompts, images)``)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    settings = settings or ServerSettings()
    batcher = Batcher(lambda p, i: model.score(p, i), settings)

    app = FastAPI(title="SpatialScore reward server", version="1",
                  description="Spatial reward of (prompt, image) pairs; dynamic batching across requests.")
    app.state.batcher = batcher
    app.state.settings = settings

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "queued": batcher.pending, "queue": settings.queue,
                "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms, "batches": batcher.batches,
                "images": batcher.images, "largest_batch": batcher.largest_batch,
                "model_seconds": round(batcher.model_seconds, 3)}

    @app.post("/score", response_model=ScoreResponse,
              responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 503: {"model": ErrorBody}})
    async def score(req: ScoreRequest) -> Any:
        batcher.arriving(1)
        try:
            # decoding large images off the event loop keeps other requests flowing
            prompts, images = await asyncio.to_thread(validate_request, req.prompts, req.images, settings)
        except BaseException as e:
            batcher.arriving(-1)
            if isinstance(e, InputError):
                return JSONResponse({"field": e.field, "error": e.message}, status_code=e.status)
            raise
        try:
            futs = batcher.submit(prompts, images, arrived=True)
        except QueueFull as e:
            return JSONResponse({"field": "queue", "error": str(e)}, status_code=503, headers={"Retry-After": "1"})
        try:
            res = await asyncio.gather(*(asyncio.wrap_future(f) for f in futs))
        except Exception as e:
            return JSONResponse({"field": "model", "error": f"scoring failed: {type(e).__name__}: {e}"}, status_code=500)
        mu = [r["mu"] for r in res]
        return {"reward": mu, "mu": mu, "sigma": [r["sigma"] for r in res]}

    return app


def load_model(path: str, device: str | None = None) -> Any:
    from .trainer import load_scorer

    return load_scorer(path, device)


class RewardServer:
    """Serve :func:`build_app` on ``host`` and a free (or given) port in a background thread (tests, benchmarks)."""

    def __init__(self, model: Any, settings: ServerSettings | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.model, self.settings, self.host, self.port = model, settings or ServerSettings(), host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.app: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "RewardServer":
        from ..threaded_server import start_in_thread

        self.app = build_app(self.model, self.settings)
        self._server, self._thread, self.port = start_in_thread(self.app, self.host, self.port, "reward-server",
                                                                timeout, backlog=2048)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.app is not None:
            self.app.state.batcher.close()
        self._server = self._thread = None

    def __enter__(self) -> "RewardServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(model_path: str, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000,
          device: str | None = None, access_log: bool = False) -> None:
    """Load the checkpoint once and serve until interrupted (``spatialt2i serve reward``).

    The per-request access log is off by default: formatting it costs about as much as parsing a small
    request, and a reward server sees thousands per RL iteration."""
    import uvicorn

    model = load_model(model_path, device)
    log.info("serving %s on http://%s:%d (max_batch %d, max_wait %.1f ms, queue %d)", model_path, host, port,
             settings.max_batch, settings.max_wait_ms, settings.queue)
    print(f"SpatialScore {model_path} on http://{host}:{port}  (/score, /health, /docs)", flush=True)
    uvicorn.run(build_app(model, settings, model_name=str(model_path)), host=host, port=port, log_level="info",
                access_log=access_log, backlog=2048)
