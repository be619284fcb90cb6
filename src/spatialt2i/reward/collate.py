"""Pair-dataset rows -> reward-model batches; bad rows are reported with their id and skipped.

A row is skipped (never silently used) when its prompt is missing or empty, when either image is
empty or cannot be decoded, or when a reviewer rejected the pair (``verified`` is false). Each skip
is logged as a warning naming the row id and the reason, passed to ``on_skip`` if given, and kept
in ``PairBatch.skipped``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from PIL import Image

from ..data.schema import check_dataset, decode_image, iter_rows, shard_files
from ..errors import DatasetError

log = logging.getLogger(__name__)

NEEDED = ("id", "prompt", "chosen", "rejected")
COLUMNS = ["id", "prompt", "chosen", "rejected", "n_perturbations", "perturbation_kind", "n_relations", "verified"]
SkipHandler = Callable[[str, str], None]


@dataclass
class SkippedRow:
    id: str
    reason: str


@dataclass
class PairBatch:
    """Decoded pairs: ``chosen[i]`` should outscore ``rejected[i]`` for ``prompts[i]``."""

    ids: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    chosen: list[Image.Image] = field(default_factory=list)
    rejected: list[Image.Image] = field(default_factory=list)
    n_perturbations: list[int | None] = field(default_factory=list)
    perturbation_kinds: list[str | None] = field(default_factory=list)
    n_relations: list[int | None] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def model_inputs(self) -> tuple[list[str], list[Image.Image]]:
        """Prompts and images for one forward pass: the chosen half first, then the rejected half."""
        return self.prompts + self.prompts, self.chosen + self.rejected


def decode_pair(row: dict[str, Any], skip_rejected: bool = True) -> tuple[str, Image.Image, Image.Image]:
    """(prompt, chosen, rejected) of a row; ``DatasetError`` naming the row id and field otherwise."""
    rid = row.get("id") or "<no id>"
    if skip_rejected and row.get("verified") is False:
        raise DatasetError(f"row {rid}: rejected by review (verified = false)")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DatasetError(f"row {rid}: field 'prompt' is missing or empty")
    chosen = decode_image(row.get("chosen"), f"row {rid}: field 'chosen'")
    rejected = decode_image(row.get("rejected"), f"row {rid}: field 'rejected'")
    return prompt, chosen, rejected


def collate_pairs(rows: Iterable[dict[str, Any]], on_skip: SkipHandler | None = None,
                  skip_rejected: bool = True) -> PairBatch:
    """Decode ``rows`` into a :class:`PairBatch`, skipping and reporting bad rows."""
    batch = PairBatch()
    for row in rows:
        rid = str(row.get("id") or "<no id>")
        try:
            prompt, chosen, rejected = decode_pair(row, skip_rejected)
        except DatasetError as e:
            batch.skipped.append(SkippedRow(rid, str(e)))
            log.warning("skipping %s", e)
            if on_skip is not None:
                on_skip(rid, str(e))
            continue
        batch.ids.append(rid)
        batch.prompts.append(prompt)
        batch.chosen.append(chosen)
        batch.rejected.append(rejected)
        batch.n_perturbations.append(row.get("n_perturbations"))
        batch.perturbation_kinds.append(row.get("perturbation_kind"))
        batch.n_relations.append(row.get("n_relations"))
    return batch


def iter_pair_batches(root: str | os.PathLike, split: str | None = "train", batch_size: int = 16,
                      on_skip: SkipHandler | None = None, skip_rejected: bool = True) -> Iterator[PairBatch]:
    """Stream a pair dataset as batches of ``batch_size`` good pairs (the last one may be smaller).

    Reads only the needed columns; the skipped rows of each batch are in its ``skipped`` list.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    check_dataset(root, NEEDED)
    pending = PairBatch()
    for row in iter_rows(root, split, columns=_present_columns(root), batch_size=max(batch_size, 64)):
        one = collate_pairs([row], on_skip, skip_rejected)
        _extend(pending, one)
        if len(pending) == batch_size:
            yield pending
            pending = PairBatch()
    if len(pending) or pending.skipped:
        yield pending


def _present_columns(root: str | os.PathLike) -> list[str]:
    import pyarrow.parquet as pq

    names = set(pq.read_schema(shard_files(root)[0]).names)
    return [c for c in COLUMNS if c in names]


def _extend(into: PairBatch, more: PairBatch) -> None:
    for name in ("ids", "prompts", "chosen", "rejected", "n_perturbations", "perturbation_kinds", "n_relations",
                 "skipped"):
        getattr(into, name).extend(getattr(more, name))


def split_scores(values: Sequence[Any], n_pairs: int) -> tuple[Sequence[Any], Sequence[Any]]:
    """Split a forward pass over :meth:`PairBatch.model_inputs` into (chosen, rejected) halves."""
    if len(values) != 2 * n_pairs:
        raise ValueError(f"scores: expected {2 * n_pairs} values for {n_pairs} pairs, got {len(values)}")
    return values[:n_pairs], values[n_pairs:]
