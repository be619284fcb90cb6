"""The review operations shared by the web app, ``review stats`` and ``review export``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..errors import SpatialT2IError
from .agreement import agreement_stats
from .assign import assign
from .dataset import PairIndex
from .store import NAME_RE, VERDICTS, Store, default_db_path

DISAGREEMENT_POLICIES = ("reject", "null", "accept")


class ReviewError(SpatialT2IError):
    """A bad request to the review service; ``status`` is the HTTP status it maps to."""
    status = 400


class BadRequest(ReviewError):
    status = 422


class UnknownPair(ReviewError):
    status = 404


class UnknownReviewer(ReviewError):
    status = 404


class NotAssigned(ReviewError):
    status = 403


class ReviewService:
    """A dataset, its verdict store and the assignment of its pairs to reviewers.

    ``reviewers_per_pair`` (1 or 2) is remembered in the store; None means "as stored, else 1".
    Assignments are cached and rebuilt whenever the roster in the database differs from the one
    they were built for (checked inside the write transaction of every verdict, so a verdict is
    always checked against the assignment current at its commit).
    """

    def __init__(self, dataset: str | Path, db: str | Path | None = None,
                 reviewers_per_pair: int | None = None, reviewers: tuple[str, ...] = ()) -> None:
        self.index = PairIndex(dataset)
        self.store = Store(db or default_db_path(self.index.root))
        if reviewers_per_pair is not None:
            if reviewers_per_pair not in (1, 2):
                raise BadRequest(f"reviewers per pair must be 1 or 2, got {reviewers_per_pair}")
            self.store.set_meta("reviewers_per_pair", str(reviewers_per_pair))
        self.k = int(self.store.get_meta("reviewers_per_pair", "1"))
        self._lock = threading.RLock()
        self._key: tuple[tuple[str, ...], int] | None = None
        self._assigned: list[tuple[str, ...]] = []
        self._queues: dict[str, list[int]] = {}
        for r in reviewers:
            self.add_reviewer(r)

    # --- assignment ---------------------------------------------------------------------------
    def _refresh(self, con=None) -> None:
        with self._lock:
            con = con or self.store._con()
            roster = self.store.roster_in(con)
            if self._key == (roster, self.k):
                return
            sticky = self.store.sticky_in(con)
            assigned = [assign(pid, roster, self.k, sticky.get(pid, ())) for pid in self.index.ids]
            queues: dict[str, list[int]] = {r: [] for r in roster}
            for i, rs in enumerate(assigned):
                for r in rs:
                    queues.setdefault(r, []).append(i)
            self._assigned, self._queues, self._key = assigned, queues, (roster, self.k)

    def roster(self) -> tuple[str, ...]:
        return self.store.roster()

    def queue(self, reviewer: str) -> list[int]:
        self._refresh()
        if reviewer not in self._queues:
            raise UnknownReviewer(f"unknown reviewer {reviewer!r} (join first)")
        return self._queues[reviewer]

    def assigned(self, pair_id: str) -> tuple[str, ...]:
        self._check_pair(pair_id)
        self._refresh()
        return self._assigned[self.index.position[pair_id]]

    def _check_pair(self, pair_id: str) -> None:
        if pair_id not in self.index:
            raise UnknownPair(f"unknown pair id {pair_id!r}")

    # --- reviewers ----------------------------------------------------------------------------
    def add_reviewer(self, name: str) -> dict[str, Any]:
        name = (name or "").strip()
        if not NAME_RE.match(name):
            raise BadRequest(f"reviewer name {name!r} is not allowed: 1-40 characters, letters, digits, "
                             "space, _ . @ -, starting with a letter or digit")
        with self._lock, self.store.write() as con:
            created = self.store.add_reviewer_in(con, name)
            self._refresh(con)
        return {"name": name, "created": created, **self.progress(name)}

    # --- verdicts -----------------------------------------------------------------------------
    def record(self, pair_id: str, reviewer: str, verdict: str, reason: str | None = None) -> dict[str, Any]:
        """Record (or change) ``reviewer``'s verdict on ``pair_id``; returns their progress."""
        self._check_pair(pair_id)
        if verdict not in VERDICTS:
            raise BadRequest(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        reason = (reason or "").strip() or None
        if reason is not None and len(reason) > 1000:
            raise BadRequest("reason is longer than 1000 characters")
        if verdict != "reject":
            reason = None
        with self._lock, self.store.write() as con:
            self._refresh(con)
            if reviewer not in self._queues:
                raise UnknownReviewer(f"unknown reviewer {reviewer!r} (join first)")
            if reviewer not in self._assigned[self.index.position[pair_id]]:
                raise NotAssigned(f"pair {pair_id!r} is not assigned to reviewer {reviewer!r}")
            self.store.upsert_in(con, pair_id, reviewer, verdict, reason)
        return self.progress(reviewer)

    def progress(self, reviewer: str) -> dict[str, Any]:
        q = self.queue(reviewer)
        c = self.store.counts(reviewer)
        done = c["accept"] + c["reject"]
        return {"reviewer": reviewer, "assigned": len(q), "accepted": c["accept"], "rejected": c["reject"],
                "skipped": c["skip"], "done": done, "remaining": len(q) - done}

    def item(self, reviewer: str, pos: int) -> dict[str, Any]:
        """The pair at position ``pos`` of ``reviewer``'s queue, with their verdict on it."""
        q = self.queue(reviewer)
        if not 0 <= pos < len(q):
            raise UnknownPair(f"reviewer {reviewer!r} has no pair at position {pos} (queue of {len(q)})")
        pid = self.index.ids[q[pos]]
        v = self.store.verdict(pid, reviewer)
        return {"pos": pos, "total": len(q), "pair": self.pair(pid),
                "verdict": None if v is None else {"verdict": v[0], "reason": v[1]},
                "progress": self.progress(reviewer)}

    def pair(self, pair_id: str) -> dict[str, Any]:
        self._check_pair(pair_id)
        out = self.index.pair(pair_id)
        out["assigned_to"] = list(self.assigned(pair_id))
        return out

    def next_pos(self, reviewer: str, after: int = -1) -> int | None:
        """Next position after ``after`` (wrapping) with no verdict by ``reviewer``; failing that,
        the next skipped one; None when every assigned pair is accepted or rejected."""
        q = self.queue(reviewer)
        mine = self.store.verdicts_of(reviewer)
        n = len(q)
        order = [(after + 1 + d) % n for d in range(n)] if n else []
        for want in (None, "skip"):
            for p in order:
                v = mine.get(self.index.ids[q[p]])
                if (v is None and want is None) or (v is not None and v[0] == want):
                    return p
        return None

    # --- statistics and final labels ------------------------------------------------------------
    def decisions(self) -> dict[str, dict[str, str]]:
        """pair id -> {reviewer: "accept"|"reject"} (skips left out)."""
        out: dict[str, dict[str, str]] = {}
        for pid, r, v, _ in self.store.all_verdicts():
            if v != "skip" and pid in self.index:
                out.setdefault(pid, {})[r] = v
        return out

    def stats(self) -> dict[str, Any]:
        dec = self.decisions()
        reviewers = [self.progress(r) for r in self.roster()]
        labels = [verified_label(d) for d in dec.values()]
        return {
            "dataset": str(self.index.root),
            "pairs": len(self.index),
            "reviewers_per_pair": self.k,
            "reviewed_pairs": len(dec),
            "unanimous_accept": labels.count(True),
            "unanimous_reject": labels.count(False),
            "disagreements": labels.count(None),
            "reviewers": reviewers,
            "agreement": agreement_stats(dec),
        }


def verified_label(decisions: dict[str, str], disagreement: str = "null") -> bool | None:
    """The ``verified`` value from one pair's decisions: True if all accept, False if all reject;
    a disagreement maps by policy (``reject`` → False, ``accept`` → True, ``null`` → None)."""
    vals = set(decisions.values())
    if vals == {"accept"}:
        return True
    if vals == {"reject"}:
        return False
    if not vals:
        return None
    if disagreement not in DISAGREEMENT_POLICIES:
        raise ValueError(f"disagreement policy must be one of {DISAGREEMENT_POLICIES}")
    return {"reject": False, "accept": True, "null": None}[disagreement]
