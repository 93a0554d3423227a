"""AAS (ALGORITHMS.md §5): regions, U_os, U_us, the eq. 4-6 mixture and the sampler's contract."""

from __future__ import annotations

import logging
from itertools import combinations

import numpy as np
import pytest

from strategies.calibration import PSameCalibrator
from strategies.clustering import FinchResult
from strategies.constraints import ConstraintGraph
from strategies.jaccard import jaccard_similarity_pairs
from strategies.samplers import AASSampler, PoolExhaustedError, make_sampler
from strategies.samplers.aas import (
    POOL_NAMES,
    aas_budget,
    aas_finch_level,
    aas_pool,
    aas_probabilities,
    efraimidis_spirakis,
    nearest_medoids,
    outlier_status,
    overseg_pairs,
    region_medoids,
    singletonize,
    uncertainty_regions,
    underseg_pairs,
)
from strategies.view import ClusteringView

WORKED_X = np.array([0.0, 1.0, 2.2, 3.0, 4.0, 5.5])[:, None]
WORKED_A = np.array([0, 0, 0, 1, 1, -1])
WORKED_B = np.array([0, 0, 1, 1, 1, 1])


def _pool_dict(pool) -> dict[tuple[int, int], str]:
    return {(int(i), int(j)): POOL_NAMES[c] for i, j, c in zip(pool.i, pool.j, pool.code, strict=True)}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _blobs(centres: list[np.ndarray], per: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pts = [c + spread * rng.normal(size=(per, c.size)) for c in centres]
    ids = np.repeat(np.arange(len(centres)), per)
    return _unit(np.concatenate(pts)), ids


def _bridged_regions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two regions of uncertainty, {0, 1} and {2, 3}, on either side of a tight group C = rows 4-8
    (points on a small patch of the sphere, coordinates in the tangent plane).

    With k1 = k2 = knn_k = 6, the medoids 0 and 2 are no kNN edge of each other (C is nearer to both),
    yet most of their query-expanded V rows lies on C: their Jaccard similarity is about 0.47.
    A = "DBSCAN" joins each region's two points, B = "FINCH" splits them; C and two far groups agree.
    """
    rng = np.random.default_rng(0)
    plane = [(-0.10, 0.0), (-0.12, 0.0), (0.10, 0.0), (0.12, 0.0)]
    plane += [tuple(0.005 * rng.normal(size=2)) for _ in range(5)]
    plane += [(0.8 + 0.01 * k, 0.8) for k in range(5)] + [(-0.8, -0.8 + 0.01 * k) for k in range(5)]
    p = np.asarray(plane)
    x = _unit(np.column_stack([p, np.ones(len(p))]))
    a = np.array([1, 1, 2, 2, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4])
    b = np.array([1, 2, 3, 4, 0, 0, 0, 0, 0, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6])
    return x, a, b


def _bridged_view(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> ClusteringView:
    return ClusteringView(
        x,
        k1=6,
        k2=6,
        knn_k=6,
        dbscan_labels=a,
        finch=FinchResult([b], [int(np.unique(b).size)]),
        calibrator=PSameCalibrator(),
    )


def _brute_closest(x: np.ndarray, left: np.ndarray, right: np.ndarray) -> tuple[int, int]:
    best = min((float(np.sum((x[u] - x[v]) ** 2)), u, v) for u in left for v in right)
    return (min(best[1], best[2]), max(best[1], best[2]))


# ----------------------------------------------------------------------------- the worked example


def test_worked_example_regions_and_pools() -> None:
    regions, m = uncertainty_regions(WORKED_A, WORKED_B)
    assert m == 1
    assert regions.tolist() == [0, 0, 0, 0, 0, 0]
    pool = aas_pool(WORKED_X, WORKED_A, WORKED_B)
    assert (pool.code == 0).sum() == 0  # one region -> one medoid -> U_os empty
    assert _pool_dict(pool) == {
        (1, 2): "U_us:beta1",
        (2, 3): "U_us:beta1",
        (2, 5): "U_us:beta2",
        (4, 5): "U_us:beta2",
    }


def test_worked_example_inconsistent_counts_and_distribution() -> None:
    pool = aas_pool(WORKED_X, WORKED_A, WORKED_B)
    # Ĩ = A+ Δ B+ = {(0,2),(1,2),(2,3),(2,4)} β1 and {(2,5),(3,5),(4,5)} β2
    assert pool.inconsistent_counts.tolist() == [[4.0, 3.0, 0.0]]
    p = aas_probabilities(pool, epsilon=0.6)
    assert p.sum() == pytest.approx(1.0)
    # π uniform over the two types present, one region, ω uniform: every pair 1/4
    assert np.allclose(p, 0.25)


def test_singletonize_gives_each_outlier_its_own_cluster() -> None:
    out = singletonize(np.array([5, -1, 5, -1, 7]))
    assert out[0] == out[2]
    assert len({out[1], out[3], out[0], out[4]}) == 4


def test_no_disagreement_means_no_region() -> None:
    a = np.array([0, 0, 1, 1, -1])
    b = np.array([3, 3, 9, 9, 4])  # same partition, other ids (the outlier is a singleton in both)
    regions, m = uncertainty_regions(a, b)
    assert m == 0
    assert (regions == -1).all()
    pool = aas_pool(np.eye(5), a, b)
    assert len(pool) == 0


def test_regions_are_transitive_closures_of_partial_overlaps() -> None:
    a = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    b = np.array([0, 1, 1, 2, 2, 2, 3, 3])  # chains A0-A1-A2; cluster 3 agrees
    regions, m = uncertainty_regions(a, b)
    assert m == 1
    assert regions.tolist() == [0, 0, 0, 0, 0, 0, -1, -1]


def test_uncertainty_regions_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="labels_a and labels_b"):
        uncertainty_regions(np.zeros(3), np.zeros(4))


# ----------------------------------------------------------------------------- synthetic errors


def test_dbscan_merge_that_finch_separates_yields_the_boundary_pair() -> None:
    centres = [np.array([1.0, 0.0, 0.0]), np.array([0.9, 0.45, 0.0]), np.array([0.0, 0.0, 1.0])]
    x, ids = _blobs(centres, per=6, spread=0.03, seed=1)
    a = np.where(ids == 1, 0, ids)  # DBSCAN merges identities 0 and 1
    b = ids.copy()  # FINCH separates them
    pool = aas_pool(x, a, b)
    want = _brute_closest(x, np.flatnonzero(ids == 0), np.flatnonzero(ids == 1))
    got = _pool_dict(pool)
    assert want in got
    assert got[want] == "U_us:beta1"
    t = next(k for k, (i, j) in enumerate(zip(pool.i, pool.j, strict=True)) if (i, j) == want)
    assert pool.joined_by[t] == 0  # DBSCAN is the method that joins (under-segments) it
    # nothing touches the agreed identity 2
    assert not any(ids[i] == 2 or ids[j] == 2 for i, j in got)


def test_finch_merge_that_dbscan_separates_yields_the_boundary_pair() -> None:
    centres = [np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.9, 0.45])]
    x, ids = _blobs(centres, per=6, spread=0.03, seed=2)
    a = ids.copy()  # DBSCAN separates identities 1 and 2
    b = np.where(ids == 2, 1, ids)  # FINCH merges them
    pool = aas_pool(x, a, b)
    want = _brute_closest(x, np.flatnonzero(ids == 1), np.flatnonzero(ids == 2))
    got = _pool_dict(pool)
    assert want in got
    t = next(k for k, (i, j) in enumerate(zip(pool.i, pool.j, strict=True)) if (i, j) == want)
    assert pool.joined_by[t] == 1


def test_underseg_enumerates_only_closest_cross_pairs() -> None:
    """U_us holds one pair per cluster pair (the closest), never the whole symmetric difference."""
    centres = [np.array([1.0, 0.0]), np.array([0.8, 0.6])]
    x, ids = _blobs(centres, per=5, spread=0.02, seed=3)
    a = np.zeros(ids.size, dtype=np.int64)
    b = ids.copy()
    regions, m = uncertainty_regions(a, b)
    i, j, _reg, _kind, _by, counts = underseg_pairs(x, a, b, regions, m, a < 0)
    assert i.size == 1
    assert (int(i[0]), int(j[0])) == _brute_closest(x, np.flatnonzero(ids == 0), np.flatnonzero(ids == 1))
    assert counts[0, 0] == 25  # |Ĩ| = 5 x 5 cross pairs, all inlier-inlier


def test_underseg_pair_types_follow_dbscan_status() -> None:
    # B joins everything; A: one cluster {0,1}, outliers 2 and 3
    x = np.array([[0.0], [0.1], [1.0], [1.2]])
    a = np.array([0, 0, -1, -1])
    b = np.zeros(4, dtype=np.int64)
    pool = aas_pool(x, a, b)
    # A-cluster pairs meeting B's one cluster: ({0,1},{2}) -> (1,2); ({0,1},{3}) -> (1,3); ({2},{3})
    assert _pool_dict(pool) == {(1, 2): "U_us:beta2", (1, 3): "U_us:beta2", (2, 3): "U_us:beta3"}


def test_outlier_status_after_refinement() -> None:
    raw = np.array([0, 0, -1, -1, -1])
    refined = np.array([0, 0, 0, -1, 7])  # row 2 merged by a must-link; row 4 got a fresh singleton id
    assert outlier_status(raw, refined).tolist() == [False, False, False, True, True]


# ----------------------------------------------------------------------------- U_os


def test_region_medoid_is_least_total_distance_and_mean_rule_for_large_regions() -> None:
    x = np.array([[0.0], [1.0], [2.0], [10.0], [20.0], [21.0], [22.0]])
    regions = np.array([0, 0, 0, 0, 1, 1, 1])
    exact = region_medoids(x, regions, 2, exact_max=10)
    assert exact.tolist() == [1, 5]
    approx = region_medoids(x, regions, 2, exact_max=3)  # region 0 (4 points) uses the mean 3.25
    assert approx.tolist() == [2, 5]


def test_nearest_medoids_are_the_k_max_nearest_by_cosine_ties_to_the_lower_position() -> None:
    deg = np.deg2rad([0.0, 10.0, -10.0, 90.0])
    x = _unit(np.column_stack([np.cos(deg), np.sin(deg)]))
    medoids = np.array([7, 3, 5, 1])  # positions 0..3 index this array
    full = np.zeros((8, 2), dtype=np.float32)
    full[medoids] = x
    a, b = nearest_medoids(full, medoids, k_max=1)
    # 0 -> 1 (tie with 2 at the same cosine: lower position); 1 -> 0; 2 -> 0; 3 -> 1 (80° beats 100°)
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 3)]
    a, b = nearest_medoids(full, medoids, k_max=10)  # clamped to the other m - 1 medoids
    assert a.size == 6
    a, b = nearest_medoids(full, medoids[:1], k_max=5)
    assert a.size == 0


def test_overseg_pairs_compute_jaccard_for_medoids_that_are_no_knn_edge() -> None:
    x, a, b = _bridged_regions()
    view = _bridged_view(x, a, b)
    assert 2 not in view.knn.indices[0] and 0 not in view.knn.indices[2]  # no kNN edge either way
    assert view.jaccard[0, 2] == 0 and 2 not in view.jaccard[0].indices  # so d_J is not stored there
    medoids = np.array([0, 2])
    want = float(jaccard_similarity_pairs(x, [0], [2], k1=6, k2=6, knn=view.knn)[0])
    assert want > 0.3
    pa, pb, sim = overseg_pairs(x, medoids, knn=view.knn, k1=6, k2=6, k_max=5, s_min=0.3)
    assert (pa.tolist(), pb.tolist()) == ([0], [1])
    assert sim[0] == pytest.approx(want)
    pa, _, _ = overseg_pairs(x, medoids, knn=view.knn, k1=6, k2=6, k_max=5, s_min=want + 0.01)
    assert pa.size == 0


def test_overseg_pairs_with_cosine_when_no_jaccard() -> None:
    x = _unit(np.array([[1.0, 0.0], [0.95, 0.3], [-1.0, 0.05]]))
    a, b, s = overseg_pairs(x, np.arange(3), k_max=1, s_min=0.3)
    assert {(int(p), int(q)) for p, q in zip(a, b, strict=True)} == {(0, 1)}
    assert s[0] == pytest.approx(float(x[0] @ x[1]))


def test_overseg_pool_joins_two_regions_of_one_identity() -> None:
    # identity 0 is split into two regions of uncertainty; their medoids are similar -> a U_os pair
    centres = [np.array([1.0, 0.0, 0.0]), np.array([0.97, 0.25, 0.0])]
    x, _ids = _blobs(centres, per=6, spread=0.02, seed=4)
    a = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    b = np.array([0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3])
    pool = aas_pool(x, a, b, k_max=5, s_min=0.3)  # cosine sim (no kNN graph given)
    assert pool.n_regions == 2
    os_pairs = [(int(i), int(j)) for i, j, c in zip(pool.i, pool.j, pool.code, strict=True) if c == 0]
    m = pool.medoids
    assert os_pairs == [(min(m), max(m))]


# ----------------------------------------------------------------------------- distribution + sampling


def _toy_pool():
    x = np.array([[0.0], [0.1], [1.0], [1.1], [5.0], [5.1], [6.0], [6.1], [6.2]])
    a = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1])
    b = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3])
    return aas_pool(x, a, b, s_min=-1.0)  # cosine on 1-D points: every medoid pair qualifies


def test_probabilities_mix_epsilon_between_pools() -> None:
    pool = _toy_pool()
    assert (pool.code == 0).any() and (pool.code > 0).any()
    for eps in (0.0, 0.6, 1.0):
        p = aas_probabilities(pool, eps)
        assert p.sum() == pytest.approx(1.0)
        assert p[pool.code == 0].sum() == pytest.approx(eps)
    only_us = pool.subset(pool.code > 0)
    assert aas_probabilities(only_us, 0.6).sum() == pytest.approx(1.0)  # all mass to the non-empty pool


def test_rho_weights_regions_by_log_inconsistent_count() -> None:
    pool = _toy_pool()
    us = pool.subset(pool.code == 1)
    p = aas_probabilities(us, 0.6)
    by_region = {int(r): float(p[us.region == r].sum()) for r in np.unique(us.region)}
    logs = {r: np.log1p(pool.inconsistent_counts[r, 0]) for r in by_region}
    total = sum(logs.values())
    for r, mass in by_region.items():
        assert mass == pytest.approx(logs[r] / total)


def test_probabilities_reject_bad_epsilon() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        aas_probabilities(_toy_pool(), 1.5)


def test_efraimidis_spirakis_is_seeded_without_replacement_and_proportional() -> None:
    w = np.array([0.7, 0.2, 0.1, 0.0])
    first = efraimidis_spirakis(w, 2, np.random.default_rng(5))
    assert first.tolist() == efraimidis_spirakis(w, 2, np.random.default_rng(5)).tolist()
    assert len(set(first.tolist())) == 2
    counts = np.zeros(4)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        counts[efraimidis_spirakis(w, 1, rng)[0]] += 1
    assert counts[3] == 0  # zero weight never drawn while positives remain
    assert counts[0] / 3000 == pytest.approx(0.7, abs=0.04)
    assert efraimidis_spirakis(w, 4, rng)[-1] == 3


# ----------------------------------------------------------------------------- the sampler


def _view(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> ClusteringView:
    return ClusteringView(
        x,
        dbscan_labels=a,
        finch=FinchResult([np.asarray(b)], [int(np.unique(b).size)]),
        calibrator=PSameCalibrator(),
    )


def _two_merged_identities() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centres = [np.array([1.0, 0.0, 0.0]), np.array([0.9, 0.45, 0.0]), np.array([0.0, 0.0, 1.0])]
    x, ids = _blobs(centres, per=6, spread=0.03, seed=7)
    return x, np.where(ids == 1, 0, ids), ids


def test_sampler_takes_the_whole_pool_when_smaller_than_budget_and_reports_shortfall() -> None:
    x, a, b = _two_merged_identities()
    result = AASSampler().select(x, ConstraintGraph(), 50, view=_view(x, a, b))
    assert 0 < len(result.proposals) < 50
    assert result.shortfall == 50 - len(result.proposals)
    assert result.pool_sizes["U_open"] == len(result.proposals)
    assert all(p.strategy == "aas" and p.pool.startswith("U_") for p in result.proposals)
    pr = [p.priority for p in result.proposals]
    assert pr == sorted(pr, reverse=True) and pr[0] == 1.0


def test_sampler_with_no_region_returns_empty_result_not_exhaustion() -> None:
    x, _, b = _two_merged_identities()
    result = AASSampler().select(x, ConstraintGraph(), 10, view=_view(x, b, b))
    assert result.proposals == []
    assert result.shortfall == 10
    assert result.pool_sizes["regions"] == 0


def test_sampler_skips_resolved_pairs_and_raises_when_all_are_resolved() -> None:
    x, a, b = _two_merged_identities()
    ctx = _view(x, a, b)
    first = AASSampler(refine=False).select(x, ConstraintGraph(), 50, view=ctx)
    graph = ConstraintGraph()
    for p in first.proposals[:-1]:
        graph.mark_asked(p.i, p.j)
    again = AASSampler(refine=False).select(x, graph, 50, view=ctx)
    assert again.pairs() == first.pairs()[-1:]
    graph.mark_asked(first.proposals[-1].i, first.proposals[-1].j)
    with pytest.raises(PoolExhaustedError, match="aas"):
        AASSampler(refine=False).select(x, graph, 50, view=ctx)


def test_sampler_samples_budget_without_replacement_deterministically() -> None:
    rng = np.random.default_rng(11)
    centres = [rng.normal(size=8) for _ in range(12)]
    x, ids = _blobs(centres, per=5, spread=0.25, seed=12)
    a = ids // 2  # DBSCAN merges identity pairs
    b = ids.copy()
    b[b % 3 == 0] = 99  # FINCH merges others
    ctx = _view(x, a, b)
    s = AASSampler(random_state=3, s_min=0.0)  # every candidate medoid pair qualifies
    r1 = s.select(x, ConstraintGraph(), 4, view=ctx)
    r2 = s.select(x, ConstraintGraph(), 4, view=ctx)
    assert r1.pairs() == r2.pairs()
    assert len(r1.proposals) == 4 and r1.shortfall == 0
    assert len(set(r1.pairs())) == 4
    assert r1.pool_sizes["U_open"] > 4


def test_sampler_applies_np3_so_answered_disagreements_disappear() -> None:
    x, a, b = _two_merged_identities()
    ctx = _view(x, a, b)
    first = AASSampler().select(x, ConstraintGraph(), 50, view=ctx)
    graph = ConstraintGraph()
    for k, p in enumerate(first.proposals):
        graph.add(f"a{k}", p.i, p.j, "cannot_link")  # the human says: the boundary pair differs
    # NP3 splits DBSCAN's merged cluster along the cannot-links: the views now agree
    result = AASSampler().select(x, graph, 50, view=ctx)
    assert result.proposals == [] and result.pool_sizes["regions"] == 0


def test_sampler_parameter_validation_names_the_parameter() -> None:
    x, a, b = _two_merged_identities()
    ctx = _view(x, a, b)
    for kwargs, name in (
        ({"epsilon": 2.0}, "epsilon"),
        ({"k_max": 0}, "k_max"),
        ({"s_min": 3.0}, "s_min"),
        ({"exact_medoid_max": 0}, "exact_medoid_max"),
        ({"contradiction_policy": "human_wins"}, "contradiction_policy"),
        ({"similarity": "euclid"}, "similarity"),
    ):
        with pytest.raises(ValueError, match=name):
            AASSampler(**kwargs).select(x, ConstraintGraph(), 5, view=ctx)


def test_registry_builds_aas_with_paper_symbols() -> None:
    s = make_sampler("aas", epsilon=0.5, k_max=3, s_min=0.2)
    assert isinstance(s, AASSampler)
    assert s.get_params()["epsilon"] == 0.5
    assert "k_max=3" in repr(s)


def test_pool_pairs_are_normalised_and_unique() -> None:
    pool = _toy_pool()
    pairs = list(zip(pool.i.tolist(), pool.j.tolist(), strict=True))
    assert all(i < j for i, j in pairs)
    assert len(set(pairs)) == len(pairs)
    assert set(pairs) <= set(combinations(range(9), 2))


def test_sampler_end_to_end_computes_graph_clusterings_and_np3_itself() -> None:
    rng = np.random.default_rng(21)
    centres = [rng.normal(size=16) for _ in range(15)]
    x, _ids = _blobs(centres, per=12, spread=0.35, seed=22)
    g = ConstraintGraph()
    g.add("m", 0, 1, "must_link")
    g.add("c", 0, 12, "cannot_link")
    result = AASSampler(random_state=1).select(x, g, 20)
    assert len(result.proposals) <= 20
    assert result.shortfall == 20 - len(result.proposals)
    assert result.pool_sizes["regions"] >= 0
    for p in result.proposals:
        assert not g.is_resolved(p.i, p.j)
    again = AASSampler(random_state=1).select(x, g, 20)
    assert again.proposals == result.proposals


def test_aas_budget_is_the_paper_fraction_of_all_pairs() -> None:
    assert aas_budget(10_000) == round(0.0002 * 10_000 * 9_999 / 2)
    assert aas_budget(3) == 1
    with pytest.raises(ValueError, match="n_items"):
        aas_budget(1)
    with pytest.raises(ValueError, match="fraction"):
        aas_budget(100, 0.0)


def test_u_os_pairs_region_medoids_that_share_no_knn_edge() -> None:
    x, a, b = _bridged_regions()
    result = AASSampler().select(x, ConstraintGraph(), 10, view=_bridged_view(x, a, b))
    assert result.pool_sizes["regions"] == 2
    assert result.pool_sizes["U_os"] == 1
    by_pool = {(p.i, p.j): p.pool for p in result.proposals}
    assert by_pool[(0, 2)] == "U_os"
    assert by_pool[(0, 1)] == by_pool[(2, 3)] == "U_us:beta1"


def test_cosine_similarity_option_uses_raw_cosine() -> None:
    x, a, b = _bridged_regions()
    view = _bridged_view(x, a, b)
    jac = float(jaccard_similarity_pairs(x, [0], [2], k1=6, k2=6, knn=view.knn)[0])
    cos = float(x[0] @ x[2])
    assert jac < 0.6 < cos
    by_jaccard = AASSampler(s_min=0.6).select(x, ConstraintGraph(), 10, view=view)
    by_cosine = AASSampler(similarity="cosine", s_min=0.6).select(x, ConstraintGraph(), 10, view=view)
    assert by_jaccard.pool_sizes["U_os"] == 0
    assert by_cosine.pool_sizes["U_os"] == 1
    os_reason = next(p.reason for p in by_cosine.proposals if p.pool == "U_os")
    assert f"similarity {cos:.3f}" in os_reason


# ----------------------------------------------------------------------------- the FINCH level


def _outlier_heavy_pool() -> tuple[np.ndarray, np.ndarray, FinchResult]:
    """40 points; DBSCAN: two clusters of 5 and 30 outliers (32 groups with the outliers, 2 without).

    FINCH level 0 (28 groups) keeps DBSCAN's clusters, pairs outliers 10-17 two by two and leaves the
    rest single; level 1 (2 groups) lumps rows 0-24 and rows 25-39.
    """
    rng = np.random.default_rng(5)
    x = _unit(rng.normal(size=(40, 8)))
    dbscan = np.full(40, -1)
    dbscan[:5], dbscan[5:10] = 0, 1
    fine = np.concatenate([[0] * 5, [1] * 5, np.repeat(np.arange(2, 6), 2), np.arange(6, 28)])
    coarse = (np.arange(40) >= 25).astype(np.int64)
    return x, dbscan, FinchResult([fine, coarse], [28, 2])


def test_finch_level_counts_every_dbscan_outlier_as_its_own_group() -> None:
    x, dbscan, finch = _outlier_heavy_pool()
    view = ClusteringView(x, dbscan_labels=dbscan, finch=finch, calibrator=PSameCalibrator())
    a, b, outlier = AASSampler().clusterings(x, ConstraintGraph(), view)
    assert np.array_equal(b, finch.partitions[0])  # |28 - 32| < |2 - 32|
    pool = aas_pool(x, a, b, outlier=outlier)
    sizes = np.bincount(pool.regions[pool.regions >= 0])
    # the regions are the four outlier pairs that FINCH joins, not two blobs of 25 and 15 points
    assert sizes.tolist() == [2, 2, 2, 2]
    result = AASSampler().select(x, ConstraintGraph(), 50, view=view)
    assert result.pool_sizes["regions"] == 4
    assert result.pool_sizes["U_us:beta3"] == 4  # one outlier-outlier pair per region, not hundreds
    assert aas_finch_level(dbscan, finch) == 0


def test_aas_finch_level_ties_go_to_the_finer_level() -> None:
    finch = FinchResult([np.arange(40), np.arange(40) // 2], [40, 20])
    dbscan = np.array([0] * 36 + [-1] * 4)  # 1 cluster + 4 outliers = 5 groups
    assert aas_finch_level(dbscan, finch) == 1  # |20 - 5| < |40 - 5|
    dbscan = np.concatenate([np.arange(36) % 26, [-1] * 4])  # 26 clusters + 4 outliers = 30 groups
    assert aas_finch_level(dbscan, finch) == 0  # |40 - 30| = |20 - 30|: the finer level


# ----------------------------------------------------------------------------- warnings


def test_sampler_warns_when_u_os_is_empty(caplog: pytest.LogCaptureFixture) -> None:
    x, a, b = _two_merged_identities()
    with caplog.at_level(logging.WARNING, logger="strategies.samplers.aas"):
        result = AASSampler().select(x, ConstraintGraph(), 50, view=_view(x, a, b))
    assert result.pool_sizes["U_os"] == 0 and result.pool_sizes["regions"] == 1
    assert any("U_os is empty (fewer than two regions" in r.getMessage() for r in caplog.records)
    assert not any("U_us is empty" in r.getMessage() for r in caplog.records)


def test_sampler_warns_when_u_us_is_empty(caplog: pytest.LogCaptureFixture) -> None:
    x, a, b = _bridged_regions()
    view = _bridged_view(x, a, b)
    with caplog.at_level(logging.WARNING, logger="strategies.samplers.aas"):
        AASSampler().select(x, ConstraintGraph(), 10, view=view)
    assert not caplog.records  # both pools have pairs: nothing to say
    graph = ConstraintGraph()
    graph.mark_asked(0, 1)
    graph.mark_asked(2, 3)
    with caplog.at_level(logging.WARNING, logger="strategies.samplers.aas"):
        result = AASSampler(refine=False).select(x, graph, 10, view=view)
    assert result.pairs() == [(0, 2)]
    messages = [r.getMessage() for r in caplog.records]
    assert any("U_us is empty (all 2 pairs are already asked or implied" in m for m in messages)
