"""Small statistics shared by the benchmarks: the exact McNemar test for paired right/wrong outcomes.

Two systems judged on the same items (the same test pairs, or the same prompts and seeds) differ
only on the *discordant* items, the ones exactly one of them gets right. If the systems were equally
good, each discordant item would be the first system's with probability 1/2, so the two-sided p-value
is the probability that Binomial(n, 1/2) lands at least as far from n/2 as the observed split.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

__all__ = ["mcnemar_exact", "paired_outcomes"]


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the counts of items only ``a`` / only ``b`` got right."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"mcnemar_exact: counts must be >= 0, got {only_a}, {only_b}")
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired_outcomes(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """``only_a``, ``only_b`` and the McNemar ``p`` of two equally long 0/1 outcome lists (other values,
    e.g. a tie's 0.5, count as neither right nor wrong, so never as discordant)."""
    if len(a) != len(b):
        raise ValueError(f"paired_outcomes: the outcome lists differ in length ({len(a)} vs {len(b)})")
    only_a = sum(1 for x, y in zip(a, b) if x == 1 and y == 0)
    only_b = sum(1 for x, y in zip(a, b) if x == 0 and y == 1)
    return {"only_a": only_a, "only_b": only_b, "p": mcnemar_exact(only_a, only_b)}
