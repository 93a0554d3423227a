"""strategies/review.py: votes per pair, redundancy, contradiction review by minimum cut."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.constraints import ConstraintGraph, ConstraintKind, Relation
from strategies.identities import IdentityAssigner
from strategies.knn import build_knn
from strategies.review import AnswerReview, ReviewedAnswers

ML, CL = ConstraintKind.MUST_LINK, ConstraintKind.CANNOT_LINK
NO_REDUNDANCY = AnswerReview(redundancy_k=1)


def graph_of(*answers: tuple[str, int, int, ConstraintKind]) -> ConstraintGraph:
    g = ConstraintGraph()
    for annotation_id, i, j, kind in answers:
        g.add(annotation_id, i, j, kind)
    return g


def p_table(table: dict[tuple[int, int], float], default: float = 0.5):
    def p_same(pairs: np.ndarray) -> np.ndarray:
        return np.array([table.get((int(a), int(b)), default) for a, b in pairs])

    return p_same


def ml_pairs(out: ReviewedAnswers) -> set[tuple[int, int]]:
    return {c.pair for c in out.graph.must_links()}


def cl_pairs(out: ReviewedAnswers) -> set[tuple[int, int]]:
    return {c.pair for c in out.graph.cannot_links()}


# ---------------------------------------------------------------------- votes
def test_consistent_answers_pass_through_unchanged():
    g = graph_of(("1", 0, 1, ML), ("2", 1, 2, ML), ("3", 2, 3, CL))
    out = NO_REDUNDANCY.resolve(g)
    assert ml_pairs(out) == {(0, 1), (1, 2)} and cl_pairs(out) == {(2, 3)}
    assert out.reviews == () and out.set_aside == ()
    assert out.summary()["reviews_open"] == 0


def test_a_tie_between_annotators_is_neither_link_and_is_asked_again():
    g = graph_of(("1", 0, 1, ML), ("2", 0, 1, CL))
    out = NO_REDUNDANCY.resolve(g)
    assert ml_pairs(out) == set() and cl_pairs(out) == set()
    assert [(r.pair, r.kind) for r in out.reviews] == [((0, 1), "disagreement")]
    assert set(out.reviews[0].annotation_ids) == {"1", "2"}
    assert out.disagreements == 1
    assert out.graph.was_asked(0, 1)  # never proposed by a sampler as a new pair


def test_a_third_answer_settles_a_tie_by_majority_and_sets_the_minority_aside():
    g = graph_of(("1", 0, 1, ML), ("2", 0, 1, CL), ("3", 0, 1, CL))
    out = NO_REDUNDANCY.resolve(g)
    assert cl_pairs(out) == {(0, 1)} and ml_pairs(out) == set()
    assert out.reviews == () and out.set_aside == ("1",)


# ---------------------------------------------------------------------- contradictions
def test_a_cannot_link_inside_a_group_splits_it_at_the_weakest_must_link():
    # 0-1-2-3 answered same; 0 and 3 answered different. The model doubts (1, 2) the most.
    g = graph_of(("a", 0, 1, ML), ("b", 1, 2, ML), ("c", 2, 3, ML), ("d", 0, 3, CL))
    p = p_table({(0, 1): 0.9, (1, 2): 0.6, (2, 3): 0.95, (0, 3): 0.1})
    out = NO_REDUNDANCY.resolve(g, p)
    assert out.contradictions == 1
    assert out.split_edges == ((1, 2),)
    assert ml_pairs(out) == {(0, 1), (2, 3)} and cl_pairs(out) == {(0, 3)}
    assert [(r.pair, r.kind) for r in out.reviews] == [((1, 2), "contradiction")]
    assert out.graph.contradictions() == []
    assert out.set_aside == ("b",)


def test_more_answers_make_an_edge_stronger_than_the_models_doubt():
    # (1, 2) has two "same" answers: now (0, 1) is the weakest link even though the model likes it more
    g = graph_of(("a", 0, 1, ML), ("b", 1, 2, ML), ("b2", 1, 2, ML), ("d", 0, 2, CL), ("d2", 0, 2, CL),
                 ("d3", 0, 2, CL))
    p = p_table({(0, 1): 0.9, (1, 2): 0.3})
    out = NO_REDUNDANCY.resolve(g, p)
    assert out.split_edges == ((0, 1),)
    assert [r.pair for r in out.reviews] == [(0, 1)]


def test_a_cannot_link_weaker_than_the_cut_is_the_suspect_but_the_images_stay_apart():
    # two strong "same" paths; one "different" that the model disbelieves: the CL is the likely error
    g = graph_of(("a", 0, 1, ML), ("a2", 0, 1, ML), ("b", 1, 2, ML), ("b2", 1, 2, ML), ("d", 0, 2, CL))
    p = p_table({(0, 1): 0.9, (1, 2): 0.9, (0, 2): 0.95})
    out = NO_REDUNDANCY.resolve(g, p)
    assert [(r.pair, r.kind) for r in out.reviews] == [((0, 2), "contradiction")]
    assert out.graph.relation(0, 2) is not Relation.SAME  # split until resolved


def test_a_cycle_of_must_links_is_cut_on_both_sides():
    # 0-1-2-0 triangle plus a cannot-link 0-2... the min cut separating 0 and 2 takes two edges
    g = graph_of(("a", 0, 1, ML), ("b", 1, 2, ML), ("c", 0, 2, ML), ("x", 0, 3, ML), ("d", 2, 3, CL),
                 ("d2", 2, 3, CL), ("d3", 2, 3, CL), ("d4", 2, 3, CL))
    out = NO_REDUNDANCY.resolve(g, p_table({}, 0.8))
    assert out.graph.contradictions() == []
    assert out.graph.relation(2, 3) is Relation.DIFFERENT
    assert set(out.split_edges) in ({(0, 3)}, {(0, 2), (1, 2)})
    assert out.split_edges == ((0, 3),)  # one edge of weight 1.8 beats two


def test_the_review_answer_resolves_the_contradiction():
    g = graph_of(("a", 0, 1, ML), ("b", 1, 2, ML), ("d", 0, 2, CL))
    p = p_table({(0, 1): 0.9, (1, 2): 0.4, (0, 2): 0.2})
    first = NO_REDUNDANCY.resolve(g, p)
    assert [r.pair for r in first.reviews] == [(1, 2)]
    g.add("review-1", 1, 2, CL)  # the second look says "different": a tie on (1, 2) ...
    tie = NO_REDUNDANCY.resolve(g, p)
    assert tie.contradictions == 0 and [r.kind for r in tie.reviews] == ["disagreement"]
    g.add("review-2", 1, 2, CL)  # ... which a third answer settles
    done = NO_REDUNDANCY.resolve(g, p)
    assert done.reviews == () and done.contradictions == 0
    assert done.graph.relation(0, 1) is Relation.SAME and done.graph.relation(1, 2) is Relation.DIFFERENT


def test_confirming_the_suspect_moves_the_suspicion_to_the_next_weakest_link():
    g = graph_of(("a", 0, 1, ML), ("b", 1, 2, ML), ("d", 0, 2, CL))
    p = p_table({(0, 1): 0.9, (1, 2): 0.4, (0, 2): 0.2})
    g.add("review-1", 1, 2, ML)
    out = NO_REDUNDANCY.resolve(g, p)
    # (1, 2) now has two answers behind it (2.4); the cut is (0, 1) at 1.9, the "different" weighs 1.8
    assert [(r.pair, r.kind) for r in out.reviews] == [((0, 2), "contradiction")]
    assert out.split_edges == ((0, 1),) and out.graph.relation(0, 2) is not Relation.SAME
    g.add("review-2", 0, 2, ML)  # the "different" was the mistake: a tie on (0, 2), the group rejoins
    out = NO_REDUNDANCY.resolve(g, p)
    assert out.contradictions == 0 and [r.kind for r in out.reviews] == ["disagreement"]
    assert out.graph.relation(0, 2) is Relation.SAME


# ---------------------------------------------------------------------- redundancy
def test_merging_two_groups_waits_for_a_second_opinion():
    g = graph_of(("a", 0, 1, ML), ("b", 2, 3, ML), ("c", 1, 2, ML))
    out = AnswerReview(redundancy_k=2, redundancy_min_size=2, redundancy_max_p_same=0.0).resolve(g)
    assert ml_pairs(out) == {(0, 1), (2, 3)}
    assert [(r.pair, r.kind) for r in out.reviews] == [((1, 2), "second_opinion")]
    assert out.held == 1 and out.set_aside == ("c",)
    g.add("c2", 1, 2, ML)
    merged = AnswerReview(redundancy_k=2, redundancy_min_size=2, redundancy_max_p_same=0.0).resolve(g)
    assert merged.reviews == () and merged.graph.relation(0, 3) is Relation.SAME


def test_a_second_opinion_that_disagrees_makes_a_tie():
    g = graph_of(("a", 0, 1, ML), ("b", 2, 3, ML), ("c", 1, 2, ML), ("c2", 1, 2, CL))
    out = AnswerReview(redundancy_k=2, redundancy_max_p_same=0.0).resolve(g)
    assert [(r.pair, r.kind) for r in out.reviews] == [((1, 2), "disagreement")]
    assert out.graph.relation(0, 3) is Relation.UNKNOWN


def test_small_merges_pass_and_the_model_can_still_ask_for_a_second_opinion():
    g = graph_of(("a", 0, 1, ML), ("b", 2, 3, ML))
    review = AnswerReview(redundancy_k=2, redundancy_min_size=2, redundancy_max_p_same=0.2)
    out = review.resolve(g, p_table({(0, 1): 0.9, (2, 3): 0.05}))
    assert ml_pairs(out) == {(0, 1)}
    assert [(r.pair, r.kind) for r in out.reviews] == [((2, 3), "second_opinion")]
    assert "P(same) 0.05" in out.reviews[0].reason


def test_redundancy_k_1_turns_it_off():
    g = graph_of(("a", 0, 1, ML), ("b", 2, 3, ML), ("c", 1, 2, ML))
    out = AnswerReview(redundancy_k=1).resolve(g, p_table({}, 0.0))
    assert ml_pairs(out) == {(0, 1), (2, 3), (1, 2)} and out.reviews == ()


def test_reviews_are_ordered_contradiction_disagreement_second_opinion():
    g = graph_of(("a", 0, 1, ML), ("b", 1, 2, ML), ("d", 0, 2, CL),  # contradiction
                 ("e", 5, 6, ML), ("e2", 5, 6, CL),  # disagreement
                 ("f", 7, 8, ML), ("g", 9, 10, ML), ("h", 8, 9, ML))  # held merge
    out = AnswerReview(redundancy_k=2, redundancy_max_p_same=0.0).resolve(g)
    assert [r.kind for r in out.reviews] == ["contradiction", "disagreement", "second_opinion"]
    assert out.summary()["reviews_contradiction"] == 1


def test_asked_pairs_stay_asked():
    g = graph_of(("a", 0, 1, ML))
    g.mark_asked(4, 5)
    out = NO_REDUNDANCY.resolve(g)
    assert out.graph.was_asked(4, 5) and out.graph.was_asked(0, 1)


@pytest.mark.parametrize(
    ("params", "message"),
    [({"redundancy_k": 0}, "redundancy_k"), ({"redundancy_min_size": 0}, "redundancy_min_size"),
     ({"redundancy_max_p_same": 1.5}, "redundancy_max_p_same"), ({"redundancy_k": True}, "redundancy_k")],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        AnswerReview(**params).resolve(ConstraintGraph())


def test_bad_p_same_is_refused():
    g = graph_of(("a", 0, 1, ML))
    with pytest.raises(ValueError, match="p_same"):
        NO_REDUNDANCY.resolve(g, lambda pairs: np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="p_same"):
        NO_REDUNDANCY.resolve(g, lambda pairs: np.array([np.nan]))
    with pytest.raises(TypeError, match="constraints"):
        NO_REDUNDANCY.resolve([("a", 0, 1)])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- properties
answers_st = st.lists(
    st.tuples(st.integers(0, 7), st.integers(0, 7), st.booleans()).filter(lambda t: t[0] != t[1]),
    max_size=24,
)
p_values_st = st.dictionaries(st.tuples(st.integers(0, 7), st.integers(0, 7)), st.floats(0, 1), max_size=30)


def _graph(answers: list[tuple[int, int, bool]]) -> ConstraintGraph:
    g = ConstraintGraph()
    for k, (i, j, same) in enumerate(answers):
        g.add(f"x{k}", i, j, ML if same else CL)
    return g


def _p(table: dict[tuple[int, int], float]):
    return p_table({(min(a, b), max(a, b)): v for (a, b), v in table.items() if a != b})


@settings(max_examples=150, deadline=None)
@given(answers=answers_st, table=p_values_st, k=st.integers(1, 3), size=st.integers(1, 3))
def test_trusted_answers_hold_no_contradiction_and_open_ones_never_merge(answers, table, k, size):
    out = AnswerReview(redundancy_k=k, redundancy_min_size=size).resolve(_graph(answers), _p(table))
    assert out.graph.contradictions() == []
    # every cannot-link of a majority verdict keeps its images apart: also in the identity assignment
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = IdentityAssigner(min_p_same=0.0).assign(x, out.graph, build_knn(x, 8)).labels
    for c in out.graph.cannot_links():
        assert labels[c.i] != labels[c.j]


@settings(max_examples=150, deadline=None)
@given(answers=answers_st, table=p_values_st, data=st.data())
def test_without_redundancy_the_arrival_order_does_not_matter(answers, table, data):
    order = data.draw(st.permutations(range(len(answers))))
    a = NO_REDUNDANCY.resolve(_graph(answers), _p(table))
    b = NO_REDUNDANCY.resolve(_graph([answers[k] for k in order]), _p(table))
    assert ml_pairs(a) == ml_pairs(b) and cl_pairs(a) == cl_pairs(b)
    assert [(r.pair, r.kind) for r in a.reviews] == [(r.pair, r.kind) for r in b.reviews]


@settings(max_examples=100, deadline=None)
@given(answers=answers_st, table=p_values_st, k=st.integers(1, 3))
def test_a_pair_verdict_follows_its_majority(answers, table, k):
    out = AnswerReview(redundancy_k=k).resolve(_graph(answers), _p(table))
    net: dict[tuple[int, int], int] = {}
    for i, j, same in answers:
        pair = (min(i, j), max(i, j))
        net[pair] = net.get(pair, 0) + (1 if same else -1)
    kept = {c.pair: c.kind for c in out.graph}
    for pair, kind in kept.items():
        assert (net[pair] > 0) == (kind is ML)
    reviewed = {r.pair for r in out.reviews}
    for pair, v in net.items():
        if v == 0:
            assert pair not in kept and pair in reviewed
        if v < 0:
            assert kept.get(pair) is CL


@settings(max_examples=100, deadline=None)
@given(answers=answers_st, table=p_values_st, k=st.integers(1, 3), data=st.data())
def test_who_answered_a_pair_first_does_not_matter(answers, table, k, data):
    # reorder the answers of every pair among their own places: each pair keeps its place in the replay
    places: dict[tuple[int, int], list[int]] = {}
    for index, (i, j, _same) in enumerate(answers):
        places.setdefault((min(i, j), max(i, j)), []).append(index)
    shuffled = list(answers)
    for slots in places.values():
        for src, dst in zip(slots, data.draw(st.permutations(slots)), strict=True):
            shuffled[dst] = answers[src]
    review = AnswerReview(redundancy_k=k)
    a, b = review.resolve(_graph(answers), _p(table)), review.resolve(_graph(shuffled), _p(table))
    assert ml_pairs(a) == ml_pairs(b) and cl_pairs(a) == cl_pairs(b)
    assert [(r.pair, r.kind) for r in a.reviews] == [(r.pair, r.kind) for r in b.reviews]


# ---------------------------------------------------------------------- conflicts
def test_conflicts_count_pairs_answered_both_ways_and_open_contradictions():
    consistent = NO_REDUNDANCY.resolve(graph_of(("1", 0, 1, ML), ("2", 1, 2, ML), ("3", 2, 3, CL)))
    assert consistent.conflicts == 0 and consistent.summary()["answers_in_conflict"] == 0
    both_ways = NO_REDUNDANCY.resolve(graph_of(("1", 0, 1, ML), ("2", 0, 1, CL), ("3", 0, 1, ML)))
    assert both_ways.conflicts == 1  # settled by the majority, but someone erred
    contradiction = NO_REDUNDANCY.resolve(graph_of(("1", 0, 1, ML), ("2", 1, 2, ML), ("3", 0, 2, CL)))
    assert contradiction.contradictions == 1 and contradiction.conflicts == 1
    assert contradiction.summary()["answers_in_conflict"] == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=20), st.integers(0, 3))
def test_answers_from_one_truth_never_conflict(pairs, seed):
    """A perfect annotator (answers from fixed identities) never produces a conflict."""
    truth = np.random.default_rng(seed).integers(0, 3, size=8)
    g = ConstraintGraph()
    for k, (i, j) in enumerate(pairs):
        if i != j:
            g.add(str(k), i, j, ML if truth[i] == truth[j] else CL)
    assert AnswerReview().resolve(g).conflicts == 0
