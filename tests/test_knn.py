"""kNN graph: exact path equals brute force, self in column 0 under ties, approximate path and recall."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from strategies import FaissLoaderNoise
from strategies.knn import (
    KnnGraph,
    approximate_recall,
    build_knn,
    faiss_threads,
    knn_recall,
)
from strategies.validation import check_features


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_rows(n: int, d: int, n_centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, d))
    x = centres[rng.integers(0, n_centres, size=n)] + 0.5 * rng.normal(size=(n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: float64 similarities, self first, others by (-sim, index)."""
    s = x.astype(np.float64) @ x.astype(np.float64).T
    n = x.shape[0]
    idx = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        others = np.delete(np.arange(n), i)
        order = np.lexsort((others, -s[i, others]))[: k - 1]
        idx[i, 0] = i
        idx[i, 1:] = others[order]
    return idx, np.take_along_axis(s, idx, axis=1)


@pytest.mark.parametrize(("n", "d", "k"), [(1, 4, 3), (2, 3, 5), (7, 5, 7), (300, 16, 10), (500, 32, 31)])
def test_exact_equals_brute_force(n: int, d: int, k: int) -> None:
    x = unit_rows(n, d, seed=n)
    g = build_knn(x, k)
    k_eff = min(k, n)
    ref_idx, ref_sim = brute_force(x, k_eff)
    assert g.indices.shape == (n, k_eff) and g.indices.dtype == np.int64
    assert g.similarities.dtype == np.float32
    np.testing.assert_array_equal(g.indices, ref_idx)
    np.testing.assert_allclose(g.similarities, ref_sim, atol=1e-5)
    assert g.n == n and g.k == k_eff


def test_rows_sorted_descending_after_self() -> None:
    g = build_knn(clustered_rows(400, 24, 10), 15)
    assert np.all(np.diff(g.similarities[:, 1:], axis=1) <= 0)


def test_self_is_column_zero_with_many_duplicates() -> None:
    x = unit_rows(200, 8, seed=3)
    dup = np.array([3, 10, 20, 30, 40, 50, 60, 70, 150, 199])
    x[dup] = x[50]
    g = build_knn(x, 5)
    np.testing.assert_array_equal(g.indices[:, 0], np.arange(200))
    for i in dup:
        # ties broken by ascending index: the four lowest other copies
        expected = [j for j in dup if j != i][:4]
        assert list(g.indices[i, 1:]) == expected, i
        np.testing.assert_allclose(g.similarities[i], 1.0, atol=1e-6)


def test_self_first_with_duplicates_in_large_batch() -> None:
    # >= 20 queries takes faiss's BLAS path, whose tie order differs from the small-batch path
    x = unit_rows(3000, 16, seed=4)
    x[100:260] = x[5]
    g = build_knn(x, 6)
    np.testing.assert_array_equal(g.indices[:, 0], np.arange(3000))
    assert list(g.indices[150, 1:]) == [5, 100, 101, 102, 103]
    assert list(g.indices[5, 1:]) == [100, 101, 102, 103, 104]


@pytest.mark.parametrize("approximate", ["hnsw", "ivf"])
def test_approximate_path_structure_and_recall(approximate: str) -> None:
    x = clustered_rows(2000, 32, 40, seed=5)
    approx = build_knn(x, 10, exact_max=100, approximate=approximate)
    exact = build_knn(x, 10)
    np.testing.assert_array_equal(approx.indices[:, 0], np.arange(2000))
    assert approx.indices.shape == (2000, 10)
    assert (approx.indices >= 0).all()
    # no row lists the same neighbour twice or itself again
    srt = np.sort(approx.indices, axis=1)
    assert not (srt[:, 1:] == srt[:, :-1]).any()
    recall = knn_recall(approx, exact)
    assert 0.8 <= recall <= 1.0
    sampled = approximate_recall(x, approx, n_queries=300)
    assert abs(sampled - recall) < 0.08
    assert knn_recall(exact, exact) == 1.0
    assert approximate_recall(x, exact, n_queries=300) == 1.0


def test_wide_features_are_searched_projected_and_scored_in_full_dimension() -> None:
    from strategies.defaults import APPROXIMATE_DIM

    # identities of 4 views on a low-dimensional manifold inside 4 x APPROXIMATE_DIM dimensions
    rng = np.random.default_rng(8)
    d = 4 * APPROXIMATE_DIM
    basis = rng.normal(size=(48, d))
    centres = rng.normal(size=(500, 48)) @ basis
    x = np.repeat(centres, 4, axis=0) + 4.0 * rng.normal(size=(2000, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    labels = np.repeat(np.arange(500), 4)
    approx = build_knn(x, 10, exact_max=100, approximate="ivf")
    exact = build_knn(x, 10)
    # similarities are full-dimension cosines, sorted as the contract says
    cos = np.einsum("id,ijd->ij", x, x[approx.indices])
    np.testing.assert_allclose(approx.similarities, cos, atol=1e-5)
    assert (np.diff(approx.similarities[:, 1:], axis=1) <= 1e-6).all()
    # and the true same-identity neighbours survive the projection
    def mates(g: KnnGraph) -> float:
        return float((labels[g.indices[:, 1:4]] == labels[:, None]).mean())
    assert mates(exact) > 0.5
    assert mates(approx) >= 0.95 * mates(exact)


def test_recall_counts_missed_neighbours() -> None:
    exact = KnnGraph(np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]]), np.ones((3, 3)))
    approx = KnnGraph(np.array([[0, 2, 1], [1, 2, 0], [2, 0, 1]]), np.ones((3, 3)))
    assert knn_recall(approx, exact) == 1.0  # order within a row does not matter
    worse = KnnGraph(np.array([[0, 1, 1], [1, 0, 0], [2, 1, 1]]), np.ones((3, 3)))
    assert knn_recall(worse, exact) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal shapes"):
        knn_recall(KnnGraph(np.array([[0, 1], [1, 0]]), np.ones((2, 2))), exact)


def test_approximate_is_deterministic_for_ivf() -> None:
    x = clustered_rows(1500, 16, 30, seed=6)
    a = build_knn(x, 8, exact_max=10, approximate="ivf", random_state=3, n_threads=1)
    b = build_knn(x, 8, exact_max=10, approximate="ivf", random_state=3, n_threads=1)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_faiss_threads_restores_previous_count() -> None:
    import faiss

    before = faiss.omp_get_max_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    with pytest.raises(ValueError, match="n_threads"), faiss_threads(0):
        pass


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (None, "is None"),
        (np.ones(3, dtype=np.float32), "2-D"),
        (np.array([["a", "b"]]), "numeric"),
        (np.zeros((0, 4), dtype=np.float32), "at least 1 row"),
        (np.zeros((3, 0), dtype=np.float32), "at least 1 column"),
        (np.array([[np.nan, 1.0]], dtype=np.float32), "NaN or infinite"),
        (np.array([[2.0, 0.0]], dtype=np.float32), "L2-normalised"),
    ],
)
def test_bad_features_raise(features: object, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        build_knn(features, 3)  # type: ignore[arg-type]
    assert "features" in str(info.value)


def test_bad_parameters_raise() -> None:
    x = unit_rows(10, 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        build_knn(x, 0)
    with pytest.raises(ValueError, match="k must be an integer"):
        build_knn(x, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="approximate"):
        build_knn(x, 3, exact_max=1, approximate="lsh")
    with pytest.raises(ValueError, match="exact_max"):
        build_knn(x, 3, exact_max=-1)
    with pytest.raises(ValueError, match="use_gpu"):
        build_knn(x, 3, use_gpu=True)  # the CPU-only faiss in the test environment
    with pytest.raises(ValueError, match="n_queries"):
        approximate_recall(x, build_knn(x, 3), n_queries=0)


def test_knn_graph_validates_its_arrays() -> None:
    with pytest.raises(ValueError, match="column 0"):
        KnnGraph(np.array([[1, 0], [0, 1]]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="does not match"):
        KnnGraph(np.array([[0, 1], [1, 0]]), np.ones((2, 3)))
    with pytest.raises(ValueError, match="lie in"):
        KnnGraph(np.array([[0, 5], [1, 0]]), np.ones((2, 2)))


def test_check_features_accepts_float64_and_returns_float32() -> None:
    x = unit_rows(5, 3).astype(np.float64)
    out = check_features(x)
    assert out.dtype == np.float32 and out.flags.c_contiguous


def _loader_record(message: str) -> logging.LogRecord:
    return logging.LogRecord("faiss.loader", logging.INFO, __file__, 0, message, None, None)


def test_faiss_loader_noise_about_missing_optional_builds_is_dropped() -> None:
    noise = FaissLoaderNoise()
    for dropped in (
        "Loading faiss with AVX512 support.",
        "Loading faiss with AVX2 support.",
        "Could not load library with AVX2 support due to:\n"
        "ModuleNotFoundError(\"No module named 'faiss.swigfaiss_avx2'\")",
    ):
        assert not noise.filter(_loader_record(dropped)), dropped
    for kept in (
        "Loading faiss.",
        "Successfully loaded faiss with AVX2 support.",
        "Could not load library with AVX2 support due to:\nImportError('undefined symbol')",
    ):
        assert noise.filter(_loader_record(kept)), kept
    assert any(isinstance(f, FaissLoaderNoise) for f in logging.getLogger("faiss.loader").filters)


def test_importing_knn_logs_no_module_not_found_lines() -> None:
    # A fresh interpreter: faiss logs its loader lines once, at its first import.
    code = "import logging; logging.basicConfig(level=logging.DEBUG); import strategies.knn"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert "Successfully loaded faiss" in out.stderr
    assert "ModuleNotFoundError" not in out.stderr, out.stderr
