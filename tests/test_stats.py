"""The exact McNemar test (spatialt2i.stats) and the in-domain benchmark's paired before/after line."""

from __future__ import annotations

import pytest

from spatialt2i.bench.indomain import describe_change, paired_change
from spatialt2i.stats import mcnemar_exact, paired_outcomes


def test_mcnemar_exact_known_values() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)          # 2 * P(Bin(5, 1/2) = 0)
    assert mcnemar_exact(0, 5) == mcnemar_exact(5, 0)
    assert mcnemar_exact(3, 3) == 1.0                            # a balanced split is no evidence
    assert mcnemar_exact(18, 13) == pytest.approx(0.4731, abs=1e-4)  # scipy.stats.binomtest(13, 31).pvalue
    assert mcnemar_exact(30, 10) == pytest.approx(0.002221, rel=1e-3)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        mcnemar_exact(-1, 2)


def test_paired_outcomes_counts_only_discordant_items() -> None:
    a = [1, 1, 0, 0, 1, 0.5]
    b = [1, 0, 1, 0, 0, 1]
    assert paired_outcomes(a, b) == {"only_a": 2, "only_b": 1, "p": 1.0}
    with pytest.raises(ValueError, match="differ in length"):
        paired_outcomes([1, 0], [1])


def test_paired_change_and_its_line() -> None:
    before = {"all_correct": 0.5, "correct": [1, 1, 0, 0]}
    after = {"all_correct": 0.75, "correct": [1, 0, 1, 1]}
    c = paired_change(before, after)
    assert c == {"before": 0.5, "after": 0.75, "only_before": 1, "only_after": 2, "p": 1.0}
    line = describe_change(c)
    assert "0.500 -> 0.750" in line and "1 prompts right only before, 2 only after" in line
    assert "not a significant change" in line
    strong = paired_change({"all_correct": 0.0, "correct": [0] * 12}, {"all_correct": 1.0, "correct": [1] * 12})
    assert strong["p"] == pytest.approx(2 / 2 ** 12) and "a significant change" in describe_change(strong)
    with pytest.raises(ValueError, match="the before result has no per-prompt 'correct'"):
        paired_change({"all_correct": 0.5}, after)
