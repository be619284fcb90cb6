"""Verdicts in SQLite (WAL mode) beside the dataset.

Tables: ``reviewers`` (the roster, in joining order), ``verdicts`` (one row per pair and reviewer,
primary key ``(pair_id, reviewer)`` — a reviewer changing their mind updates their own row, two
reviewers never touch each other's), ``events`` (append-only log of every verdict posted) and
``meta`` (settings such as reviewers per pair). Every write commits before it returns, with
``synchronous=FULL``, so a killed server loses nothing that it acknowledged.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

VERDICTS = ("accept", "reject", "skip")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,39}$")
DB_NAME = "review.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reviewers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    pair_id TEXT NOT NULL,
    reviewer TEXT NOT NULL REFERENCES reviewers(name),
    verdict TEXT NOT NULL CHECK (verdict IN ('accept', 'reject', 'skip')),
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (pair_id, reviewer)
);
CREATE INDEX IF NOT EXISTS verdicts_by_reviewer ON verdicts(reviewer);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    pair_id TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT
);
"""


def default_db_path(dataset: str | Path) -> Path:
    return Path(dataset) / DB_NAME


class Store:
    """Thread-safe access to the review database (one SQLite connection per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con().executescript(_SCHEMA)

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=True)
            con.execute("PRAGMA busy_timeout = 30000")
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode})")
            con.execute("PRAGMA synchronous = FULL")
            con.execute("PRAGMA foreign_keys = ON")
            self._local.con = con
        return con

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: takes the write lock up front)."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        else:
            con.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several queries."""
        con = self._con()
        con.execute("BEGIN")
        try:
            yield con
        finally:
            con.execute("COMMIT")

    # --- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._con().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.write() as con:
            con.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # --- reviewers ----------------------------------------------------------------------------
    @staticmethod
    def roster_in(con: sqlite3.Connection) -> tuple[str, ...]:
        return tuple(r[0] for r in con.execute("SELECT name FROM reviewers ORDER BY seq"))

    def roster(self) -> tuple[str, ...]:
        return self.roster_in(self._con())

    @staticmethod
    def add_reviewer_in(con: sqlite3.Connection, name: str) -> bool:
        cur = con.execute("INSERT OR IGNORE INTO reviewers(name, created) VALUES (?, ?)", (name, time.time()))
        return cur.rowcount == 1

    # --- verdicts -----------------------------------------------------------------------------
    @staticmethod
    def upsert_in(con: sqlite3.Connection, pair_id: str, reviewer: str, verdict: str,
                  reason: str | None) -> None:
        now = time.time()
        con.execute(
            "INSERT INTO verdicts(pair_id, reviewer, verdict, reason, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(pair_id, reviewer) DO UPDATE SET "
            "verdict = excluded.verdict, reason = excluded.reason, updated = excluded.updated",
            (pair_id, reviewer, verdict, reason, now, now))
        con.execute("INSERT INTO events(ts, pair_id, reviewer, verdict, reason) VALUES (?, ?, ?, ?, ?)",
                    (now, pair_id, reviewer, verdict, reason))

    @staticmethod
    def sticky_in(con: sqlite3.Connection) -> dict[str, set[str]]:
        """pair id -> reviewers with any verdict (including skip) on it."""
        out: dict[str, set[str]] = {}
        for pid, r in con.execute("SELECT pair_id, reviewer FROM verdicts"):
            out.setdefault(pid, set()).add(r)
        return out

    def verdicts_of(self, reviewer: str) -> dict[str, tuple[str, str | None]]:
        rows = self._con().execute("SELECT pair_id, verdict, reason FROM verdicts WHERE reviewer = ?", (reviewer,))
        return {pid: (v, reason) for pid, v, reason in rows}

    def verdict(self, pair_id: str, reviewer: str) -> tuple[str, str | None] | None:
        row = self._con().execute("SELECT verdict, reason FROM verdicts WHERE pair_id = ? AND reviewer = ?",
                                  (pair_id, reviewer)).fetchone()
        return (row[0], row[1]) if row else None

    def all_verdicts(self) -> list[tuple[str, str, str, str | None]]:
        """Every (pair id, reviewer, verdict, reason), ordered by pair id then reviewer."""
        return list(self._con().execute(
            "SELECT pair_id, reviewer, verdict, reason FROM verdicts ORDER BY pair_id, reviewer"))

    def counts(self, reviewer: str) -> dict[str, int]:
        out = dict.fromkeys(VERDICTS, 0)
        for v, n in self._con().execute(
                "SELECT verdict, COUNT(*) FROM verdicts WHERE reviewer = ? GROUP BY verdict", (reviewer,)):
            out[v] = n
        return out

    def n_events(self) -> int:
        return self._con().execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
