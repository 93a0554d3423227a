"""The stopping rule: which answers change the identities, and WBIA's refresh criterion on them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.stopping import RefreshCriterion, label_changing

pair_lists = st.lists(
    st.tuples(st.integers(0, 9), st.integers(0, 9)).filter(lambda p: p[0] != p[1]), max_size=40
)


def test_label_changing_on_a_worked_example() -> None:
    pairs = np.array([[0, 1], [1, 2], [0, 2], [0, 2], [3, 4], [3, 4], [5, 6], [1, 3], [7, 8], [5, 6]])
    same = np.array([True, True, True, False, False, False, False, True, True, True])
    inferred = np.array([False, False, False, False, True, True, False, True, False, False])
    assert label_changing(pairs, same, inferred).tolist() == [
        True,  # merge {0} + {1}
        True,  # merge {0,1} + {2}
        False,  # 0 and 2 already in one component: implied
        True,  # "different" inside a component: a contradiction
        True,  # separates images the assignment had together
        False,  # already separated by the previous answer
        False,  # 5 and 6 were apart in the assignment: nothing changes
        False,  # 1 and 3 were together in the assignment: verified, not changed
        True,  # joins 7 and 8, apart in the assignment
        True,  # "same" across a cannot-link: a contradiction
    ]


def test_label_changing_without_inferred_counts_only_merges_and_contradictions() -> None:
    pairs = np.array([[0, 1], [2, 3], [0, 1]])
    assert label_changing(pairs, np.array([False, True, True])).tolist() == [False, True, True]


@pytest.mark.parametrize(
    ("pairs", "same", "inferred", "message"),
    [
        (np.array([[0, 1, 2]]), np.array([True]), None, "pairs"),
        (np.array([[0.0, 1.0]]), np.array([True]), None, "integer"),
        (np.array([[0, 1]]), np.array([True, False]), None, "same"),
        (np.array([[0, 1]]), np.array([1]), None, "booleans"),
        (np.array([[0, 1]]), np.array([True]), np.array([True, True]), "inferred_same"),
        (np.array([[2, 2]]), np.array([True]), None, "two different"),
        (np.array([[-1, 2]]), np.array([True]), None, "non-negative"),
    ],
)
def test_label_changing_refuses_bad_input(pairs, same, inferred, message) -> None:
    with pytest.raises(ValueError, match=message):
        label_changing(pairs, same, inferred)


def test_no_answers_change_nothing() -> None:
    assert label_changing(np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=bool)).shape == (0,)
    estimate = RefreshCriterion().estimate(np.zeros(0, dtype=bool))
    assert estimate.answers == 0 and estimate.rate == 1.0 and not estimate.reached


@given(pair_lists)
@settings(max_examples=60, deadline=None)
def test_same_answers_change_exactly_the_merges(pairs: list[tuple[int, int]]) -> None:
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    changed = label_changing(arr, np.ones(len(pairs), dtype=bool))
    nodes = sorted({x for p in pairs for x in p})
    parent = {x: x for x in nodes}

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    components = len({find(x) for x in nodes})
    assert int(changed.sum()) == len(nodes) - components


@given(pair_lists, st.data())
@settings(max_examples=60, deadline=None)
def test_repeating_every_answer_changes_nothing_more(
    pairs: list[tuple[int, int]], data: st.DataObject
) -> None:
    k = len(pairs)
    same = np.array(data.draw(st.lists(st.booleans(), min_size=k, max_size=k)), dtype=bool)
    inferred = np.array(data.draw(st.lists(st.booleans(), min_size=k, max_size=k)), dtype=bool)
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    twice = label_changing(
        np.vstack([arr, arr]), np.concatenate([same, same]), np.concatenate([inferred, inferred])
    )
    assert twice[:k].tolist() == label_changing(arr, same, inferred).tolist()
    # a repeated "same" is implied; a repeated "different" changes something exactly where the
    # answers joined its two images by must-links (a contradiction), never because it is new
    parent = list(range(10))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for (a, b), s in zip(pairs, same, strict=True):
        if s:
            parent[find(a)] = find(b)
    joined = np.array([find(a) == find(b) for a, b in pairs], dtype=bool)
    assert not twice[k:][same].any()
    assert twice[k:][~same].tolist() == joined[~same].tolist()


def test_defaults_stop_after_66_answers_that_change_nothing() -> None:
    rule = RefreshCriterion()
    assert (rule.window, rule.patience, rule.threshold) == (20, 72, 0.1)
    start = [True] * 10
    assert not rule.estimate(np.array(start + [False] * 65)).reached
    done = rule.estimate(np.array(start + [False] * 66))
    assert done.reached and done.p_any_change < 0.1 and done.label_changing == 10 and done.answers == 76
    assert not rule.estimate(np.array(start + [False] * 66 + [True])).reached


def test_estimate_follows_the_ewma_and_binomial_formula() -> None:
    rule = RefreshCriterion(window=3, patience=4, threshold=0.5)
    estimate = rule.estimate(np.array([False, True, False]))
    alpha = 0.5
    mu = 1.0
    for flag in (0, 1, 0):
        mu = alpha * flag + (1 - alpha) * mu
    assert estimate.rate == pytest.approx(mu)
    assert estimate.p_any_change == pytest.approx(1 - (1 - mu) ** 4)
    assert estimate.rate_trace.tolist() == pytest.approx([0.5, 0.75, 0.375])
    assert estimate.p_trace[-1] == pytest.approx(estimate.p_any_change)
    assert estimate.to_dict()["p_any_change"] == pytest.approx(estimate.p_any_change)
    assert "rate_trace" not in estimate.to_dict()


@given(st.lists(st.booleans(), max_size=80), st.integers(1, 50), st.integers(1, 200), st.floats(0.01, 0.99))
@settings(max_examples=80, deadline=None)
def test_a_changing_answer_never_lowers_the_chance(
    flags: list[bool], window: int, patience: int, threshold: float
) -> None:
    rule = RefreshCriterion(window=window, patience=patience, threshold=threshold)
    base = np.array(flags, dtype=bool)
    with_change = rule.estimate(np.append(base, True))
    without = rule.estimate(np.append(base, False))
    assert 0.0 <= without.rate <= with_change.rate <= 1.0
    assert without.p_any_change <= with_change.p_any_change
    assert with_change.reached <= without.reached
    assert np.all(np.diff(rule.p_any(np.linspace(0, 1, 11))) >= 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window"),
        ({"patience": 0}, "patience"),
        ({"patience": 2.5}, "patience"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.0}, "threshold"),
        ({"window": True}, "window"),
    ],
)
def test_criterion_refuses_bad_parameters(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        RefreshCriterion(**kwargs).estimate(np.array([True]))


def test_estimate_refuses_non_boolean_flags() -> None:
    with pytest.raises(ValueError, match="changing"):
        RefreshCriterion().estimate(np.array([1, 0]))
    with pytest.raises(ValueError, match="changing"):
        RefreshCriterion().estimate(np.zeros((2, 2), dtype=bool))
