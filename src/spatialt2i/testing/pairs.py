"""Small synthetic pair datasets for tests (no builder, no models): tiny PIL images and prompts
whose perturbations' ``before``/``after`` phrases occur in the two prompts."""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

from ..data.schema import image_cell, shard_name, write_shard

_COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (230, 200, 30)}
_SHAPES = ("circle", "square", "triangle")
_FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _image(a: tuple[str, str], b: tuple[str, str], rel: str, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(img)
    s = size // 4
    pos = {"left of": ((s, 2 * s), (3 * s, 2 * s)), "right of": ((3 * s, 2 * s), (s, 2 * s)),
           "above": ((2 * s, s), (2 * s, 3 * s)), "below": ((2 * s, 3 * s), (2 * s, s))}[rel]
    for (colour, shape), (x, y) in zip((a, b), pos):
        box = (x - s // 2, y - s // 2, x + s // 2, y + s // 2)
        fill = _COLOURS[colour]
        if shape == "circle":
            d.ellipse(box, fill=fill)
        elif shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(x, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return img


def make_rows(n: int, seed: int = 0, prefix: str = "pair", size: int = 32) -> list[dict]:
    """``n`` schema-complete rows; each perturbation flips one relation (``before`` in ``prompt``,
    ``after`` in ``perturbed_prompt``)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        objs = rng.sample([(c, s) for c in _COLOURS for s in _SHAPES], 3)
        rels = [rng.choice(list(_FLIP)) for _ in range(2)]
        phrases = [f"the {objs[j][0]} {objs[j][1]} is {rels[j]} the {objs[j + 1][0]} {objs[j + 1][1]}"
                   for j in range(2)]
        k = rng.randrange(2)
        flipped = phrases[k].replace(rels[k], _FLIP[rels[k]])
        perturbed = list(phrases)
        perturbed[k] = flipped
        prompt = "A tidy scene: " + "; ".join(phrases) + "."
        perturbed_prompt = "A tidy scene: " + "; ".join(perturbed) + "."
        rows.append({
            "id": f"{prefix}-{i:04d}",
            "prompt": prompt,
            "perturbed_prompt": perturbed_prompt,
            "chosen": image_cell(_image(objs[k], objs[k + 1], rels[k], size)),
            "rejected": image_cell(_image(objs[k], objs[k + 1], _FLIP[rels[k]], size)),
            "perturbations": [{"type": "flip", "before": phrases[k], "after": flipped}],
            "perturbation_kind": "flip",
            "n_perturbations": 1,
            "n_objects": 3,
            "n_relations": 2,
            "relation_kinds": [r.split()[0] for r in rels],
            "scene": None,
            "perturbed_scene": None,
            "seed": seed * 100000 + i,
            "source": "testing/pairs",
            "verified": None,
        })
    return rows


def make_pair_dataset(root: str | os.PathLike, n_train: int = 6, n_test: int = 2, train_shards: int = 2,
                      seed: int = 0, size: int = 32) -> list[str]:
    """Write a pair dataset to ``root`` (``data/train-*``, ``data/test-*``, a README card); returns
    the pair ids in the order the review app lists them (shard files sorted by name)."""
    root = Path(root)
    rows = make_rows(n_train + n_test, seed=seed, size=size)
    train, test = rows[:n_train], rows[n_train:]
    for j in range(train_shards):
        write_shard(train[j::train_shards], root / "data" / shard_name("train", j, train_shards))
    if test:
        write_shard(test, root / "data" / shard_name("test", 0, 1))
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n# test pairs\n\nSynthetic pairs for tests.\n")
    ordered = test + [r for j in range(train_shards) for r in train[j::train_shards]]
    return [r["id"] for r in ordered]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReviewServer:
    """``spatialt2i review serve`` in a subprocess (real uvicorn on 127.0.0.1), for tests.

    ``start()`` waits until ``/api/info`` answers; ``kill()`` ends it with SIGKILL (nothing gets
    a chance to flush), ``stop()`` with SIGTERM; ``start()`` again restarts it on the same port.
    """

    def __init__(self, dataset: str | os.PathLike, *extra: str, port: int | None = None,
                 log: str | os.PathLike | None = None) -> None:
        self.dataset = str(dataset)
        self.extra = list(extra)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log else Path(self.dataset).parent / f"review-server-{self.port}.log"
        self.proc = None

    def start(self, timeout: float = 60.0) -> "ReviewServer":
        import subprocess
        import sys
        import time
        import urllib.request

        cmd = [sys.executable, "-m", "spatialt2i.review.cli", "serve", self.dataset, "--port", str(self.port),
               "--log-level", "warning", *self.extra]
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        fh.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"review server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/api/info", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"review server did not answer within {timeout}s:\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> "ReviewServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
