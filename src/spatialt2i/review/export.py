"""Export a reviewed dataset: a new dataset version with ``verified`` filled from the verdicts.

The new version is written to a temporary folder beside ``out`` and renamed into place only when
complete, so the source dataset is never modified and ``out`` either does not exist or is whole.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..data.schema import check_dataset, shard_files
from ..errors import DatasetError
from .service import DISAGREEMENT_POLICIES, verified_label
from .store import DB_NAME, Store, default_db_path

_SKIP_TOP = {"data", DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal"}


def decisions_from(db: Path) -> dict[str, dict[str, str]]:
    if not db.exists():
        return {}
    store = Store(db)
    try:
        out: dict[str, dict[str, str]] = {}
        for pid, r, v, _ in store.all_verdicts():
            if v != "skip":
                out.setdefault(pid, {})[r] = v
        return out
    finally:
        store.close()


def export(dataset: str | os.PathLike, out: str | os.PathLike, db: str | os.PathLike | None = None,
           drop_rejected: bool = False, disagreement: str = "reject") -> dict[str, Any]:
    """Write ``out``: ``dataset`` with ``verified`` set from the review verdicts.

    Per pair: all reviewers accept → True; all reject → False; a disagreement → per
    ``disagreement`` (``reject`` → False, ``null`` → None, ``accept`` → True); no verdict → the
    value already in the dataset. With ``drop_rejected``, pairs whose result is False are left
    out. Returns a summary (also written to ``out/review.json``).
    """
    if disagreement not in DISAGREEMENT_POLICIES:
        raise DatasetError(f"disagreement policy must be one of {DISAGREEMENT_POLICIES}, got {disagreement!r}")
    src = Path(dataset).resolve()
    check_dataset(src)
    dst = Path(out).resolve()
    if dst == src or dst.is_relative_to(src) or src.is_relative_to(dst):
        raise DatasetError(f"{dst}: the export folder must be outside the source dataset {src} (and not contain it)")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DatasetError(f"{dst}: already exists and is not an empty folder; choose a new --out")
    decisions = decisions_from(Path(db).resolve() if db else default_db_path(src))

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    counts = {"rows_in": 0, "rows_out": 0, "dropped": 0, "verified_true": 0, "verified_false": 0,
              "verified_null": 0, "from_verdicts": 0}
    try:
        (tmp / "data").mkdir()
        shards = shard_files(src)
        for f in shards:
            _export_shard(f, tmp / "data" / f.name, decisions, drop_rejected, disagreement, counts)
        shard_names = {f.name for f in shards}
        for item in src.iterdir():
            if item.name in _SKIP_TOP or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name, symlinks=True)
            else:
                shutil.copy2(item, tmp / item.name)
        for item in (src / "data").iterdir():   # anything in data/ besides the shards
            if item.name not in shard_names and not item.name.startswith(".") and item.is_file():
                shutil.copy2(item, tmp / "data" / item.name)
        summary = {
            "source": str(src),
            "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "drop_rejected": drop_rejected,
            "disagreement": disagreement,
            "reviewed_pairs": len(decisions),
            **counts,
        }
        (tmp / "review.json").write_text(json.dumps(summary, indent=2) + "\n")
        card = tmp / "README.md"
        if card.exists():
            with card.open("a") as fh:
                fh.write(_card_section(summary))
        _fsync_tree(tmp)
        os.rename(tmp, dst)   # atomic; replaces dst only if it is an empty folder
        _fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _export_shard(src: Path, dst: Path, decisions: dict[str, dict[str, str]], drop: bool, policy: str,
                  counts: dict[str, int]) -> None:
    pf = pq.ParquetFile(src)
    schema = pf.schema_arrow
    if "verified" not in schema.names:
        schema = schema.append(pa.field("verified", pa.bool_()))
    elif schema.field("verified").type != pa.bool_():
        raise DatasetError(f"{src}: column 'verified' has type {schema.field('verified').type}, expected bool")
    vi = schema.get_field_index("verified")
    with pq.ParquetWriter(dst, schema) as writer:
        wrote = False
        for batch in pf.iter_batches(batch_size=256):
            table = pa.Table.from_batches([batch])
            old = table.column("verified").to_pylist() if "verified" in table.column_names else [None] * len(table)
            new = []
            for pid, before in zip(table.column("id").to_pylist(), old):
                d = decisions.get(pid)
                if d:
                    counts["from_verdicts"] += 1
                    new.append(verified_label(d, policy))
                else:
                    new.append(before)
            arr = pa.array(new, pa.bool_())
            table = table.set_column(vi, "verified", arr) if "verified" in table.column_names else table.append_column("verified", arr)
            counts["rows_in"] += len(new)
            if drop:
                keep = pa.array([v is not False for v in new])
                counts["dropped"] += len(new) - sum(keep.to_pylist())
                table = table.filter(keep)
                new = [v for v in new if v is not False]
            counts["rows_out"] += len(new)
            counts["verified_true"] += new.count(True)
            counts["verified_false"] += new.count(False)
            counts["verified_null"] += sum(v is None for v in new)
            writer.write_table(table.cast(schema), row_group_size=256)
            wrote = True
        if not wrote:
            writer.write_table(schema.empty_table())


def _card_section(s: dict[str, Any]) -> str:
    lines = [
        "", "## Human review", "",
        f"Exported by `spatialt2i review export` on {s['exported']} from `{Path(s['source']).name}`.",
        f"{s['reviewed_pairs']} pairs have review verdicts; `verified`: {s['verified_true']} true, "
        f"{s['verified_false']} false, {s['verified_null']} null (of {s['rows_out']} rows).",
        f"Disagreements count as: {s['disagreement']}.",
    ]
    if s["drop_rejected"]:
        lines.append(f"{s['dropped']} rejected pairs were dropped; statistics above describe the dataset before review.")
    return "\n".join(lines) + "\n"


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
