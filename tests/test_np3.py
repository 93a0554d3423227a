"""NP3 constrained refinement: worked examples, colouring, policies, outliers, properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.constraints import ConstraintGraph, ConstraintKind
from strategies.np3 import NP3, NP3Result, _dsatur, colour_graph

ML, CL = ConstraintKind.MUST_LINK, ConstraintKind.CANNOT_LINK
NO_PAIRS = np.zeros((0, 2), dtype=np.int64)


def at_angles(*degrees: float) -> np.ndarray:
    """Unit vectors in the plane: cosine similarity is the cosine of the angle between them."""
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def pairs(*p: tuple[int, int]) -> np.ndarray:
    return np.asarray(p, dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------------- worked examples
def test_algorithms_md_worked_example() -> None:
    # labels [0,0,0,0,1,1], ML {(0,4)}, CL {(1,4)}: 0 and 4 together, 1 apart
    feats = at_angles(0, 90, 5, 80, 10, 15)
    result = NP3().refine([0, 0, 0, 0, 1, 1], feats, (pairs((0, 4)), pairs((1, 4))))
    assert isinstance(result, NP3Result)
    # merge -> one cluster; split {0,4}+{2,5} (keeps 0: tie on overlap, larger) vs {1,3} (fresh id 2)
    np.testing.assert_array_equal(result.labels, [0, 2, 0, 2, 0, 0])
    assert result.n_changed == 4  # rows 1, 3 split off; rows 4, 5 merged into 0
    assert result.contradictions == ()


def test_cannot_link_triangle_needs_three_sub_clusters() -> None:
    feats = at_angles(0, 120, 240, 10, 130, 250)
    result = NP3().refine([0] * 6, feats, (NO_PAIRS, pairs((0, 1), (1, 2), (0, 2))))
    np.testing.assert_array_equal(result.labels, [0, 1, 2, 0, 1, 2])


def test_hungarian_matches_colour_classes_by_centroid() -> None:
    # two CL groups in one cluster; in the second one the B point has the lower id, so it gets
    # colour 0 first: a naive colour-index match would put it with A1; the Hungarian match must not
    feats = at_angles(0, 85, 90, 5)  # rows: A1, B2, B1, A2
    result = NP3().refine([0, 0, 0, 0], feats, (NO_PAIRS, pairs((0, 2), (1, 3))))
    np.testing.assert_array_equal(result.labels, [0, 1, 1, 0])


def test_unconstrained_must_link_groups_move_as_a_whole() -> None:
    # {3,4} is an ML group no CL touches: 3 is near A, 4 near B; it must land in one sub-cluster
    feats = at_angles(0, 90, 45, 10, 80)
    ml, cl = pairs((3, 4)), pairs((0, 1))
    result = NP3().refine([0, 0, 0, 0, 0], feats, (ml, cl))
    assert result.labels[3] == result.labels[4]
    assert result.labels[0] != result.labels[1]


def test_largest_overlap_keeps_the_original_label() -> None:
    # cluster 5 is the big one; after merging cluster 9 into it and splitting, the part that holds most
    # of the original label-5 rows keeps 5 even though it is not the first colour
    feats = at_angles(90, 0, 2, 4, 6, 88)
    labels = [9, 5, 5, 5, 5, 9]
    result = NP3().refine(labels, feats, (pairs((0, 1)), pairs((0, 2))))
    out = result.labels
    assert out[0] == out[1] and out[0] != out[2]
    assert out[2] == 5 and out[3] == 5 and out[4] == 5
    assert out[0] == 10  # fresh id right above the input labels


# ---------------------------------------------------------------------- must-link merging and outliers
def test_merged_cluster_keeps_the_label_of_its_largest_part() -> None:
    feats = at_angles(0, 1, 2, 3, 4, 5)
    result = NP3().refine([0, 0, 1, 1, 1, 2], feats, (pairs((0, 2)), NO_PAIRS))
    np.testing.assert_array_equal(result.labels, [1, 1, 1, 1, 1, 2])
    assert result.n_changed == 2


def test_outliers_join_by_must_link_and_untouched_outliers_stay_minus_one() -> None:
    feats = at_angles(0, 10, 20, 30, 40, 50, 60)
    labels = [-1, -1, -1, 0, 0, -1, 1]
    result = NP3().refine(labels, feats, (pairs((0, 1), (2, 3)), pairs((5, 6))))
    # two outliers linked together form a new cluster (fresh id 2); 2 joins cluster 0; 5 stays -1
    np.testing.assert_array_equal(result.labels, [2, 2, 0, 0, 0, -1, 1])
    assert result.n_changed == 3


def test_no_constraints_returns_identical_labels() -> None:
    feats = at_angles(0, 10, 20, 30)
    labels = np.array([3, -1, 3, 7])
    g = ConstraintGraph()
    g.mark_asked(0, 1)  # asked pairs are not constraints
    for constraints in (g, (NO_PAIRS, NO_PAIRS)):
        result = NP3().refine(labels, feats, constraints)
        np.testing.assert_array_equal(result.labels, labels)
        assert result.n_changed == 0
        assert result.labels is not labels


# ---------------------------------------------------------------------- contradiction policies
def policy_graph() -> ConstraintGraph:
    g = ConstraintGraph()
    g.add("a", 0, 1, ML)
    g.add("b", 1, 2, ML)
    g.add("c", 0, 2, CL)
    return g


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("ml_wins", [0, 0, 0, 0]),  # the CL is set aside
        ("cl_wins", [0, 0, 1, 1]),  # the weakest ML (1,2) by cosine is cut
        ("latest_wins", [1, 0, 0, 0]),  # the oldest ML (0,1) loses to the newer CL
    ],
)
def test_contradiction_policies(policy: str, expected: list[int]) -> None:
    feats = at_angles(0, 10, 80, 85)
    result = NP3(contradiction_policy=policy).refine([0, 0, 0, 0], feats, policy_graph())
    np.testing.assert_array_equal(result.labels, expected)
    (contradiction,) = result.contradictions
    assert contradiction.annotation_ids == ("c", "a", "b")


# ---------------------------------------------------------------------- colouring
def brute_chromatic_number(adjacency: list[set[int]]) -> int:
    n = len(adjacency)
    for k in range(1, n + 1):
        for colours in itertools.product(range(k), repeat=n):
            if all(colours[u] != colours[v] for u in range(n) for v in adjacency[u]):
                return k
    return n


def graph_from_edges(n: int, edges: list[tuple[int, int]]) -> list[set[int]]:
    adjacency: list[set[int]] = [set() for _ in range(n)]
    for u, v in edges:
        if u != v:
            adjacency[u].add(v)
            adjacency[v].add(u)
    return adjacency


def assert_proper(adjacency: list[set[int]], colours: np.ndarray) -> None:
    for u, nbrs in enumerate(adjacency):
        for v in nbrs:
            assert colours[u] != colours[v]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 7).flatmap(
        lambda n: st.tuples(
            st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=14)
        )
    )
)
def test_exact_colouring_is_optimal_on_small_graphs(case: tuple[int, list[tuple[int, int]]]) -> None:
    n, edges = case
    adjacency = graph_from_edges(n, edges)
    colours = colour_graph(adjacency)
    assert_proper(adjacency, colours)
    assert int(colours.max()) + 1 == brute_chromatic_number(adjacency)


def test_exact_colouring_beats_dsatur_where_dsatur_is_suboptimal() -> None:
    # found by search: plain DSATUR uses 4 colours on this 8-node graph, its chromatic number is 3
    edges = [(0, 2), (0, 3), (0, 5), (1, 2), (1, 3), (1, 4), (1, 6), (3, 7), (4, 5), (4, 6), (5, 6)]
    adjacency = graph_from_edges(8, edges)
    assert int(_dsatur(adjacency).max()) + 1 == 4
    exact = colour_graph(adjacency)
    assert_proper(adjacency, exact)
    assert int(exact.max()) + 1 == 3 == brute_chromatic_number(adjacency)
    # above the exact threshold the heuristic answer is returned as is
    assert int(colour_graph(adjacency, exact_max_nodes=7).max()) + 1 == 4
    five_cycle = graph_from_edges(5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)])
    assert int(colour_graph(five_cycle).max()) + 1 == 3
    k4 = graph_from_edges(4, list(itertools.combinations(range(4), 2)))
    assert int(colour_graph(k4).max()) + 1 == 4


def test_large_groups_use_dsatur_and_stay_proper() -> None:
    n = 41  # odd cycle above the exact threshold: DSATUR must still produce a proper colouring
    adjacency = graph_from_edges(n, [(i, (i + 1) % n) for i in range(n)])
    colours = colour_graph(adjacency, exact_max_nodes=15)
    assert_proper(adjacency, colours)
    assert int(colours.max()) + 1 == 3
    with pytest.raises(ValueError, match="adjacency"):
        colour_graph([{0}])


def test_refine_with_a_large_conflict_graph() -> None:
    rng = np.random.default_rng(3)
    n = 41
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    cl = pairs(*[(i, (i + 1) % n) for i in range(n)])
    result = NP3().refine(np.zeros(n, dtype=int), feats, (NO_PAIRS, cl))
    assert np.all(result.labels[cl[:, 0]] != result.labels[cl[:, 1]])
    assert len(np.unique(result.labels)) == 3


# ---------------------------------------------------------------------- validation
def test_refine_rejects_bad_input_naming_the_argument() -> None:
    feats = at_angles(0, 10, 20)
    np3 = NP3()
    with pytest.raises(ValueError, match="labels"):
        np3.refine(np.zeros((3, 1), dtype=int), feats, (NO_PAIRS, NO_PAIRS))
    with pytest.raises(ValueError, match="labels"):
        np3.refine([0, -2, 0], feats, (NO_PAIRS, NO_PAIRS))
    with pytest.raises(ValueError, match="labels"):
        np3.refine([0.5, 1.0, 0.0], feats, (NO_PAIRS, NO_PAIRS))
    with pytest.raises(ValueError, match="features"):
        np3.refine([0, 0], feats, (NO_PAIRS, NO_PAIRS))
    with pytest.raises(ValueError, match="features"):
        np3.refine([0, 0, 0], np.full((3, 2), np.nan), (NO_PAIRS, NO_PAIRS))
    with pytest.raises(ValueError, match="constraints"):
        np3.refine([0, 0, 0], feats, (pairs((0, 5)), NO_PAIRS))
    with pytest.raises(ValueError, match="constraints"):
        np3.refine([0, 0, 0], feats, (pairs((1, 1)), NO_PAIRS))
    with pytest.raises(ValueError, match="constraints"):
        np3.refine([0, 0, 0], feats, (np.array([0, 1, 2]), NO_PAIRS))
    with pytest.raises(ValueError, match="constraints"):
        np3.refine([0, 0, 0], feats, "ml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contradiction_policy"):
        NP3(contradiction_policy="vote").refine([0, 0, 0], feats, (NO_PAIRS, NO_PAIRS))


# ---------------------------------------------------------------------- properties
@st.composite
def refinement_case(draw: st.DrawFn, consistent: bool) -> tuple:
    n = draw(st.integers(2, 28))
    labels = np.asarray(draw(st.lists(st.integers(-1, 4), min_size=n, max_size=n)), dtype=np.int64)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 4)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    idx = st.integers(0, n - 1)
    raw = draw(st.lists(st.tuples(idx, idx), max_size=20))
    raw = [(i, j) for i, j in raw if i != j]
    if consistent:  # answers from a hidden truth: never contradictory
        truth = np.asarray(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
        ml = [(i, j) for i, j in raw if truth[i] == truth[j]]
        cl = [(i, j) for i, j in raw if truth[i] != truth[j]]
    else:
        kinds = draw(st.lists(st.booleans(), min_size=len(raw), max_size=len(raw)))
        ml = [p for p, k in zip(raw, kinds, strict=True) if k]
        cl = [p for p, k in zip(raw, kinds, strict=True) if not k]
    return labels, feats, pairs(*ml), pairs(*cl)


@settings(max_examples=80, deadline=None)
@given(refinement_case(consistent=True))
def test_every_constraint_holds_after_refinement(case: tuple) -> None:
    labels, feats, ml, cl = case
    result = NP3().refine(labels, feats, (ml, cl))
    out = result.labels
    assert out.shape == labels.shape
    if len(ml):
        assert np.all(out[ml[:, 0]] == out[ml[:, 1]])
        assert np.all(out[ml[:, 0]] >= 0)  # a linked outlier is no longer an outlier
    if len(cl):
        a, b = out[cl[:, 0]], out[cl[:, 1]]
        assert np.all((a != b) | (a == -1))  # two untouched outliers are two singletons
    assert result.n_changed == int(np.count_nonzero(out != labels))
    assert result.contradictions == ()
    # fresh ids are compact, right above the input labels
    fresh = np.unique(out[out > labels.max()])
    np.testing.assert_array_equal(fresh, labels.max(initial=-1) + 1 + np.arange(fresh.size))
    # untouched rows keep their label: rows of clusters no constraint touches
    touched = set(labels[np.concatenate([ml.ravel(), cl.ravel()])].tolist()) if len(ml) + len(cl) else set()
    untouched = np.array([lab not in touched and lab >= 0 for lab in labels], dtype=bool)
    np.testing.assert_array_equal(out[untouched], labels[untouched])


@settings(max_examples=80, deadline=None)
@given(refinement_case(consistent=False), st.sampled_from(["ml_wins", "cl_wins", "latest_wins"]))
def test_effective_constraints_hold_under_every_policy(case: tuple, policy: str) -> None:
    labels, feats, ml, cl = case
    graph = ConstraintGraph()
    for k, (i, j) in enumerate(ml.tolist()):
        graph.add(f"ml:{k}", i, j, ML)
    for k, (i, j) in enumerate(cl.tolist()):
        graph.add(f"cl:{k}", i, j, CL)
    result = NP3(contradiction_policy=policy).refine(labels, feats, graph)
    eff = graph.effective(policy, similarity=lambda i, j: float(feats[i] @ feats[j]))
    out = result.labels
    if len(eff.must_link):
        assert np.all(out[eff.must_link[:, 0]] == out[eff.must_link[:, 1]])
    if len(eff.cannot_link):
        a, b = out[eff.cannot_link[:, 0]], out[eff.cannot_link[:, 1]]
        assert np.all((a != b) | (a == -1))
    assert len(result.contradictions) == len(graph.contradictions())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-1, 6), min_size=1, max_size=30))
def test_no_constraints_property(labels: list[int]) -> None:
    feats = np.ones((len(labels), 3), dtype=np.float32) / np.sqrt(3)
    result = NP3().refine(labels, feats, (NO_PAIRS, NO_PAIRS))
    np.testing.assert_array_equal(result.labels, labels)
    assert result.n_changed == 0
