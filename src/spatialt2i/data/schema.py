"""The pair dataset's columns, its parquet schema, and reading/writing shards.

A pair dataset is a folder laid out as a Hugging Face dataset repository::

    DIR/README.md                 dataset card (YAML header + statistics + figures)
    DIR/data/train-00000-of-00004.parquet ...
    DIR/data/test-00000-of-00001.parquet
    DIR/figures/*.png             histograms shown in the card
    DIR/build.json                how it was built (the builder's arguments; used to resume)

``datasets.load_dataset("parquet", data_dir=DIR + "/data")`` (or ``load_dataset(DIR)``) loads it;
``chosen``/``rejected`` decode to PIL images because the parquet files carry the ``datasets``
feature metadata.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..errors import DatasetError

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PERTURBATION = pa.struct([("type", pa.string()), ("before", pa.string()), ("after", pa.string())])

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("prompt", pa.string()),
    ("perturbed_prompt", pa.string()),
    ("chosen", IMAGE),
    ("rejected", IMAGE),
    ("perturbations", pa.list_(PERTURBATION)),
    ("perturbation_kind", pa.string()),   # swap | flip | attribute | multi
    ("n_perturbations", pa.int32()),
    ("n_objects", pa.int32()),
    ("n_relations", pa.int32()),
    ("relation_kinds", pa.list_(pa.string())),
    ("scene", pa.string()),               # JSON scene spec (world only, else null)
    ("perturbed_scene", pa.string()),     # JSON (world only, else null)
    ("seed", pa.int64()),
    ("source", pa.string()),              # e.g. "world/world" or "llm:gpt-x/diffusers:flux-dev"
    ("verified", pa.bool_()),             # null until a human reviews it
])

HF_FEATURES = {
    "id": {"dtype": "string", "_type": "Value"},
    "prompt": {"dtype": "string", "_type": "Value"},
    "perturbed_prompt": {"dtype": "string", "_type": "Value"},
    "chosen": {"_type": "Image"},
    "rejected": {"_type": "Image"},
    "perturbations": {"feature": {"type": {"dtype": "string", "_type": "Value"},
                                  "before": {"dtype": "string", "_type": "Value"},
                                  "after": {"dtype": "string", "_type": "Value"}}, "_type": "List"},
    "perturbation_kind": {"dtype": "string", "_type": "Value"},
    "n_perturbations": {"dtype": "int32", "_type": "Value"},
    "n_objects": {"dtype": "int32", "_type": "Value"},
    "n_relations": {"dtype": "int32", "_type": "Value"},
    "relation_kinds": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
    "scene": {"dtype": "string", "_type": "Value"},
    "perturbed_scene": {"dtype": "string", "_type": "Value"},
    "seed": {"dtype": "int64", "_type": "Value"},
    "source": {"dtype": "string", "_type": "Value"},
    "verified": {"dtype": "bool", "_type": "Value"},
}
SCHEMA = SCHEMA.with_metadata({"huggingface": json.dumps({"info": {"features": HF_FEATURES}})})
REQUIRED = ("id", "prompt", "perturbed_prompt", "chosen", "rejected", "perturbations", "n_perturbations")
SPLITS = ("train", "test")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # Fast zlib level, run-length strategy: flat-colour renders come out ~9% smaller than with the
    # default strategy, at the same speed.
    img.save(buf, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buf.getvalue()


def image_cell(img: Image.Image | bytes) -> dict[str, Any]:
    return {"bytes": img if isinstance(img, bytes) else png_bytes(img), "path": None}


def decode_image(cell: Any, where: str) -> Image.Image:
    """A PIL image from a parquet image cell; ``DatasetError`` naming ``where`` if it is corrupt."""
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        raise DatasetError(f"{where}: image is empty")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises many types for corrupt data
        raise DatasetError(f"{where}: image cannot be decoded ({type(e).__name__}: {e})") from None
    return img.convert("RGB")


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.parquet"


def write_shard(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write rows atomically: to a temporary file first, renamed into place when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, tmp, row_group_size=256)
    os.replace(tmp, path)


def shard_files(root: str | os.PathLike, split: str | None = None) -> list[Path]:
    data = Path(root) / "data"
    pats = [f"{split}-*.parquet"] if split else [f"{s}-*.parquet" for s in SPLITS]
    return sorted(p for pat in pats for p in data.glob(pat))


def check_dataset(root: str | os.PathLike, columns: tuple[str, ...] = REQUIRED) -> None:
    """Raise ``DatasetError`` unless ``root`` is a pair dataset with the given columns."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    files = shard_files(root)
    if not files:
        raise DatasetError(f"{root}: not a pair dataset (no data/train-*.parquet or data/test-*.parquet)")
    for f in files:
        try:
            names = pq.read_schema(f).names
        except Exception as e:
            raise DatasetError(f"{f}: not a readable parquet file ({e})") from None
        missing = [c for c in columns if c not in names]
        if missing:
            raise DatasetError(f"{f}: missing column(s) {missing}")


def iter_rows(root: str | os.PathLike, split: str | None = None, columns: list[str] | None = None,
              batch_size: int = 256) -> Iterator[dict[str, Any]]:
    """Stream rows shard by shard (never the whole dataset in memory)."""
    check_dataset(root, tuple(c for c in (columns or REQUIRED) if c in REQUIRED))
    for f in shard_files(root, split):
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()
