"""Deterministic assignment of pairs to reviewers.

Each pair goes to ``k`` (1 or 2) reviewers of the roster, chosen by rendezvous (highest random
weight) hashing of ``(pair id, reviewer name)``: a pure function of the pair id, the roster and
``k``, stable when reviewers join (a new reviewer takes over only the pairs where it ranks in the
top ``k``). Assignment is also *sticky*: a reviewer who has recorded a verdict on a pair stays
assigned to it, and fills one of its ``k`` places, whoever joins later. Since only assigned
reviewers can record verdicts, assignments change only when the roster changes.
"""

from __future__ import annotations

import hashlib
from typing import Collection, Sequence


def weight(pair_id: str, reviewer: str) -> int:
    h = hashlib.blake2b(f"{pair_id}\x00{reviewer}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def ranking(pair_id: str, roster: Sequence[str]) -> list[str]:
    """The roster ordered by preference for this pair (ties, practically impossible, by name)."""
    return sorted(roster, key=lambda r: (-weight(pair_id, r), r))


def assign(pair_id: str, roster: Sequence[str], k: int, sticky: Collection[str] = ()) -> tuple[str, ...]:
    """Reviewers of ``pair_id``: those in ``sticky`` (already have a verdict), then the best-ranked
    others of the roster until there are ``k``."""
    if k < 1:
        raise ValueError(f"reviewers per pair must be >= 1, got {k}")
    ranked = ranking(pair_id, roster)
    chosen = [r for r in ranked if r in sticky] + [r for r in sticky if r not in roster]
    for r in ranked:
        if len(chosen) >= k:
            break
        if r not in chosen:
            chosen.append(r)
    return tuple(chosen)
