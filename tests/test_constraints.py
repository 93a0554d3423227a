"""ConstraintGraph: editing by annotation id, implied relations, contradictions, policies, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.constraints import (
    Constraint,
    ConstraintGraph,
    ConstraintKind,
    Relation,
)

ML, CL = ConstraintKind.MUST_LINK, ConstraintKind.CANNOT_LINK


def chain_contradiction() -> ConstraintGraph:
    """ML(0,1) ML(1,2) CL(0,2): the canonical contradiction, oldest first."""
    g = ConstraintGraph()
    g.add("a", 0, 1, ML)
    g.add("b", 1, 2, ML)
    g.add("c", 0, 2, CL)
    return g


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("x", 3, 3, ML), "i, j"),
        (("x", -1, 3, ML), "i"),
        (("x", 1, -3, ML), "j"),
        (("x", 1, 2, "maybe"), "kind"),
        (("x", 1.5, 2, ML), "i"),
        (("x", True, 2, ML), "i"),
        (("", 1, 2, ML), "annotation_id"),
        ((None, 1, 2, ML), "annotation_id"),
        ((1.0, 1, 2, ML), "annotation_id"),
    ],
)
def test_add_rejects_bad_input_naming_the_argument(args: tuple, match: str) -> None:
    g = ConstraintGraph()
    with pytest.raises(ValueError, match=match):
        g.add(*args)
    assert len(g) == 0  # nothing recorded


def test_mark_asked_and_queries_validate_pairs() -> None:
    g = ConstraintGraph()
    with pytest.raises(ValueError, match="i, j"):
        g.mark_asked(2, 2)
    with pytest.raises(ValueError, match="j"):
        g.relation(0, -5)
    with pytest.raises(ValueError, match="n"):
        g.component_labels(-1)


def test_kind_spellings_and_id_normalisation() -> None:
    g = ConstraintGraph()
    c = g.add(7, np.int64(5), 2, "ML")
    assert c == Constraint("7", 2, 5, ML)
    assert g.add("8", 1, 0, "cannot-link").kind is CL
    assert "7" in g and 7 in g and "9" not in g
    assert g.get(7) == c


# ---------------------------------------------------------------------- editing
def test_add_replace_remove_by_annotation_id() -> None:
    g = ConstraintGraph()
    g.add(1, 0, 1, ML)
    g.add(2, 1, 2, ML)
    assert g.relation(0, 2) is Relation.SAME
    assert g.remove(2) is True
    assert g.remove(2) is False  # unknown id
    assert g.relation(0, 2) is Relation.UNKNOWN
    assert g.relation(0, 1) is Relation.SAME
    # an update replaces exactly one constraint and becomes the newest
    g.add(3, 5, 6, CL)
    g.add(1, 0, 1, CL)
    assert len(g) == 2
    assert [c.annotation_id for c in g] == ["3", "1"]
    assert g.relation(0, 1) is Relation.DIFFERENT
    assert g.must_links() == []


def test_identical_re_add_is_a_no_op_keeping_the_order() -> None:
    g = ConstraintGraph()
    g.add("a", 0, 1, ML)
    g.add("b", 2, 3, CL)
    before = g.to_json()
    g.add("a", 1, 0, "must_link")  # webhook retry, same answer
    assert g.to_json() == before


def test_two_annotators_on_one_pair_are_both_kept() -> None:
    g = ConstraintGraph()
    g.add("ann1", 3, 4, ML)
    g.add("ann2", 4, 3, ML)
    assert len(g) == 2
    g.remove("ann1")
    assert g.relation(3, 4) is Relation.SAME  # the other annotation still holds it
    assert g.was_asked(3, 4)
    g.remove("ann2")
    assert g.relation(3, 4) is Relation.UNKNOWN
    assert not g.was_asked(3, 4)


def test_insertion_order_of_must_and_cannot_links() -> None:
    g = ConstraintGraph()
    for k, (i, j, kind) in enumerate([(0, 1, ML), (2, 3, CL), (4, 5, ML), (6, 7, CL), (1, 9, ML)]):
        g.add(f"id{k}", i, j, kind)
    assert [c.annotation_id for c in g.must_links()] == ["id0", "id2", "id4"]
    assert [c.annotation_id for c in g.cannot_links()] == ["id1", "id3"]


# ---------------------------------------------------------------------- relations
def test_relation_transitivity_and_component_level_cannot_links() -> None:
    g = ConstraintGraph()
    g.add(1, 0, 1, ML)
    g.add(2, 2, 3, ML)
    g.add(3, 1, 3, CL)  # a CL between points is a CL between their components
    assert g.relation(0, 2) is Relation.DIFFERENT
    assert g.relation(2, 0) is Relation.DIFFERENT
    assert g.relation(0, 1) is Relation.SAME
    assert g.relation(0, 4) is Relation.UNKNOWN
    g.add(4, 3, 4, ML)  # the component grows after the CL was recorded
    assert g.relation(0, 4) is Relation.DIFFERENT
    g.add(5, 5, 0, ML)
    assert g.relation(5, 4) is Relation.DIFFERENT


def test_asked_pairs_and_is_resolved() -> None:
    g = ConstraintGraph()
    g.mark_asked(9, 2)
    assert g.was_asked(2, 9) and g.is_resolved(2, 9)
    assert g.relation(2, 9) is Relation.UNKNOWN
    g.add("x", 0, 1, ML)
    g.add("y", 1, 2, ML)
    assert not g.was_asked(0, 2)
    assert g.is_resolved(0, 2)  # implied, never asked
    assert not g.is_resolved(0, 3)
    assert g.asked_pairs() == [(2, 9)]


def test_node_ids_are_unbounded() -> None:
    g = ConstraintGraph()
    big = 10**12
    g.add("a", big, big + 1, ML)
    g.add("b", big + 1, 3, CL)
    assert g.relation(big, 3) is Relation.DIFFERENT
    assert g.max_node() == big + 1


def test_component_labels_numbered_by_first_row() -> None:
    g = ConstraintGraph()
    g.add(1, 3, 5, ML)
    g.add(2, 0, 4, ML)
    g.add(3, 4, 6, ML)
    g.add(4, 1, 2, CL)
    np.testing.assert_array_equal(g.component_labels(8), [0, 1, 2, 3, 0, 3, 0, 4])
    assert ConstraintGraph().component_labels(0).shape == (0,)
    with pytest.raises(ValueError, match="n"):
        g.component_labels(6)  # row 6 is constrained


# ---------------------------------------------------------------------- contradictions
def test_contradiction_lists_the_cannot_link_and_the_must_link_path() -> None:
    g = chain_contradiction()
    g.add("d", 7, 8, ML)
    (c,) = g.contradictions()
    assert c.cannot_link.annotation_id == "c"
    assert [m.annotation_id for m in c.must_links] == ["a", "b"]
    assert c.annotation_ids == ("c", "a", "b")
    # ml_wins is the default reading of relation(): the pair is SAME, not DIFFERENT
    assert g.relation(0, 2) is Relation.SAME


def test_ml_and_cl_on_one_pair_is_a_contradiction_not_an_overwrite() -> None:
    g = ConstraintGraph()
    g.add("ann1", 1, 2, ML)
    g.add("ann2", 1, 2, CL)
    assert len(g) == 2
    (c,) = g.contradictions()
    assert c.annotation_ids == ("ann2", "ann1")
    g.remove("ann1")
    assert g.contradictions() == []
    assert g.relation(1, 2) is Relation.DIFFERENT


def test_no_contradictions_when_consistent() -> None:
    g = ConstraintGraph()
    g.add(1, 0, 1, ML)
    g.add(2, 1, 2, CL)
    assert g.contradictions() == []


# ---------------------------------------------------------------------- policies
def test_effective_ml_wins_drops_the_cannot_link() -> None:
    eff = chain_contradiction().effective("ml_wins")
    np.testing.assert_array_equal(eff.must_link, [[0, 1], [1, 2]])
    assert eff.cannot_link.shape == (0, 2)
    assert [c.annotation_id for c in eff.dropped] == ["c"]
    assert len(eff.contradictions) == 1


def test_effective_cl_wins_cuts_the_weakest_edge_by_similarity() -> None:
    sims = {(0, 1): 0.9, (1, 2): 0.2}
    eff = chain_contradiction().effective("cl_wins", similarity=lambda i, j: sims[(i, j)])
    np.testing.assert_array_equal(eff.must_link, [[0, 1]])
    np.testing.assert_array_equal(eff.cannot_link, [[0, 2]])
    assert [c.annotation_id for c in eff.dropped] == ["b"]
    sims = {(0, 1): 0.1, (1, 2): 0.2}
    eff = chain_contradiction().effective("cl_wins", similarity=lambda i, j: sims[(i, j)])
    assert [c.annotation_id for c in eff.dropped] == ["a"]


def test_effective_cl_wins_without_similarity_cuts_the_most_recent_and_repeats() -> None:
    g = ConstraintGraph()
    # two parallel paths 0-1-3 and 0-2-3 join the ends of CL(0,3): one cut is not enough
    g.add("p", 0, 1, ML)
    g.add("q", 1, 3, ML)
    g.add("r", 0, 2, ML)
    g.add("s", 2, 3, ML)
    g.add("cl", 0, 3, CL)
    eff = g.effective("cl_wins")
    assert {c.annotation_id for c in eff.dropped} == {"s", "q"}
    np.testing.assert_array_equal(eff.must_link, [[0, 1], [0, 2]])
    np.testing.assert_array_equal(eff.cannot_link, [[0, 3]])


def test_effective_latest_wins() -> None:
    g = chain_contradiction()  # the CL is newest: it wins over the oldest ML on the path
    eff = g.effective("latest_wins")
    assert [c.annotation_id for c in eff.dropped] == ["a"]
    np.testing.assert_array_equal(eff.must_link, [[1, 2]])
    np.testing.assert_array_equal(eff.cannot_link, [[0, 2]])
    g.add("a", 0, 1, CL)  # "a" edited twice: now the newest, so it is kept and the oldest ML "b" loses
    g.add("a", 0, 1, ML)
    eff = g.effective("latest_wins")
    assert [c.annotation_id for c in eff.dropped] == ["b"]
    np.testing.assert_array_equal(eff.must_link, [[0, 1]])
    np.testing.assert_array_equal(eff.cannot_link, [[0, 2]])
    g.add("z", 1, 2, ML)  # a newer ML on the path: now the CL is the oldest link of the cycle and loses
    eff = g.effective("latest_wins")
    assert [c.annotation_id for c in eff.dropped] == ["c"]
    assert eff.cannot_link.shape == (0, 2)


def test_effective_rejects_unknown_policy_and_bad_similarity() -> None:
    g = chain_contradiction()
    with pytest.raises(ValueError, match="policy"):
        g.effective("majority")
    with pytest.raises(ValueError, match="similarity"):
        g.effective("cl_wins", similarity=0.5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- JSON
def test_json_round_trip_keeps_order_and_asked_pairs() -> None:
    g = chain_contradiction()
    g.mark_asked(10, 4)
    g.mark_asked(1, 0)
    s = g.to_json()
    doc = json.loads(s)
    assert doc["schema"] == "reid-al/constraints" and doc["version"] == 1
    back = ConstraintGraph.from_json(s)
    assert back == g and back.to_json() == s
    assert back.asked_pairs() == [(4, 10), (0, 1)]
    assert back.relation(0, 2) is Relation.SAME


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        json.dumps({"schema": "other", "version": 1, "constraints": [], "asked": []}),
        json.dumps({"schema": "reid-al/constraints", "version": 99, "constraints": [], "asked": []}),
        json.dumps({"schema": "reid-al/constraints", "version": 1, "constraints": [{"i": 1}], "asked": []}),
        json.dumps(
            {
                "schema": "reid-al/constraints",
                "version": 1,
                "constraints": [{"annotation_id": "a", "i": 1, "j": 1, "kind": "must_link"}],
                "asked": [],
            }
        ),
    ],
)
def test_from_json_rejects_bad_documents(doc: str) -> None:
    with pytest.raises(ValueError):
        ConstraintGraph.from_json(doc)


def test_resolved_mask_matches_is_resolved() -> None:
    g = chain_contradiction()
    g.add("d", 5, 6, ML)
    g.add("e", 6, 8, CL)
    g.mark_asked(3, 4)
    pairs = np.array([[i, j] for i in range(10) for j in range(10) if i != j])
    expected = [g.is_resolved(int(i), int(j)) for i, j in pairs]
    np.testing.assert_array_equal(g.resolved_mask(pairs), expected)
    assert g.resolved_mask(np.zeros((0, 2), dtype=int)).shape == (0,)
    with pytest.raises(ValueError, match="pairs"):
        g.resolved_mask(np.array([[1, 1]]))
    with pytest.raises(ValueError, match="pairs"):
        g.resolved_mask(np.array([1, 2, 3]))


# ---------------------------------------------------------------------- properties
N_NODES = 9
ALL_PAIRS = np.array([[a, b] for a in range(N_NODES) for b in range(N_NODES) if a != b])
node = st.integers(0, N_NODES - 1)
op = st.tuples(
    st.sampled_from(["add", "add", "add", "remove", "ask"]),
    st.integers(0, 7),  # annotation id (small, so replacements happen)
    node,
    node,
    st.sampled_from([ML, CL]),
)


def brute_relation(constraints: list[Constraint], i: int, j: int) -> Relation:
    """Transitive closure by repeated relaxation: the obviously-correct reference."""
    comp = list(range(N_NODES))
    changed = True
    while changed:
        changed = False
        for c in constraints:
            if c.kind is ML and comp[c.i] != comp[c.j]:
                lo = min(comp[c.i], comp[c.j])
                old = {comp[c.i], comp[c.j]}
                comp = [lo if x in old else x for x in comp]
                changed = True
    if comp[i] == comp[j]:
        return Relation.SAME
    for c in constraints:
        if c.kind is CL and {comp[c.i], comp[c.j]} == {comp[i], comp[j]}:
            return Relation.DIFFERENT
    return Relation.UNKNOWN


def run_ops(ops: list[tuple]) -> ConstraintGraph:
    g = ConstraintGraph()
    for action, ann, i, j, kind in ops:
        if i == j:
            continue
        if action == "add":
            g.add(ann, i, j, kind)
        elif action == "remove":
            g.remove(ann)
        else:
            g.mark_asked(i, j)
    return g


@settings(max_examples=60, deadline=None)
@given(st.lists(op, max_size=25))
def test_relation_agrees_with_brute_force_closure(ops: list[tuple]) -> None:
    g = ConstraintGraph()
    for action, ann, i, j, kind in ops:
        if i == j:
            continue
        if action == "add":
            g.add(ann, i, j, kind)
        elif action == "remove":
            g.remove(ann)
        else:
            g.mark_asked(i, j)
        # query after every step: incremental and rebuilt states (and the cached tables) must be right
        current = list(g)
        for a in range(N_NODES):
            for b in range(a + 1, N_NODES):
                assert g.relation(a, b) is brute_relation(current, a, b)
        expected = [g.is_resolved(int(a), int(b)) for a, b in ALL_PAIRS]
        np.testing.assert_array_equal(g.resolved_mask(ALL_PAIRS), expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(node, node, st.sampled_from([ML, CL])), max_size=12), st.data())
def test_remove_restores_the_state_without_that_annotation(
    triples: list[tuple[int, int, ConstraintKind]], data: st.DataObject
) -> None:
    triples = [t for t in triples if t[0] != t[1]]
    if not triples:
        return
    victim = data.draw(st.integers(0, len(triples) - 1))
    full = ConstraintGraph()
    without = ConstraintGraph()
    for k, (i, j, kind) in enumerate(triples):
        full.add(k, i, j, kind)
        if k != victim:
            without.add(k, i, j, kind)
    full.relation(0, 1)  # make sure the union-find is built before the removal
    assert full.remove(victim)
    assert full.to_json() == without.to_json()
    for a in range(N_NODES):
        for b in range(a + 1, N_NODES):
            assert full.relation(a, b) is without.relation(a, b)
    assert [c.annotation_ids for c in full.contradictions()] == [
        c.annotation_ids for c in without.contradictions()
    ]
    # replace = remove + add as the newest
    i, j, kind = triples[victim]
    new_kind = CL if kind is ML else ML
    full.add(victim, i, j, new_kind)
    without.add(victim, i, j, new_kind)
    assert full.to_json() == without.to_json()


@settings(max_examples=60, deadline=None)
@given(st.lists(op, max_size=25))
def test_json_round_trip_property(ops: list[tuple]) -> None:
    g = run_ops(ops)
    back = ConstraintGraph.from_json(g.to_json())
    assert back.to_json() == g.to_json()
    assert back == g
    for a in range(N_NODES):
        for b in range(a + 1, N_NODES):
            assert back.relation(a, b) is g.relation(a, b)
            assert back.was_asked(a, b) is g.was_asked(a, b)


@settings(max_examples=60, deadline=None)
@given(st.lists(op, max_size=25), st.sampled_from(["ml_wins", "cl_wins", "latest_wins"]))
def test_every_policy_returns_consistent_constraints(ops: list[tuple], policy: str) -> None:
    g = run_ops(ops)
    eff = g.effective(policy, similarity=lambda i, j: ((i * 7 + j * 3) % 5) / 5.0)
    check = ConstraintGraph()
    for k, (i, j) in enumerate(eff.must_link.tolist()):
        check.add(f"m{k}", i, j, ML)
    for k, (i, j) in enumerate(eff.cannot_link.tolist()):
        check.add(f"c{k}", i, j, CL)
    assert check.contradictions() == []
    kept = len(g) - len(eff.dropped)
    assert kept >= len(eff.must_link) + len(eff.cannot_link)  # duplicates collapse, nothing invented
    if not g.contradictions():
        assert eff.dropped == ()
