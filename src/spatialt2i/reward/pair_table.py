"""The reward trainer's view of a pair dataset: one split as an indexable table, and a resumable step order.

:class:`PairTable` keeps a split's rows as a pyarrow table (images stay encoded until a batch decodes
them); :class:`StepOrder` says which rows optimizer step ``s`` uses, as a pure function of the seed and
``s``, so a resumed or multi-process run draws exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..data.schema import check_dataset, shard_files
from ..errors import DatasetError
from .collate import COLUMNS, NEEDED


class PairTable:
    """One split of a pair dataset held as a pyarrow table (images stay encoded); rows by index."""

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        check_dataset(root, NEEDED)
        files = shard_files(root, split)
        if not files:
            raise DatasetError(f"{root}: no '{split}' split (no data/{split}-*.parquet)")
        names = set(pq.read_schema(files[0]).names)
        self.columns = [c for c in COLUMNS if c in names]
        self.table = pa.concat_tables([pq.read_table(f, columns=self.columns) for f in files])
        self.root, self.split = str(root), split
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    def rows(self, indices: list[int] | np.ndarray) -> list[dict[str, Any]]:
        return self.table.take(list(map(int, indices))).to_pylist() if len(indices) else []

    def by_length(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """``indices`` ordered by prompt length, longest first (stable), so that micro-batches cut from
        them in order pad less. A step's summed gradient does not depend on the order of its rows."""
        if self._lengths is None:
            import pyarrow.compute as pc

            lengths = pc.fill_null(pc.utf8_length(self.table.column("prompt")), 0)  # a null prompt: skipped later
            self._lengths = lengths.to_numpy(zero_copy_only=False)
        idx = np.asarray(indices, dtype=np.int64)
        return idx[np.argsort(-self._lengths[idx], kind="stable")] if len(idx) else idx


class StepOrder:
    """The pair indices of optimizer step ``s`` (a pure function of seed and step)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1:
            raise DatasetError("train split: no rows")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def step(self, s: int) -> np.ndarray:
        pos = np.arange(s * self.batch_size, (s + 1) * self.batch_size)
        return np.array([self._perm(int(p // self.n))[p % self.n] for p in pos], dtype=np.int64)
