"""k-reciprocal Jaccard distance and similarity against a direct dense implementation of ALGORITHMS.md §1."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import strategies.jaccard as jaccard_module
from strategies.jaccard import jaccard_distance, jaccard_encodings, jaccard_similarity_pairs
from strategies.knn import KnnGraph, build_knn


def clustered_rows(n: int, d: int, n_centres: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, d))
    x = centres[rng.integers(0, n_centres, size=n)] + noise * rng.normal(size=(n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dense_reference(x: np.ndarray, initial_rank: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Steps 1-5 of §1 written out literally on dense matrices, one point at a time.

    ``initial_rank`` (self first) is shared with the implementation so that float32 near-ties in the
    neighbour order cannot change set membership; test_knn checks that ranking against brute force.
    """
    n = x.shape[0]
    k1 = max(1, min(k1, n - 1))
    k2 = min(k2, k1)
    half = round(k1 / 2)

    def reciprocal(i: int, kk: int) -> set[int]:
        return {int(j) for j in initial_rank[i, :kk] if i in initial_rank[j, :kk]}

    r_full = [reciprocal(i, k1) for i in range(n)]
    r_half = [reciprocal(i, half) for i in range(n)]
    xd = x.astype(np.float64)
    v = np.zeros((n, n))
    for i in range(n):
        r_star = set(r_full[i])
        for j in r_full[i]:
            if len(r_half[j] & r_full[i]) > 2 / 3 * len(r_half[j]):
                r_star |= r_half[j]
        members = sorted(r_star)
        weights = np.exp(-(2.0 - 2.0 * xd[members] @ xd[i]))
        v[i, members] = weights / weights.sum()
    v = np.stack([v[initial_rank[i, :k2]].mean(axis=0) for i in range(n)])
    d = np.empty((n, n))
    for i in range(n):
        d[i] = 1.0 - np.minimum(v[i], v).sum(axis=1) / np.maximum(v[i], v).sum(axis=1)
    return d


def edge_set(knn: KnnGraph) -> set[tuple[int, int]]:
    edges = {(i, i) for i in range(knn.n)}
    for i in range(knn.n):
        for j in knn.indices[i]:
            edges.add((i, int(j)))
            edges.add((int(j), i))
    return edges


@pytest.mark.parametrize(
    ("n", "d", "centres", "noise", "k1", "k2", "k_graph"),
    [
        (300, 16, 12, 0.5, 30, 6, 30),  # SpCL defaults
        (400, 24, 40, 0.8, 20, 6, 30),  # graph wider than k1
        (250, 8, 5, 1.5, 9, 1, 12),  # no query expansion, odd k1 (round(4.5) = 4)
        (200, 32, 200, 0.1, 7, 7, 7),  # k2 = k1, nearly every point its own cluster
    ],
)
def test_matches_dense_reference_on_edges(
    n: int, d: int, centres: int, noise: float, k1: int, k2: int, k_graph: int
) -> None:
    x = clustered_rows(n, d, centres, noise, seed=n + k1)
    knn = build_knn(x, k_graph)
    dist = jaccard_distance(x, k1=k1, k2=k2, knn=knn)
    ref = dense_reference(x, knn.indices, k1, k2)
    coo = dist.tocoo()
    assert set(zip(coo.row.tolist(), coo.col.tolist(), strict=True)) == edge_set(knn)
    np.testing.assert_allclose(coo.data, ref[coo.row, coo.col], atol=1e-6)


def test_default_graph_and_properties() -> None:
    x = clustered_rows(600, 32, 20, 0.6, seed=1)
    dist = jaccard_distance(x)
    assert isinstance(dist, sp.csr_matrix) and dist.shape == (600, 600)
    assert dist.dtype == np.float32
    assert abs(dist - dist.T).max() == 0  # exactly symmetric
    np.testing.assert_array_equal(dist.diagonal(), 0.0)
    assert dist.data.min() >= 0.0 and dist.data.max() <= 1.0
    # every row holds its 29 kNN neighbours (KNN_K = 30, self included) plus reverse edges
    assert (np.diff(dist.indptr) >= 30).all()
    ref = dense_reference(x, build_knn(x, 30).indices, 30, 6)
    coo = dist.tocoo()
    np.testing.assert_allclose(coo.data, ref[coo.row, coo.col], atol=1e-6)


def test_explicit_zeros_are_stored() -> None:
    x = clustered_rows(60, 8, 6, 0.5, seed=2)
    x[10:14] = x[5]  # exact duplicates: identical encodings, distance 0 between them
    dist = jaccard_distance(x, k1=4, k2=2)
    assert dist.nnz > np.count_nonzero(dist.data)
    dist_copy = dist.copy()
    dist_copy.eliminate_zeros()
    assert dist_copy.nnz < dist.nnz
    # the diagonal and the duplicate pairs are stored with value 0
    for i in (5, 10, 11, 12, 13):
        row = dist.getrow(i)
        assert i in row.indices
        stored = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
        assert stored[i] == 0.0
    # duplicates are an edge at distance 0 (up to float32 rounding of the encodings)
    ref = dense_reference(x, build_knn(x, 30).indices, 4, 2)
    assert ref[10, 11] == pytest.approx(0.0, abs=1e-12)
    assert 11 in dist.getrow(10).indices and dist[10, 11] <= 1e-6


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_tiny_inputs_are_clamped(n: int) -> None:
    x = clustered_rows(n, 4, 2, 0.3, seed=n)
    dist = jaccard_distance(x)  # k1 = 30 > n - 1 and k2 = 6 are clamped, not an error
    assert dist.shape == (n, n)
    assert dist.nnz == n * n  # the kNN graph of n <= 30 points is complete
    np.testing.assert_array_equal(dist.diagonal(), 0.0)
    ref = dense_reference(x, build_knn(x, n).indices, 30, 6)
    np.testing.assert_allclose(dist.toarray(), ref, atol=1e-6)


def test_two_points_are_maximally_distant() -> None:
    x = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    dist = jaccard_distance(x)  # k1 clamps to 1: each point's set is itself only
    np.testing.assert_allclose(dist.toarray(), [[0.0, 1.0], [1.0, 0.0]])


def test_bad_inputs_raise() -> None:
    x = clustered_rows(20, 4, 2, 0.3, seed=0)
    with pytest.raises(ValueError, match="k1"):
        jaccard_distance(x, k1=0)
    with pytest.raises(ValueError, match="k2"):
        jaccard_distance(x, k2=-1)
    with pytest.raises(ValueError, match="k1 must be an integer"):
        jaccard_distance(x, k1=3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="features"):
        jaccard_distance(np.ones((3, 2), dtype=np.float32))  # not normalised
    with pytest.raises(ValueError, match="features"):
        jaccard_distance(np.zeros((0, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="knn has 20 rows but features has 10"):
        jaccard_distance(x[:10] / np.linalg.norm(x[:10], axis=1, keepdims=True), knn=build_knn(x, 5))
    with pytest.raises(ValueError, match="knn has k=5"):
        jaccard_distance(x, k1=10, knn=build_knn(x, 5))
    with pytest.raises(ValueError, match="knn must be a KnnGraph"):
        jaccard_distance(x, knn=np.zeros((20, 5)))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- pairs off the kNN graph


@pytest.mark.parametrize("rows_factor", [0, 10**9])  # whole-graph reciprocity, then row by row
@pytest.mark.parametrize(("n_pairs", "k1", "k2"), [(6, 30, 6), (400, 30, 6), (50, 9, 1), (50, 8, 8)])
def test_similarity_pairs_match_dense_reference_off_the_knn_graph(
    n_pairs: int, k1: int, k2: int, rows_factor: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jaccard_module, "JACCARD_ROWS_FACTOR", rows_factor)
    x = clustered_rows(300, 16, 12, 0.5, seed=7)
    knn = build_knn(x, 30)
    ref = 1.0 - dense_reference(x, knn.indices, k1, k2)
    rng = np.random.default_rng(n_pairs)
    i, j = rng.integers(300, size=n_pairs), rng.integers(300, size=n_pairs)
    sim = jaccard_similarity_pairs(x, i, j, k1=k1, k2=k2, knn=knn)
    np.testing.assert_allclose(sim, ref[i, j], atol=1e-6)
    # most random pairs are no kNN edge: the distance matrix has nothing for them
    assert not set(zip(i.tolist(), j.tolist(), strict=True)) <= edge_set(knn)


def test_similarity_pairs_equal_one_minus_distance_on_edges() -> None:
    x = clustered_rows(250, 8, 10, 0.6, seed=8)
    knn = build_knn(x, 30)
    coo = jaccard_distance(x, knn=knn).tocoo()
    sim = jaccard_similarity_pairs(x, coo.row, coo.col, knn=knn)
    np.testing.assert_allclose(sim, 1.0 - coo.data.astype(np.float64), atol=1e-6)


def test_encodings_of_some_rows_equal_those_rows_of_all() -> None:
    x = clustered_rows(200, 8, 10, 0.6, seed=9)
    knn = build_knn(x, 30)
    every = jaccard_encodings(x, knn=knn)
    assert every.shape == (200, 200)
    np.testing.assert_allclose(np.asarray(every.sum(axis=1)).ravel(), 1.0)
    rows = np.array([17, 3, 17, 150])
    some = jaccard_encodings(x, rows, knn=knn)
    assert some.shape == (4, 200)
    np.testing.assert_allclose(some.toarray(), every[rows].toarray(), atol=1e-15)


def test_similarity_pairs_bad_inputs_raise() -> None:
    x = clustered_rows(20, 4, 2, 0.3, seed=0)
    assert jaccard_similarity_pairs(x, [], []).shape == (0,)
    with pytest.raises(ValueError, match="same length"):
        jaccard_similarity_pairs(x, [0, 1], [2])
    with pytest.raises(ValueError, match=r"pair indices must lie in \[0, 20\)"):
        jaccard_similarity_pairs(x, [0], [20])
    with pytest.raises(ValueError, match="rows must be"):
        jaccard_encodings(x, np.array([-1]))
