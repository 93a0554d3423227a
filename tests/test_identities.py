"""The identity assignment: verified components + first-neighbour links under the constraints."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies.calibration import PSameCalibrator
from strategies.clustering import FINCH
from strategies.constraints import ConstraintGraph
from strategies.identities import IdentityAssigner
from strategies.knn import build_knn
from strategies.metrics import pairwise_prf
from strategies.view import ClusteringView


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _line(positions: list[float]) -> np.ndarray:
    """Points on a short arc of the unit circle: cosine order = position order."""
    angles = np.asarray(positions, dtype=np.float64) * 0.05
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def _assign(x: np.ndarray, graph: ConstraintGraph, **params) -> np.ndarray:
    knn = build_knn(x, min(len(x), 8))
    return IdentityAssigner(**params).assign(x, graph, knn).labels


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = {(int(x), int(y)) for x, y in zip(a, b, strict=True)}
    return len({x for x, _ in pairs}) == len(pairs) == len({y for _, y in pairs})


def test_without_answers_it_is_finch_first_partition() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    x = _unit(np.repeat(centres, 4, axis=0) + 0.35 * rng.normal(size=(48, 16)))
    labels = _assign(x, ConstraintGraph(), min_p_same=0.0)
    assert _same_partition(labels, FINCH().fit(x).partitions[0])


def test_images_join_their_first_neighbour() -> None:
    # 0 1 | 3 4 (gaps of 1), 2 is nearer to 1 than to 3
    x = _line([0, 1, 1.8, 4, 5])
    labels = _assign(x, ConstraintGraph(), min_p_same=0.0)
    assert labels[0] == labels[1] == labels[2]
    assert labels[3] == labels[4] != labels[0]


def test_cannot_link_keeps_mutual_neighbours_apart_and_they_join_their_next_choice() -> None:
    x = _line([0, 1, 1.2, 2.5])  # 1 and 2 are each other's first neighbour
    g = ConstraintGraph()
    g.add("a", 1, 2, "cannot_link")
    labels = _assign(x, g, min_p_same=0.0)
    assert labels[1] != labels[2]
    assert labels[0] == labels[1]  # 1's next allowed neighbour
    assert labels[2] == labels[3]  # 2's next allowed neighbour


def test_without_linking_past_a_cannot_link_the_image_makes_no_link_of_its_own() -> None:
    # 0 and 1 are each other's nearest but answered "different"; 2 and 3 are each other's nearest.
    # Linking past the answer (the default) puts 0 or 1 with 2 and 3, whom neither is close to.
    x = _line([0, 0.3, 1.5, 1.8])
    g = ConstraintGraph()
    g.add("c", 0, 1, "cannot_link")
    labels = _assign(x, g, min_p_same=0.0, link_past_cannot_link=False)
    assert labels[2] == labels[3]
    assert len({int(labels[0]), int(labels[1]), int(labels[2])}) == 3  # 0 and 1 stay alone
    past = _assign(x, g, min_p_same=0.0)
    assert past[0] != past[1]
    assert past[2] in (past[0], past[1])  # one of them was linked to its next image


def test_others_may_still_link_to_an_image_whose_nearest_is_cannot_linked() -> None:
    # 1's nearest is 2 (answered "different"); 0's nearest is 1, so 0 and 1 are one identity
    x = _line([0, 1, 1.2, 2.5])
    g = ConstraintGraph()
    g.add("a", 1, 2, "cannot_link")
    labels = _assign(x, g, min_p_same=0.0, link_past_cannot_link=False)
    assert labels[0] == labels[1] != labels[2] == labels[3]


def test_a_verified_component_does_not_absorb_its_neighbours() -> None:
    # 0..3 answered "same"; 4 is far; 4's nearest is 3 but 3's nearest is inside its component
    x = _line([0, 0.2, 0.4, 0.6, 3.0, 3.5])
    g = ConstraintGraph()
    for k, (i, j) in enumerate([(0, 1), (1, 2), (2, 3)]):
        g.add(f"m{k}", i, j, "must_link")
    g.add("c", 3, 4, "cannot_link")
    result = IdentityAssigner(min_p_same=0.0).assign(x, g, build_knn(x, 6))
    assert len(set(result.labels[:4].tolist())) == 1
    assert result.labels[4] != result.labels[0]
    assert result.labels[4] == result.labels[5]
    assert result.verified.tolist() == [True, True, True, True, False, False]
    assert result.confidence[:4].tolist() == [1.0] * 4
    assert result.answers[:4].tolist() == [4, 4, 4, 4]  # three must-links and one cannot-link
    assert result.answers[4] == 1 and result.answers[5] == 0


def test_a_cannot_link_blocks_a_chain_through_a_third_image() -> None:
    # 0-1 and 1-2 would chain 0 and 2 together; CL(0, 2) must hold whatever the link order
    x = _line([0, 1, 2])
    g = ConstraintGraph()
    g.add("c", 0, 2, "cannot_link")
    labels = _assign(x, g, min_p_same=0.0)
    assert labels[0] != labels[2]


def test_min_p_same_leaves_an_outlier_alone() -> None:
    x = _line([0, 0.5, 1.0, 1.5, 30])
    cal = PSameCalibrator().fit(np.array([0.999, 0.998, 0.997, 0.5, 0.4, 0.3]), np.array([1, 1, 1, 0, 0, 0]))
    knn = build_knn(x, 5)
    kept = IdentityAssigner(min_p_same=0.5).assign(x, ConstraintGraph(), knn, cal)
    linked = IdentityAssigner(min_p_same=0.0).assign(x, ConstraintGraph(), knn, cal)
    assert np.bincount(kept.labels)[kept.labels[4]] == 1
    assert kept.confidence[4] > 0.5  # confidently a new individual
    assert np.bincount(linked.labels)[linked.labels[4]] > 1


def test_input_errors_name_the_argument() -> None:
    x = _line([0, 1, 2, 3])
    with pytest.raises(ValueError, match="knn"):
        IdentityAssigner().assign(x, ConstraintGraph(), build_knn(x[:3], 2))
    with pytest.raises(ValueError, match="min_p_same"):
        IdentityAssigner(min_p_same=1.5).assign(x, ConstraintGraph(), build_knn(x, 3))


def test_the_view_exposes_identities_and_summary() -> None:
    rng = np.random.default_rng(1)
    x = _unit(np.repeat(rng.normal(size=(5, 8)), 3, axis=0) + 0.05 * rng.normal(size=(15, 8)))
    g = ConstraintGraph()
    g.add("a", 0, 1, "must_link")
    view = ClusteringView(x, g)
    ids = view.identities
    assert ids.labels.shape == (15,)
    assert ids.labels[0] == ids.labels[1]
    summary = ids.summary()
    assert summary["identities"] == ids.n_identities == len(set(ids.labels.tolist()))
    assert summary["images_verified"] == 2 and summary["identities_verified"] == 1
    assert pairwise_prf(ids.labels, np.repeat(np.arange(5), 3))[2] == pytest.approx(1.0)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[np.ndarray, ConstraintGraph]:
    n = draw(st.integers(2, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.normal(size=(n, 4))
    x[np.linalg.norm(x, axis=1) < 1e-6] = 1.0
    x = _unit(x)
    g = ConstraintGraph()
    picks = draw(st.lists(st.tuples(st.sampled_from(list(combinations(range(n), 2))), st.booleans()),
                          max_size=15))
    for k, ((i, j), same) in enumerate(picks):
        g.add(f"a{k}", i, j, "must_link" if same else "cannot_link")
    return x, g


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.sampled_from([0.0, 0.3]), st.booleans())
def test_every_kept_constraint_holds(case: tuple[np.ndarray, ConstraintGraph], min_p_same: float,
                                     link_past_cannot_link: bool) -> None:
    x, g = case
    assigner = IdentityAssigner(min_p_same=min_p_same, link_past_cannot_link=link_past_cannot_link)
    result = assigner.assign(x, g, build_knn(x, min(len(x), 6)), PSameCalibrator())
    labels = result.labels
    effective = g.effective()
    for i, j in effective.must_link:
        assert labels[i] == labels[j]
    for i, j in effective.cannot_link:
        assert labels[i] != labels[j]
    assert labels.min() == 0 and labels.max() == len(set(labels.tolist())) - 1
    assert ((result.confidence >= 0) & (result.confidence <= 1)).all()
    comp = g.component_labels(len(x)) if len(effective.contradictions) == 0 else None
    if comp is not None:
        assert (result.verified == (np.bincount(comp)[comp] >= 2)).all()


def test_new_individuals_are_lone_unverified_images_far_from_every_other() -> None:
    from strategies.identities import IdentityAssignment

    assignment = IdentityAssignment(
        labels=np.array([0, 0, 1, 2, 3]),
        verified=np.array([True, True, False, False, False]),
        confidence=np.array([1.0, 1.0, 0.9, 0.3, 0.5]),
        answers=np.zeros(5, dtype=np.int64),
    )
    assert assignment.new_individual.tolist() == [False, False, True, False, True]
    assert assignment.summary()["new_individuals"] == 2
    empty = IdentityAssignment(np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0), np.zeros(0, np.int64))
    assert empty.new_individual.shape == (0,) and empty.summary()["new_individuals"] == 0


def test_an_image_unlike_the_pool_is_proposed_as_a_new_individual() -> None:
    """Pairs of look-alike images and one image far from all of them: only that one is proposed."""
    from strategies.calibration import PSameCalibrator
    from strategies.constraints import ConstraintGraph
    from strategies.identities import IdentityAssigner
    from strategies.knn import build_knn

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 8))
    x = np.vstack([centres.repeat(2, axis=0) + 0.05 * rng.normal(size=(12, 8)), -centres.sum(axis=0)[None]])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    graph = ConstraintGraph()
    same, different = [(0, 1), (2, 3), (4, 5), (6, 7)], [(0, 2), (4, 6), (8, 10), (1, 9)]
    for k, (i, j) in enumerate(same):
        graph.add(k, i, j, "must_link")
    for k, (i, j) in enumerate(different):
        graph.add(10 + k, i, j, "cannot_link")
    sims = np.array([float(x[i] @ x[j]) for i, j in same + different])
    calibrator = PSameCalibrator().fit(sims, np.array([1] * 4 + [0] * 4))
    result = IdentityAssigner().assign(x, graph, build_knn(x, 5), calibrator)
    assert result.new_individual[12] and not result.new_individual[:12].any()


def test_the_view_and_cycle_settings_carry_link_past_cannot_link() -> None:
    from strategies.view import ViewParams

    x = _line([0, 0.3, 1.5, 1.8])
    g = ConstraintGraph()
    g.add("c", 0, 1, "cannot_link")
    alone = ViewParams(min_p_same=0.0, link_past_cannot_link=False).view(x, g).identities.labels
    past = ViewParams(min_p_same=0.0).view(x, g).identities.labels
    assert np.bincount(alone)[alone[0]] == 1 and np.bincount(alone)[alone[1]] == 1
    assert past[2] in (past[0], past[1])
    with pytest.raises(ValueError, match="link_past_cannot_link"):
        ViewParams(link_past_cannot_link="yes").check_view_params()
    with pytest.raises(ValueError, match="link_past_cannot_link"):
        ClusteringView(x, g, link_past_cannot_link="auto")
    assert ViewParams(link_past_cannot_link="auto").view(x, g).link_past_cannot_link is True


def test_auto_links_past_a_cannot_link_until_answers_conflict() -> None:
    from strategies.identities import LINK_AUTO, resolve_link_rule

    assert resolve_link_rule(LINK_AUTO, conflicts=0) is True
    assert resolve_link_rule(LINK_AUTO, conflicts=2) is False
    assert resolve_link_rule(False, conflicts=0) is False and resolve_link_rule(True, conflicts=5) is True
    with pytest.raises(ValueError, match="link_past_cannot_link"):
        resolve_link_rule("sometimes", conflicts=0)
    x = _line([0, 1, 2])
    with pytest.raises(ValueError, match="link_past_cannot_link"):  # the assigner takes a resolved rule
        IdentityAssigner(link_past_cannot_link=LINK_AUTO).assign(x, ConstraintGraph(), build_knn(x, 3))
