"""Several clients post verdicts at once over real sockets: nothing is lost or duplicated, no
reviewer overwrites another, and everything survives a SIGKILL of the server."""

import hashlib
import sqlite3
import threading

import httpx

from spatialt2i.testing.pairs import ReviewServer, make_pair_dataset

REVIEWERS = ["r0", "r1", "r2", "r3"]


def expected(pair_id: str, reviewer: str) -> str:
    return "accept" if hashlib.sha1(f"{pair_id}/{reviewer}".encode()).digest()[0] % 2 else "reject"


def test_concurrent_verdicts_are_all_kept_once(tmp_path):
    make_pair_dataset(tmp_path / "ds", n_train=20, n_test=4, train_shards=3, size=16)
    extra = ["--reviewers-per-pair", "2"] + [x for r in REVIEWERS for x in ("--reviewer", r)]
    srv = ReviewServer(tmp_path / "ds", *extra).start()
    try:
        queues = {}
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for r in REVIEWERS:
                n = c.get(f"/api/reviewers/{r}/progress").json()["assigned"]
                queues[r] = [c.get(f"/api/reviewers/{r}/queue/{i}").json()["pair"]["id"] for i in range(n)]
        assert sum(map(len, queues.values())) == 24 * 2

        # two clients per reviewer post that reviewer's whole queue, in opposite orders, all at once
        jobs = [(r, q if k == 0 else q[::-1]) for r, q in queues.items() for k in range(2)]
        barrier = threading.Barrier(len(jobs) + 1)
        results, errors = [], []

        def post_all(reviewer, pids):
            try:
                with httpx.Client(base_url=srv.url, timeout=60) as c:
                    barrier.wait()
                    for pid in pids:
                        v = expected(pid, reviewer)
                        r = c.post("/api/verdicts", json={"pair_id": pid, "reviewer": reviewer, "verdict": v,
                                                          "reason": "looks wrong" if v == "reject" else None})
                        results.append((reviewer, pid, r.status_code))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(repr(e))

        def read_stats():
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                barrier.wait()
                for _ in range(20):
                    assert c.get("/api/stats").status_code == 200

        threads = [threading.Thread(target=post_all, args=j) for j in jobs] + [threading.Thread(target=read_stats)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len(results) == 96 and all(s == 200 for _, _, s in results), [x for x in results if x[2] != 200]

        srv.kill()  # SIGKILL: no shutdown hooks; acknowledged verdicts must already be on disk
        con = sqlite3.connect(tmp_path / "ds" / "review.sqlite")
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = con.execute("SELECT pair_id, reviewer, verdict, reason FROM verdicts").fetchall()
        assert len(rows) == 48 == len({(p, r) for p, r, _, _ in rows})
        want = {(p, r) for r, q in queues.items() for p in q}
        assert {(p, r) for p, r, _, _ in rows} == want
        assert all(v == expected(p, r) for p, r, v, _ in rows)
        assert all((reason == "looks wrong") == (v == "reject") for _, _, v, reason in rows)
        assert con.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 96
        con.close()

        srv.start()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            st = c.get("/api/stats").json()
            assert st["reviewed_pairs"] == 24
            assert sum(r["done"] for r in st["reviewers"]) == 48
            for r in st["reviewers"]:
                q = queues[r["reviewer"]]
                assert r["assigned"] == len(q) and r["remaining"] == 0
                assert r["accepted"] == sum(expected(p, r["reviewer"]) == "accept" for p in q)
            assert st["agreement"]["n_items"] == 24
    finally:
        srv.stop()
