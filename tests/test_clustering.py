"""DBSCAN wrapper vs sklearn brute force, FINCH vs finch-clust (exact cosine mode), level selection."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from strategies.clustering import FINCH, DBSCANClusterer, FinchResult, select_finch_level
from strategies.jaccard import jaccard_distance
from strategies.knn import build_knn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # finch-clust warns that the optional pynndescent is missing
    from finch import FINCH as finch_clust  # test-only reference (its licence rules out run-time use)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, d: int, n_centres: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, d))
    return unit(centres[rng.integers(0, n_centres, size=n)] + noise * rng.normal(size=(n, d)))


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to relabelling: the label pairs form a bijection."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def reference(x: np.ndarray, ensure_early_exit: bool = True) -> tuple[np.ndarray, list[int]]:
    """finch-clust in exact cosine mode (pairwise distances, no ANN)."""
    c, num_clust, _ = finch_clust(x, distance="cosine", ann_threshold=x.shape[0] + 1,
                                  ensure_early_exit=ensure_early_exit)
    return np.asarray(c).reshape(x.shape[0], -1), [int(v) for v in num_clust]


def _duplicates_data() -> np.ndarray:
    x = clustered(800, 8, 40, 0.4, seed=11)
    x[100:130] = x[7]  # 31 exact copies: first-neighbour ties must go to the lowest index
    x[500:503] = x[499]
    return x


def _varied_sizes_data() -> np.ndarray:
    # identities with 1..60 images each, like a Re-ID pool
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(200, 128))
    ids = np.repeat(np.arange(200), rng.integers(1, 60, size=200))[:2000]
    return unit(centres[ids] + 0.9 * rng.normal(size=(ids.size, 128)))


def _unnormalised_data() -> np.ndarray:
    # cosine ignores row scale, but the next level's cluster means do not: both sides must use raw rows
    x = clustered(1500, 24, 60, 0.8, seed=12)
    return x * np.random.default_rng(12).uniform(0.2, 5.0, size=(1500, 1)).astype(np.float32)


DATASETS = {
    "uniform_sphere_1000x32": lambda: unit(np.random.default_rng(1).normal(size=(1000, 32))),
    "tight_clusters_3000x64": lambda: clustered(3000, 64, 150, 0.3, seed=2),
    "noisy_clusters_5000x16": lambda: clustered(5000, 16, 200, 1.5, seed=3),
    "varied_sizes_2000x128": _varied_sizes_data,
    "duplicates_800x8": _duplicates_data,
    "unnormalised_1500x24": _unnormalised_data,
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_finch_matches_finch_clust(name: str) -> None:
    x = DATASETS[name]()
    ours = FINCH().fit(x)
    ref_c, ref_counts = reference(x)
    assert ours.n_clusters == ref_counts
    assert len(ours.partitions) == ref_c.shape[1]
    for level, labels in enumerate(ours.partitions):
        assert same_partition(labels, ref_c[:, level]), f"{name}: level {level} differs"


def test_finch_clust_early_exit_flag_is_a_no_op() -> None:
    # why we implement no distance cut: the reference's cut leaves explicit zeros that still link
    x = clustered(1200, 16, 80, 1.0, seed=7)
    with_cut, counts_cut = reference(x, ensure_early_exit=True)
    without, counts = reference(x, ensure_early_exit=False)
    assert counts_cut == counts
    np.testing.assert_array_equal(with_cut, without)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_finch_tiny_inputs_match_reference(n: int) -> None:
    x = clustered(n, 5, 2, 0.5, seed=n)
    ours = FINCH().fit(x)
    ref_c, ref_counts = reference(x)
    assert ours.n_clusters == ref_counts
    for level, labels in enumerate(ours.partitions):
        assert same_partition(labels, ref_c[:, level])


def test_finch_hierarchy_is_nested_and_well_formed() -> None:
    x = clustered(2500, 32, 100, 0.9, seed=8)
    result = FINCH().fit(x)
    assert isinstance(result, FinchResult)
    assert len(result.partitions) == len(result.n_clusters) >= 3
    for labels, count in zip(result.partitions, result.n_clusters, strict=True):
        assert labels.dtype == np.int64 and labels.shape == (2500,)
        np.testing.assert_array_equal(np.unique(labels), np.arange(count))
    for finer, coarser in zip(result.partitions, result.partitions[1:], strict=False):
        # every fine cluster sits inside exactly one coarse cluster
        pairs = np.unique(np.stack([finer, coarser]), axis=1)
        assert pairs.shape[1] == np.unique(finer).size
    assert all(a - b >= 2 for a, b in zip(result.n_clusters, result.n_clusters[1:], strict=False))
    assert result.n_clusters[-1] > 1


def test_finch_level0_links_first_neighbours() -> None:
    # 1-D-like toy: first neighbours 0<->1, 2->1, 3<->4, 5->4 -> two clusters at level 0
    angles = np.array([0.0, 0.1, 0.25, 1.5, 1.6, 1.8])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    result = FINCH().fit(x)
    np.testing.assert_array_equal(result.partitions[0], [0, 0, 0, 1, 1, 1])
    assert result.n_clusters == [2]  # the one-cluster level above is dropped


def test_finch_reuses_a_knn_graph() -> None:
    x = clustered(1500, 32, 70, 0.8, seed=9)
    plain = FINCH().fit(x)
    reused = FINCH().fit(x, knn=build_knn(x, 30))
    assert plain.n_clusters == reused.n_clusters
    for a, b in zip(plain.partitions, reused.partitions, strict=True):
        np.testing.assert_array_equal(a, b)


def test_finch_approximate_path() -> None:
    x = clustered(3000, 32, 100, 0.6, seed=10)
    exact = FINCH().fit(x)
    approx = FINCH(exact_max=100, random_state=1).fit(x)
    # HNSW finds almost every first neighbour, so level 0 is nearly the exact partition
    assert abs(approx.n_clusters[0] - exact.n_clusters[0]) <= 0.05 * exact.n_clusters[0]
    assert adjusted_rand_score(exact.partitions[0], approx.partitions[0]) > 0.9
    for labels, count in zip(approx.partitions, approx.n_clusters, strict=True):
        np.testing.assert_array_equal(np.unique(labels), np.arange(count))


def test_finch_bad_inputs_raise() -> None:
    x = clustered(50, 4, 3, 0.5, seed=0)
    with pytest.raises(ValueError, match="features"):
        FINCH().fit(x[:, 0])
    bad = x.copy()
    bad[3] = 0.0
    with pytest.raises(ValueError, match="row 3 is all zeros"):
        FINCH().fit(bad)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        FINCH().fit(bad)
    with pytest.raises(ValueError, match="knn has 50 rows but features has 49"):
        FINCH().fit(x[:49], knn=build_knn(x, 5))
    with pytest.raises(ValueError, match="at least 2 columns"):
        FINCH().fit(x, knn=build_knn(x, 1))
    with pytest.raises(ValueError, match="random_state"):
        FINCH(random_state=-1).fit(x)
    with pytest.raises(ValueError, match="n_candidates"):
        FINCH(n_candidates=0).fit(x)


def dense_with_edges(dist: sp.csr_matrix, far: float = 2.0) -> np.ndarray:
    """Dense copy in which absent entries are `far` (> eps) and stored entries keep their value."""
    dense = np.full(dist.shape, far)
    coo = dist.tocoo()
    dense[coo.row, coo.col] = coo.data
    return dense


@pytest.mark.parametrize(("eps", "min_samples"), [(0.6, 4), (0.5, 2), (0.75, 8)])
def test_dbscan_matches_sklearn_brute_force_on_dense(eps: float, min_samples: int) -> None:
    x = clustered(700, 32, 30, 0.9, seed=13)
    dist = jaccard_distance(x)
    ours = DBSCANClusterer(eps=eps, min_samples=min_samples).fit_predict(dist)
    ref = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", algorithm="brute").fit_predict(
        dense_with_edges(dist)
    )
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, ref)
    assert (ours == -1).any() or eps > 0.6  # outliers exist at the default setting
    assert ours.max() >= 1


def test_dbscan_explicit_zero_is_an_edge_and_absent_is_not() -> None:
    rows = [0, 1, 0, 2, 1, 2]
    cols = [1, 0, 2, 0, 2, 1]
    dist = sp.csr_matrix((np.zeros(6), (rows, cols)), shape=(4, 4))  # explicit zeros among 0, 1, 2
    assert dist.nnz == 6
    labels = DBSCANClusterer(eps=0.1, min_samples=3).fit_predict(dist)
    np.testing.assert_array_equal(labels, [0, 0, 0, -1])  # point 3 has no stored entry: not a neighbour
    no_edges = dist.copy()
    no_edges.eliminate_zeros()
    np.testing.assert_array_equal(DBSCANClusterer(eps=0.1, min_samples=3).fit_predict(no_edges), [-1] * 4)


def test_dbscan_bad_inputs_raise() -> None:
    good = sp.csr_matrix(np.array([[0.0, 0.2], [0.2, 0.0]]))
    with pytest.raises(ValueError, match="distance_csr must be a scipy sparse matrix"):
        DBSCANClusterer().fit_predict(np.zeros((2, 2)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square"):
        DBSCANClusterer().fit_predict(sp.csr_matrix((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        DBSCANClusterer().fit_predict(sp.csr_matrix(np.array([[0.0, -0.2], [-0.2, 0.0]])))
    with pytest.raises(ValueError, match="finite"):
        DBSCANClusterer().fit_predict(sp.csr_matrix(np.array([[0.0, np.nan], [np.nan, 0.0]])))
    with pytest.raises(ValueError, match="eps"):
        DBSCANClusterer(eps=0).fit_predict(good)
    with pytest.raises(ValueError, match="eps"):
        DBSCANClusterer(eps="0.5").fit_predict(good)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_samples"):
        DBSCANClusterer(min_samples=0).fit_predict(good)
    with pytest.raises(ValueError, match="at least one row"):
        DBSCANClusterer().fit_predict(sp.csr_matrix((0, 0)))


def test_select_finch_level() -> None:
    result = FinchResult(partitions=[np.zeros(1)] * 4, n_clusters=[100, 40, 12, 3])
    assert select_finch_level(result, 45) == 1
    assert select_finch_level(result, 1000) == 0
    assert select_finch_level(result, 0) == 3
    assert select_finch_level(result, 26) == 1  # |40-26| = |12-26| = 14: tie -> finer level
    assert select_finch_level(result, 7) == 3  # |12-7| = 5 > |3-7| = 4
    with pytest.raises(ValueError, match="n_target"):
        select_finch_level(result, -1)
    with pytest.raises(ValueError, match="no FINCH level"):
        select_finch_level(FinchResult(partitions=[], n_clusters=[]), 3)
    with pytest.raises(ValueError, match="FinchResult"):
        select_finch_level([100, 40], 3)  # type: ignore[arg-type]
