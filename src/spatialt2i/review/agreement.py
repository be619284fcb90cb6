"""Inter-rater agreement: percent agreement and Cohen's kappa (pure functions)."""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Hashable, Iterable, Mapping, Sequence


def percent_agreement(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Fraction (0–1) of items on which the two raters gave the same label; None if no items."""
    if len(a) != len(b):
        raise ValueError(f"rater label lists differ in length ({len(a)} vs {len(b)})")
    if not a:
        return None
    return sum(x == y for x, y in zip(a, b)) / len(a)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items: (p_o − p_e) / (1 − p_e).

    ``p_o`` is the observed agreement, ``p_e`` the agreement expected by chance from each rater's
    own label frequencies. Returns None when it is undefined: no items, or ``p_e == 1`` (both
    raters used one and the same label throughout, so chance explains all agreement).
    """
    p_o = percent_agreement(a, b)
    if p_o is None:
        return None
    n = len(a)
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def agreement_stats(labels: Mapping[str, Mapping[str, str]]) -> dict:
    """Agreement over items rated by two or more raters.

    ``labels`` maps item id -> {rater: label}. Each item rated by ≥ 2 raters contributes one
    comparison per pair of its raters. Returns overall figures (rater order within a comparison:
    by name, so the overall kappa is Cohen's kappa of "first name" vs "second name") and one
    entry per pair of raters (a true two-fixed-rater Cohen's kappa).
    """
    first: list[str] = []
    second: list[str] = []
    by_pair: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    items = 0
    for item, rl in labels.items():
        if len(rl) < 2:
            continue
        items += 1
        for r1, r2 in combinations(sorted(rl), 2):
            first.append(rl[r1])
            second.append(rl[r2])
            xa, xb = by_pair.setdefault((r1, r2), ([], []))
            xa.append(rl[r1])
            xb.append(rl[r2])
    return {
        "n_items": items,
        "n_comparisons": len(first),
        "percent_agreement": _pct(percent_agreement(first, second)),
        "cohen_kappa": cohen_kappa(first, second),
        "by_reviewer_pair": [
            {"reviewers": [r1, r2], "n": len(xa), "percent_agreement": _pct(percent_agreement(xa, xb)),
             "cohen_kappa": cohen_kappa(xa, xb)}
            for (r1, r2), (xa, xb) in sorted(by_pair.items())
        ],
    }


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def pairs_of(labels: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    """Group (item, rater, label) triples into {item: {rater: label}}."""
    out: dict[str, dict[str, str]] = {}
    for item, rater, label in labels:
        out.setdefault(item, {})[rater] = label
    return out
