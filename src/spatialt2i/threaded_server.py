"""Run an ASGI app under uvicorn in a background thread on a bound socket (port 0 = any free one)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


def start_in_thread(app: Any, host: str, port: int, name: str, timeout: float = 30.0,
                    **config: Any) -> tuple[Any, threading.Thread, int]:
    """Start ``app``; return (uvicorn server, thread, bound port) once it accepts connections."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"{name}-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=10)
            raise RuntimeError(f"{name} on {host}:{port} did not start")
        time.sleep(0.01)
    return server, thread, port
