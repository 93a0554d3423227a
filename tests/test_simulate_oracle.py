"""The simulated annotator, and what its answers do to a constraint graph."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from strategies.constraints import ConstraintGraph, ConstraintKind, Relation
from trainer.simulate.oracle import Answer, Oracle
from trainer.simulate.runner import transitivity_counts

LABELS = np.repeat(np.arange(20), 5)  # 20 identities × 5 images


def _random_pairs(n: int, k: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < k:
        i, j = (int(v) for v in rng.integers(0, n, 2))
        if i != j:
            pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def _feed(graph: ConstraintGraph, oracle: Oracle, pairs: list[tuple[int, int]]) -> None:
    for k, (i, j) in enumerate(pairs):
        ans = oracle.answer(i, j)
        graph.mark_asked(i, j)
        if ans.answer is Answer.UNSURE:
            continue
        graph.add(
            k, i, j, ConstraintKind.MUST_LINK if ans.answer is Answer.SAME else ConstraintKind.CANNOT_LINK
        )


def test_perfect_oracle_tells_the_truth() -> None:
    oracle = Oracle(LABELS)
    for i, j in _random_pairs(LABELS.size, 300):
        ans = oracle.answer(i, j)
        assert ans.truth_same == (LABELS[i] == LABELS[j])
        assert (ans.answer is Answer.SAME) == ans.truth_same and not ans.wrong


def test_answers_are_symmetric_and_order_independent() -> None:
    oracle = Oracle(LABELS, noise_rate=0.3, unsure_rate=0.2, random_state=5)
    pairs = _random_pairs(LABELS.size, 200)
    forward = [oracle.answer(i, j) for i, j in pairs]
    backward = [oracle.answer(j, i) for i, j in reversed(pairs)][::-1]
    assert forward == backward
    assert oracle.answer_pairs(pairs) == forward


def test_noise_and_unsure_rates_are_honoured() -> None:
    pairs = _random_pairs(LABELS.size, 3000)
    answers = Oracle(LABELS, noise_rate=0.2, unsure_rate=0.1, random_state=1).answer_pairs(pairs)
    unsure = sum(a.answer is Answer.UNSURE for a in answers)
    confident = [a for a in answers if a.answer is not Answer.UNSURE]
    wrong = sum(a.wrong for a in confident)
    assert 0.08 < unsure / len(answers) < 0.12
    assert 0.17 < wrong / len(confident) < 0.23
    # a wrong answer is exactly a confident answer that disagrees with the truth
    assert all(a.wrong == ((a.answer is Answer.SAME) != a.truth_same) for a in confident)
    assert not any(a.wrong for a in answers if a.answer is Answer.UNSURE)


def test_seed_changes_which_answers_are_wrong() -> None:
    pairs = _random_pairs(LABELS.size, 500)
    a = [x.wrong for x in Oracle(LABELS, noise_rate=0.3, random_state=0).answer_pairs(pairs)]
    b = [x.wrong for x in Oracle(LABELS, noise_rate=0.3, random_state=1).answer_pairs(pairs)]
    assert a != b


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"noise_rate": 1.5}, "noise_rate"), ({"unsure_rate": -0.1}, "unsure_rate")],
)
def test_oracle_rejects_bad_rates(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Oracle(LABELS, **kwargs).answer(0, 1)


def test_oracle_rejects_bad_pairs_and_labels() -> None:
    with pytest.raises(ValueError, match="pair"):
        Oracle(LABELS).answer(3, 3)
    with pytest.raises(IndexError, match="out of range"):
        Oracle(LABELS).answer(0, LABELS.size)
    with pytest.raises(ValueError, match="labels"):
        Oracle(np.zeros((2, 2))).answer(0, 1)


def test_perfect_oracle_never_produces_a_contradiction() -> None:
    graph = ConstraintGraph()
    # many pairs inside few identities: lots of transitive closure to contradict, if answers could
    _feed(graph, Oracle(LABELS, random_state=0), _random_pairs(LABELS.size, 1500, seed=2))
    assert len(graph) == 1500
    assert graph.contradictions() == []


def test_noisy_oracle_contradictions_appear() -> None:
    graph = ConstraintGraph()
    _feed(graph, Oracle(LABELS, noise_rate=0.2, random_state=0), _random_pairs(LABELS.size, 1500, seed=2))
    assert len(graph.contradictions()) > 0


def test_unsure_answers_are_asked_but_not_constrained() -> None:
    graph = ConstraintGraph()
    pairs = _random_pairs(LABELS.size, 50)
    _feed(graph, Oracle(LABELS, unsure_rate=1.0), pairs)
    assert len(graph) == 0
    assert all(graph.was_asked(i, j) for i, j in pairs)


# ------------------------------------------------------------------------------------------ transitivity
def test_transitivity_counts_worked_example() -> None:
    g = ConstraintGraph()
    g.add("a", 0, 1, ConstraintKind.MUST_LINK)
    g.add("b", 1, 2, ConstraintKind.MUST_LINK)
    g.add("c", 2, 3, ConstraintKind.CANNOT_LINK)
    counts = transitivity_counts(g, 6)
    # implied: same {01, 02, 12}; different {03, 13, 23}; 3 of those 6 were asked directly
    assert counts == {
        "implied_same": 3,
        "implied_different": 3,
        "pairs_constrained": 3,
        "pairs_by_transitivity": 3,
    }


def test_transitivity_ignores_contradictory_cannot_links() -> None:
    g = ConstraintGraph()
    g.add("a", 0, 1, ConstraintKind.MUST_LINK)
    g.add("b", 1, 2, ConstraintKind.MUST_LINK)
    g.add("c", 0, 2, ConstraintKind.CANNOT_LINK)  # contradiction: implies nothing "different"
    counts = transitivity_counts(g, 4)
    assert counts["implied_different"] == 0
    assert counts["pairs_by_transitivity"] == 0  # all 3 pairs of the component were asked


@pytest.mark.parametrize("noise", [0.0, 0.25])
def test_transitivity_counts_match_brute_force(noise: float) -> None:
    n = 40
    labels = np.repeat(np.arange(8), 5)
    g = ConstraintGraph()
    _feed(g, Oracle(labels, noise_rate=noise, random_state=3), _random_pairs(n, 60, seed=4))
    direct = {c.pair for c in g}
    brute = sum(
        1
        for i, j in itertools.combinations(range(n), 2)
        if g.relation(i, j) is not Relation.UNKNOWN and (i, j) not in direct
    )
    assert transitivity_counts(g, n)["pairs_by_transitivity"] == brute


def test_a_second_look_draws_its_own_noise() -> None:
    oracle = Oracle(LABELS, noise_rate=0.3, random_state=4)
    pairs = _random_pairs(LABELS.size, 400)
    first = [oracle.answer(i, j) for i, j in pairs]
    again = [oracle.answer(i, j, 0) for i, j in pairs]
    second = [oracle.answer(i, j, 1) for i, j in pairs]
    assert first == again  # attempt 0 is the first look, as before
    wrong1 = np.array([a.wrong for a in first])
    wrong2 = np.array([a.wrong for a in second])
    assert 0.2 < wrong2.mean() < 0.4
    both = (wrong1 & wrong2).mean()
    assert both < 0.15  # independent: about 0.3 * 0.3, not 0.3
    assert second == [oracle.answer(i, j, 1) for i, j in pairs]  # still a pure function
    with pytest.raises(ValueError, match="attempt"):
        oracle.answer(0, 1, -1)
