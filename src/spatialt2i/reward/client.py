"""HTTP client of the reward server, with the in-process reward interface the RL stage uses::

    reward = RewardClient("http://127.0.0.1:8000")
    out = reward.score(prompts, images)      # {"reward", "mu", "sigma"}: fp32 CPU tensors

Images may be PIL images or float tensors ``[3, H, W]`` in [0, 1] (a generator's output). Large
batches are sent in chunks of ``chunk`` images. Connection errors, timeouts and 503/5xx answers are
retried with exponential back-off (a numeric Retry-After is honoured); after the retries, or on a 4xx
(the server's message names the bad field) or an answer that is not the expected JSON, an
``EndpointError`` names the URL and the cause.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from typing import Any, Sequence

import httpx
import torch
from PIL import Image

from ..errors import EndpointError

log = logging.getLogger(__name__)


def to_pil(image: Any, where: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] in (1, 3):
        arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
    raise ValueError(f"{where}: expected a PIL image or a [3, H, W] tensor in [0, 1], got {type(image).__name__}")


def encode_image(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


class RewardClient:
    """``score(prompts, images) -> {"reward", "mu", "sigma"}`` from a ``serve reward`` endpoint."""

    def __init__(self, url: str, timeout: float = 120.0, retries: int = 5, backoff: float = 0.5,
                 max_backoff: float = 10.0, chunk: int = 64) -> None:
        self.url = url.rstrip("/")
        self.retries, self.backoff, self.max_backoff, self.chunk = retries, backoff, max_backoff, chunk
        self._http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        try:
            resp = self._http.get(self.url + "/health")
            resp.raise_for_status()
            return resp.json()
        except (httpx.HTTPError, ValueError) as e:
            raise EndpointError(f"reward server {self.url}: /health failed ({type(e).__name__}: {e})") from None

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        url = self.url + "/score"
        cause, retry_after = "no attempt made", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.max_backoff, max(retry_after, self.backoff * 2 ** (attempt - 1))))
            try:
                resp = self._http.post(url, json=body)
            except httpx.TransportError as e:
                cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                log.warning("reward server %s: %s (try %d/%d)", url, cause, attempt + 1, self.retries + 1)
                continue
            if resp.status_code == 503 or resp.status_code >= 500:
                cause = f"HTTP {resp.status_code} {resp.text[:200]}"
                try:
                    retry_after = float(resp.headers.get("retry-after", 0))
                except ValueError:
                    retry_after = 0.0
                continue
            if resp.status_code >= 400:
                raise EndpointError(f"reward server {url} refused the request: HTTP {resp.status_code} {resp.text[:300]}")
            try:
                return resp.json()
            except ValueError:
                raise EndpointError(f"reward server {url} answered with something that is not JSON: "
                                    f"{resp.text[:200]!r}") from None
        raise EndpointError(f"reward server {url} is unreachable or failing after {self.retries + 1} attempt(s): {cause}")

    def score(self, prompts: Sequence[str], images: Sequence[Any]) -> dict[str, torch.Tensor]:
        if len(prompts) != len(images):
            raise ValueError(f"prompts/images: {len(prompts)} prompts but {len(images)} images")
        if not prompts:
            raise ValueError("prompts: empty batch")
        enc = [encode_image(to_pil(im, f"images[{i}]")) for i, im in enumerate(images)]
        out: dict[str, list[float]] = {"reward": [], "mu": [], "sigma": []}
        for s in range(0, len(enc), self.chunk):
            n = len(enc[s:s + self.chunk])
            got = self._post({"prompts": list(prompts[s:s + self.chunk]), "images": enc[s:s + self.chunk]})
            for k in out:
                vals = got.get(k) if isinstance(got, dict) else None
                if not isinstance(vals, list) or len(vals) != n or not all(isinstance(v, (int, float)) for v in vals):
                    raise EndpointError(f"reward server {self.url}/score answered without {n} numbers in {k!r}: "
                                        f"{str(got)[:200]}")
                out[k].extend(float(v) for v in vals)
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}
