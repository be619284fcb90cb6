"""Review app HTTP API against a real uvicorn server: happy path and every kind of bad input."""

import http.client
import json
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from spatialt2i.data.schema import write_shard
from spatialt2i.errors import DatasetError
from spatialt2i.review import cli as review_cli
from spatialt2i.review.dataset import PairIndex
from spatialt2i.review.service import ReviewService
from spatialt2i.testing.pairs import ReviewServer, make_pair_dataset, make_rows


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    ids = make_pair_dataset(root / "ds", n_train=8, n_test=2)
    srv = ReviewServer(root / "ds", "--reviewer", "alice", "--reviewer", "bob", "--reviewers-per-pair", "1")
    with srv:
        yield srv, ids


def raw_get(srv, path):
    """GET with the path sent exactly as written (no client-side normalisation of ../ or %2F)."""
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        c.putrequest("GET", path, skip_accept_encoding=True)
        c.endheaders()
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_page_and_pair_views(server):
    srv, ids = server
    with httpx.Client(base_url=srv.url) as c:
        page = c.get("/")
        assert page.status_code == 200 and "app.js" in page.text
        assert c.get("/static/app.js").status_code == 200
        info = c.get("/api/info").json()
        assert info["pairs"] == 10 and info["reviewers"] == ["alice", "bob"] and info["reviewers_per_pair"] == 1
        qa = c.get("/api/reviewers/alice/progress").json()["assigned"]
        qb = c.get("/api/reviewers/bob/progress").json()["assigned"]
        assert qa + qb == 10
        item = c.get("/api/reviewers/alice/queue/0").json()
        pair = item["pair"]
        assert pair["assigned_to"] == ["alice"] and item["verdict"] is None and item["total"] == qa
        (a, b, k), = pair["highlights"]["prompt"]
        assert pair["prompt"][a:b] == pair["perturbations"][k]["before"]
        (a, b, k), = pair["highlights"]["perturbed_prompt"]
        assert pair["perturbed_prompt"][a:b] == pair["perturbations"][k]["after"]
        img = c.get(f"/api/pairs/{pair['id']}/image/rejected")
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        stored = {r["id"]: r for f in (Path(srv.dataset) / "data").glob("*.parquet")
                  for r in pq.read_table(f).to_pylist()}
        assert img.content == stored[pair["id"]]["rejected"]["bytes"]
        assert c.get(f"/api/pairs/{pair['id']}/image/chosen").content == stored[pair["id"]]["chosen"]["bytes"]


def test_unknown_pair_id_is_404(server):
    srv, _ = server
    with httpx.Client(base_url=srv.url) as c:
        r = c.get("/api/pairs/no-such-pair")
        assert r.status_code == 404 and "no-such-pair" in r.json()["detail"]
        assert c.get("/api/pairs/no-such-pair/image/chosen").status_code == 404
        r = c.post("/api/verdicts", json={"pair_id": "no-such-pair", "reviewer": "alice", "verdict": "accept"})
        assert r.status_code == 404 and "unknown pair id 'no-such-pair'" in r.json()["detail"]
        r = c.get("/api/reviewers/alice/queue/999")
        assert r.status_code == 404 and "position 999" in r.json()["detail"]


def test_verdict_for_pair_not_assigned_is_403(server):
    srv, ids = server
    with httpx.Client(base_url=srv.url) as c:
        bobs = c.get("/api/reviewers/bob/queue/0").json()["pair"]["id"]
        r = c.post("/api/verdicts", json={"pair_id": bobs, "reviewer": "alice", "verdict": "accept"})
        assert r.status_code == 403
        assert r.json()["detail"] == f"pair {bobs!r} is not assigned to reviewer 'alice'"
        # nothing was recorded
        assert c.get("/api/reviewers/alice/progress").json()["done"] == 0


def test_bad_reviewer_verdict_and_body(server):
    srv, _ = server
    with httpx.Client(base_url=srv.url) as c:
        pid = c.get("/api/reviewers/alice/queue/0").json()["pair"]["id"]
        r = c.post("/api/verdicts", json={"pair_id": pid, "reviewer": "mallory", "verdict": "accept"})
        assert r.status_code == 404 and "unknown reviewer 'mallory'" in r.json()["detail"]
        assert c.get("/api/reviewers/mallory/progress").status_code == 404
        r = c.post("/api/verdicts", json={"pair_id": pid, "reviewer": "alice", "verdict": "maybe"})
        assert r.status_code == 422 and "verdict" in r.json()["detail"]
        r = c.post("/api/verdicts", content=b"not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = c.post("/api/reviewers", json={"name": "../../etc"})
        assert r.status_code == 422 and "not allowed" in r.json()["detail"]
        r = c.get(f"/api/pairs/{pid}/image/left")
        assert r.status_code == 422


@pytest.mark.parametrize("path", [
    "/api/pairs/..%2F..%2Freview.sqlite/image/chosen",
    "/api/pairs/../../review.sqlite/image/chosen",
    "/api/pairs/pair-0000/image/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/pairs/%2Fetc%2Fpasswd/image/chosen",
    "/api/pairs/%2e%2e/image/chosen",
    "/static/../app.py",
    "/static/..%2Fapp.py",
    "/static/%2e%2e/store.py",
    "/static/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static//etc/passwd",
])
def test_path_traversal_is_refused(server, path):
    srv, _ = server
    status, body = raw_get(srv, path)
    assert 400 <= status < 500, (path, status)
    assert b"import " not in body and b"root:" not in body and b"SQLite" not in body


def test_image_path_cells_must_stay_inside_the_dataset(tmp_path):
    rows = make_rows(2)
    (tmp_path / "secret.png").write_bytes(rows[0]["chosen"]["bytes"])
    (tmp_path / "ds" / "img").mkdir(parents=True)
    (tmp_path / "ds" / "img" / "ok.png").write_bytes(rows[1]["chosen"]["bytes"])
    rows[0]["chosen"] = {"bytes": None, "path": "../secret.png"}
    rows[1]["chosen"] = {"bytes": None, "path": "img/ok.png"}
    write_shard(rows, tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    idx = PairIndex(tmp_path / "ds")
    with pytest.raises(DatasetError, match="not a file inside the dataset"):
        idx.image(rows[0]["id"], "chosen")
    data, media = idx.image(rows[1]["id"], "chosen")
    assert media == "image/png" and data == (tmp_path / "ds" / "img" / "ok.png").read_bytes()


def test_not_a_pair_dataset(tmp_path, capsys):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        ReviewService(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a pair dataset"):
        ReviewService(tmp_path / "empty")
    assert review_cli.main(["serve", str(tmp_path / "empty"), "--port", "1"]) == 2
    assert "not a pair dataset" in capsys.readouterr().err
    assert review_cli.main(["stats", str(tmp_path / "empty"), "--json"]) == 2
    # parquet without the pair columns
    import pyarrow as pa
    (tmp_path / "other" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "other" / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(DatasetError, match="missing column"):
        ReviewService(tmp_path / "other")
    # duplicate pair ids
    rows = make_rows(2)
    rows[1]["id"] = rows[0]["id"]
    write_shard(rows, tmp_path / "dup" / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(DatasetError, match="duplicate pair id"):
        ReviewService(tmp_path / "dup")
    assert not (tmp_path / "empty" / "review.sqlite").exists()


def test_stats_command_json(tmp_path, capsys):
    make_pair_dataset(tmp_path / "ds", n_train=4, n_test=0, train_shards=1)
    svc = ReviewService(tmp_path / "ds", reviewers_per_pair=2, reviewers=("ann", "ben"))
    for r in ("ann", "ben"):
        for i in svc.queue(r):
            svc.record(svc.index.ids[i], r, "accept" if (i % 2 or r == "ann") else "reject")
    assert review_cli.main(["stats", str(tmp_path / "ds"), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    ag = st["agreement"]
    assert st["reviewed_pairs"] == 4 and ag["n_items"] == 4 and ag["percent_agreement"] == pytest.approx(50.0)
    assert ag["cohen_kappa"] == pytest.approx(0.0)
    assert review_cli.main(["stats", str(tmp_path / "ds")]) == 0
    assert "Cohen's kappa 0.000" in capsys.readouterr().out


def test_top_level_cli_registers_review_commands():
    from spatialt2i.cli import build_parser

    p = build_parser()
    a = p.parse_args(["review", "serve", "DS", "--port", "9", "--reviewers-per-pair", "2"])
    assert a.func is review_cli.cmd_serve and a.host == "127.0.0.1" and a.reviewers_per_pair == 2
    a = p.parse_args(["review", "export", "DS", "--out", "X", "--drop-rejected"])
    assert a.func is review_cli.cmd_export and a.drop_rejected
    a = p.parse_args(["review", "stats", "DS", "--json"])
    assert a.func is review_cli.cmd_stats and a.json
