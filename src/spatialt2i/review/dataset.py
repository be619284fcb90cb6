"""Read access to a pair dataset for review: an index of pair ids, rows by position, images by
pair id and side, and the spans of the perturbed relations in the two prompts."""

from __future__ import annotations

import difflib
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..data.schema import check_dataset, shard_files
from ..errors import DatasetError

IMAGE_COLUMNS = ("chosen", "rejected")
SIDES = IMAGE_COLUMNS
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
          (b"GIF8", "image/gif"), (b"RIFF", "image/webp"))


class PairIndex:
    """All pair ids of a dataset in a fixed order (shard order, then row order), and row access.

    Only the ``id`` column is read up front; other columns are read one row group at a time and
    kept in a small LRU cache, so a large dataset never sits in memory.
    """

    def __init__(self, root: str | Path, cache_row_groups: int = 8) -> None:
        self.root = Path(root).resolve()
        check_dataset(self.root)
        self.files = shard_files(self.root)
        self.ids: list[str] = []
        self.split: list[str] = []
        self._loc: list[tuple[int, int, int]] = []   # (file index, row group, row in group)
        self.position: dict[str, int] = {}
        self.columns: list[str] = []
        for fi, f in enumerate(self.files):
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            self.columns = self.columns or names
            split = f.name.split("-", 1)[0]
            for rg in range(pf.num_row_groups):
                ids = pf.read_row_group(rg, columns=["id"]).column("id").to_pylist()
                for j, pid in enumerate(ids):
                    where = f"{f}: row group {rg} row {j}"
                    if pid is None or not isinstance(pid, str) or not pid:
                        raise DatasetError(f"{where}: empty pair id")
                    if pid in self.position:
                        raise DatasetError(f"{where}: duplicate pair id {pid!r}")
                    self.position[pid] = len(self.ids)
                    self.ids.append(pid)
                    self.split.append(split)
                    self._loc.append((fi, rg, j))
        self._cache: OrderedDict[tuple[int, int, tuple[str, ...]], list[dict[str, Any]]] = OrderedDict()
        self._cache_size = cache_row_groups
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, pair_id: object) -> bool:
        return pair_id in self.position

    def _group(self, fi: int, rg: int, columns: tuple[str, ...]) -> list[dict[str, Any]]:
        key = (fi, rg, columns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        rows = pq.ParquetFile(self.files[fi]).read_row_group(rg, columns=list(columns)).to_pylist()
        with self._lock:
            self._cache[key] = rows
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return rows

    def row(self, pair_id: str, columns: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The row of ``pair_id`` (``KeyError`` if unknown); by default every non-image column."""
        i = self.position[pair_id]
        fi, rg, j = self._loc[i]
        cols = columns or tuple(c for c in self.columns if c not in IMAGE_COLUMNS)
        return self._group(fi, rg, cols)[j]

    def image(self, pair_id: str, side: str) -> tuple[bytes, str]:
        """(bytes, media type) of the ``chosen`` or ``rejected`` image of ``pair_id``.

        ``KeyError`` for an unknown id; ``ValueError`` for a bad side; ``DatasetError`` when the
        cell holds no usable image. A cell that carries only a ``path`` is served only if that
        path lies inside the dataset folder.
        """
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        cell = self.row(pair_id, (side,))[side]
        where = f"pair {pair_id!r} {side}"
        data = None
        if isinstance(cell, dict):
            data = cell.get("bytes")
            if not data and cell.get("path"):
                p = (self.root / cell["path"]).resolve()
                if not p.is_relative_to(self.root) or not p.is_file():
                    raise DatasetError(f"{where}: image path {cell['path']!r} is not a file inside the dataset")
                data = p.read_bytes()
        elif isinstance(cell, (bytes, bytearray)):
            data = bytes(cell)
        if not data:
            raise DatasetError(f"{where}: no image")
        for magic, mt in _MAGIC:
            if data.startswith(magic):
                return data, mt
        raise DatasetError(f"{where}: not a PNG/JPEG/GIF/WebP image")

    def pair(self, pair_id: str) -> dict[str, Any]:
        """JSON-ready view of a pair: its non-image fields plus highlight spans."""
        row = dict(self.row(pair_id))
        prompt = row.get("prompt") or ""
        perturbed = row.get("perturbed_prompt") or ""
        perts = row.get("perturbations") or []
        hp, missing_p = locate(prompt, [p.get("before") or "" for p in perts], perturbed)
        hq, missing_q = locate(perturbed, [p.get("after") or "" for p in perts], prompt)
        row["split"] = self.split[self.position[pair_id]]
        row["highlights"] = {"prompt": hp, "perturbed_prompt": hq,
                             "unlocated_before": missing_p, "unlocated_after": missing_q}
        return row


def _changed_regions(text: str, other: str) -> list[tuple[int, int]]:
    """Character ranges of ``text`` whose words differ from ``other`` (word-level diff)."""
    toks = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    words = [text[a:b] for a, b in toks]
    owords = re.findall(r"\S+", other)
    out = []
    sm = difflib.SequenceMatcher(a=words, b=owords, autojunk=False)
    for tag, i1, i2, _, _ in sm.get_opcodes():
        if tag != "equal" and i2 > i1:
            out.append((toks[i1][0], toks[i2 - 1][1]))
    return out


def locate(text: str, phrases: list[str], other: str = "") -> tuple[list[list[int]], list[int]]:
    """Spans ``[start, end, k]`` of each phrase ``k`` in ``text`` and the indices of phrases not found.

    Matching is case-insensitive. Where a phrase occurs several times, the occurrence overlapping
    a region that differs from ``other`` (the other prompt of the pair) is preferred, then the
    first one not overlapping an earlier span. Spans are sorted and never overlap.
    """
    low = text.lower()
    changed = _changed_regions(text, other) if other else []
    spans: list[list[int]] = []
    missing: list[int] = []
    for k, phrase in enumerate(phrases):
        ph = phrase.strip().lower()
        if not ph:
            missing.append(k)
            continue
        occ = [(m.start(), m.start() + len(ph)) for m in re.finditer(re.escape(ph), low)]
        occ = [(a, b) for a, b in occ if all(b <= s[0] or a >= s[1] for s in spans)]
        if not occ:
            missing.append(k)
            continue
        best = next(((a, b) for a, b in occ if any(a < cb and ca < b for ca, cb in changed)), occ[0])
        spans.append([best[0], best[1], k])
    spans.sort()
    return spans, missing
