"""A local OpenAI-compatible chat-completions server for tests (LLM prompt sources, VLM judges).

FastAPI + uvicorn in a background thread on 127.0.0.1 and a free port::

    def handler(messages):                 # the request's "messages", as sent
        return '{"prompt": ...}'           # -> the assistant's content
        # or 503                           # -> that HTTP status, OpenAI-style error body
        # or (429, "slow down")            # -> status with a message

    with ChatServer(handler) as server:    # server.url == "http://127.0.0.1:PORT/v1"
        ...
        server.requests                    # every JSON body received, in order

Message content may be a string or a list of content parts (``{"type": "text", "text": ...}``,
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``); ``message_text``
and ``message_images`` read them. A handler that raises gives HTTP 500.
"""

from __future__ import annotations

import base64
import io
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

Reply = Union[str, int, tuple[int, str]]
Handler = Callable[[list[dict[str, Any]]], Reply]


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: its string content, or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content
                         if isinstance(p, dict) and p.get("type") == "text")
    return ""


def decode_image_url(url: str) -> Image.Image:
    """A PIL image from a ``data:image/...;base64,...`` URL (the only kind a local test serves)."""
    if not url.startswith("data:") or ";base64," not in url:
        raise ValueError(f"not a base64 data URL: {url[:40]!r}")
    return Image.open(io.BytesIO(base64.b64decode(url.split(";base64,", 1)[1]))).convert("RGB")


def message_images(message: dict[str, Any]) -> list[Image.Image]:
    """The images of a message's ``image_url`` content parts, decoded."""
    content = message.get("content")
    if not isinstance(content, list):
        return []
    out = []
    for p in content:
        if isinstance(p, dict) and p.get("type") == "image_url":
            ref = p.get("image_url")
            out.append(decode_image_url(ref["url"] if isinstance(ref, dict) else str(ref)))
    return out


def _error(status: int, message: str) -> JSONResponse:
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def build_app(handler: Handler, model: str = "test-model",
              requests: list[dict[str, Any]] | None = None) -> FastAPI:
    """The FastAPI app: ``POST /v1/chat/completions`` answered by ``handler``; ``GET /v1/models``."""
    app = FastAPI()
    log = requests if requests is not None else []

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "local"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty list")
        log.append(body)
        try:
            reply = handler(body["messages"])
        except Exception as e:  # the handler's bug becomes the endpoint's 500
            return _error(500, f"handler raised {type(e).__name__}: {e}")
        if isinstance(reply, tuple):
            return _error(int(reply[0]), str(reply[1]))
        if isinstance(reply, int):
            return _error(reply, f"simulated HTTP {reply}")
        content = str(reply)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": len(content.split()),
                      "total_tokens": len(content.split())},
        }

    return app


class ChatServer:
    """Serve ``build_app(handler)`` on 127.0.0.1 and a free port in a background thread."""

    def __init__(self, handler: Handler, model: str = "test-model", host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.model = model
        self.host = host
        self.requests: list[dict[str, Any]] = []
        self.port: int | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, as an OpenAI client wants it (``.../v1``)."""
        if self.port is None:
            raise RuntimeError("ChatServer is not started")
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 20.0) -> ChatServer:
        from ..threaded_server import start_in_thread

        app = build_app(self.handler, self.model, self.requests)
        self._server, self._thread, self.port = start_in_thread(app, self.host, 0, "chat-server", timeout,
                                                                lifespan="off")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
