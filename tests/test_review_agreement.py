"""Pure parts of the review app: Cohen's kappa, deterministic assignment, highlight spans."""

import pytest

from spatialt2i.review.agreement import agreement_stats, cohen_kappa, percent_agreement
from spatialt2i.review.assign import assign, ranking
from spatialt2i.review.dataset import locate


def test_cohen_kappa_textbook_example():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert percent_agreement(a, b) == pytest.approx(0.7)
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(b, a) == pytest.approx(0.4)


def test_cohen_kappa_extremes_and_undefined():
    assert cohen_kappa(["accept", "reject"] * 3, ["accept", "reject"] * 3) == pytest.approx(1.0)
    assert cohen_kappa(["accept", "reject"] * 3, ["reject", "accept"] * 3) == pytest.approx(-1.0)
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["accept"] * 4, ["accept"] * 4) is None  # chance explains everything
    with pytest.raises(ValueError):
        cohen_kappa(["accept"], [])


def test_agreement_stats_only_counts_items_rated_twice():
    labels = {
        "p1": {"bob": "accept", "alice": "accept"},
        "p2": {"alice": "reject", "bob": "accept"},
        "p3": {"alice": "reject", "bob": "reject"},
        "p4": {"alice": "accept"},                        # single rating: not in agreement
        "p5": {"carol": "accept", "alice": "accept"},
    }
    s = agreement_stats(labels)
    assert s["n_items"] == 4 and s["n_comparisons"] == 4
    assert s["percent_agreement"] == pytest.approx(75.0)
    # rater order by name: alice first -> alice [a, r, r, a] vs other [a, a, r, a]
    assert s["cohen_kappa"] == pytest.approx(cohen_kappa(list("arra"), list("aara")))
    ab = next(x for x in s["by_reviewer_pair"] if x["reviewers"] == ["alice", "bob"])
    assert ab["n"] == 3 and ab["cohen_kappa"] == pytest.approx(cohen_kappa(list("arr"), list("aar")))


def test_assignment_is_deterministic_balanced_and_stable():
    roster = ["alice", "bob", "carol"]
    ids = [f"pair-{i}" for i in range(600)]
    a1 = [assign(p, roster, 2) for p in ids]
    assert a1 == [assign(p, list(reversed(roster)), 2) for p in ids]   # roster order does not matter
    assert all(len(set(x)) == 2 for x in a1)
    load = {r: sum(r in x for x in a1) for r in roster}
    assert all(300 < n < 500 for n in load.values()), load           # about 400 each
    # a reviewer joining takes over only pairs where they rank in the top k
    a2 = [assign(p, roster + ["dave"], 1) for p in ids]
    for p, x in zip(ids, a2):
        if x != (ranking(p, roster)[0],):
            assert x == ("dave",)


def test_assignment_is_sticky():
    roster = ["alice", "bob", "carol"]
    p = next(f"p{i}" for i in range(100) if ranking(f"p{i}", roster)[0] != "alice")
    assert "alice" not in assign(p, roster, 1)
    assert assign(p, roster, 1, sticky={"alice"}) == ("alice",)
    two = assign(p, roster, 2, sticky={"alice"})
    assert two[0] == "alice" and len(two) == 2
    with pytest.raises(ValueError):
        assign(p, roster, 0)


def test_locate_prefers_the_changed_occurrence():
    prompt = "a red cube is left of a blue ball; a green cone is left of a blue ball."
    perturbed = "a red cube is left of a blue ball; a green cone is right of a blue ball."
    spans, missing = locate(prompt, ["left of a blue ball", "no such words"], perturbed)
    assert missing == [1]
    (a, b, k), = spans
    assert k == 0 and prompt[a:b] == "left of a blue ball" and a > prompt.index(";")
    spans, missing = locate(perturbed, ["RIGHT of"], prompt)
    assert missing == [] and perturbed[spans[0][0]:spans[0][1]] == "right of"
