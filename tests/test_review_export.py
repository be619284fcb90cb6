"""``review export``: a new dataset version with ``verified`` filled, written atomically."""

import json

import pyarrow.parquet as pq
import pytest

from spatialt2i.errors import DatasetError
from spatialt2i.review import cli as review_cli
from spatialt2i.review import export as export_mod
from spatialt2i.review.export import export
from spatialt2i.review.service import ReviewService
from spatialt2i.testing.pairs import make_pair_dataset


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("review.sqlite")}


@pytest.fixture()
def reviewed(tmp_path):
    """8 pairs, 2 reviewers each: pairs 0-3 both accept, 4-5 both reject, 6 disagree, 7 unreviewed."""
    ids = make_pair_dataset(tmp_path / "ds", n_train=6, n_test=2)
    svc = ReviewService(tmp_path / "ds", reviewers_per_pair=2, reviewers=("ann", "ben"))
    for i, pid in enumerate(ids[:7]):
        svc.record(pid, "ann", "accept" if i in (0, 1, 2, 3, 6) else "reject")
        svc.record(pid, "ben", "accept" if i in (0, 1, 2, 3) else "reject", reason="relation wrong")
    svc.record(ids[7], "ann", "skip")
    svc.store.close()
    return tmp_path, ids


def load(out):
    from datasets import load_dataset

    ds = load_dataset("parquet", data_dir=str(out / "data"), cache_dir=str(out.parent / "hf-cache"))
    return {row["id"]: row for split in ds.values() for row in split}


def test_export_fills_verified_and_loads_with_datasets(reviewed):
    tmp, ids = reviewed
    before = snapshot(tmp / "ds")
    assert review_cli.main(["export", str(tmp / "ds"), "--out", str(tmp / "v2")]) == 0
    assert snapshot(tmp / "ds") == before                      # source untouched
    rows = load(tmp / "v2")
    assert set(rows) == set(ids)
    want = {**{p: True for p in ids[:4]}, ids[4]: False, ids[5]: False, ids[6]: False, ids[7]: None}
    assert {p: r["verified"] for p, r in rows.items()} == want
    r0 = rows[ids[0]]
    assert r0["chosen"].size == (32, 32) and r0["perturbations"][0]["type"] == "flip"
    assert not (tmp / "v2" / "review.sqlite").exists()
    summary = json.loads((tmp / "v2" / "review.json").read_text())
    assert summary["verified_true"] == 4 and summary["verified_false"] == 3 and summary["verified_null"] == 1
    assert "## Human review" in (tmp / "v2" / "README.md").read_text()
    # the HF feature metadata survives, so images still decode as images
    meta = pq.read_schema(next((tmp / "v2" / "data").glob("train-*.parquet"))).metadata
    assert b"huggingface" in meta


def test_export_drop_rejected_and_disagreement_policy(reviewed):
    tmp, ids = reviewed
    assert review_cli.main(["export", str(tmp / "ds"), "--out", str(tmp / "v3"), "--drop-rejected",
                            "--disagreement", "null"]) == 0
    rows = load(tmp / "v3")
    assert set(rows) == set(ids) - {ids[4], ids[5]}
    assert rows[ids[6]]["verified"] is None and rows[ids[7]]["verified"] is None
    assert all(rows[p]["verified"] is True for p in ids[:4])


def test_export_is_atomic_and_refuses_bad_targets(reviewed, monkeypatch):
    tmp, ids = reviewed
    before = snapshot(tmp / "ds")
    with pytest.raises(DatasetError, match="outside the source dataset"):
        export(tmp / "ds", tmp / "ds")
    with pytest.raises(DatasetError, match="outside the source dataset"):
        export(tmp / "ds", tmp / "ds" / "v2")
    (tmp / "full").mkdir()
    (tmp / "full" / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="already exists"):
        export(tmp / "ds", tmp / "full")
    assert (tmp / "full" / "keep.txt").read_text() == "x"

    real = export_mod._export_shard
    calls = []

    def failing(*a, **k):
        calls.append(a[0])
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(export_mod, "_export_shard", failing)
    with pytest.raises(OSError, match="disk full"):
        export(tmp / "ds", tmp / "v4")
    assert len(calls) == 2
    assert not (tmp / "v4").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".v4.tmp")]   # temp folder cleaned up
    assert snapshot(tmp / "ds") == before
    monkeypatch.setattr(export_mod, "_export_shard", real)
    (tmp / "empty").mkdir()
    export(tmp / "ds", tmp / "empty")                           # an empty folder may be replaced
    assert len(load(tmp / "empty")) == 8


def test_export_of_unreviewed_dataset_keeps_existing_values(tmp_path):
    make_pair_dataset(tmp_path / "ds", n_train=3, n_test=0, train_shards=1)
    s = export(tmp_path / "ds", tmp_path / "out")
    assert s["reviewed_pairs"] == 0 and s["verified_null"] == 3
    assert not (tmp_path / "ds" / "review.sqlite").exists()
    assert review_cli.main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2
