"""The two clusterings AAS compares (ALGORITHMS.md §2): DBSCAN on the sparse Jaccard distance, and FINCH.

FINCH is our own implementation (the PyPI ``finch-clust`` code is marked "academic use only"); it
reproduces ``finch-clust`` 0.2.3 in its exact cosine mode partition for partition, which the tests
check. Facts about that reference which we match on purpose:

- first neighbours are by cosine distance ``clip(1 - cos, 0, 2)``, self excluded, ties to the lowest
  index; level 0 uses the given features, every later level the *un-normalised* means of the original
  features over the current clusters (cosine re-normalises them implicitly);
- clusters are the weakly connected components of the first-neighbour graph, numbered in order of
  their lowest member (so j=κi, i=κj and κi=κj all link);
- it stops as soon as a level merges at most one cluster or reaches one cluster, and drops that level;
  level 0 is always kept;
- its ``ensure_early_exit`` distance cut has no effect (it writes explicit zeros into a sparse graph,
  which ``connected_components`` still counts as edges), so there is no such cut here.

First-neighbour candidates come from faiss (:func:`strategies.knn.build_knn`, exact up to
``exact_max``); the winner among them is chosen on float64 cosines so the result does not depend on
BLAS rounding and ties resolve by index.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from strategies.defaults import (
    APPROXIMATE_INDEX,
    DBSCAN_EPS,
    DBSCAN_MIN_SAMPLES,
    EXACT_KNN_MAX,
    FINCH_CANDIDATES,
)
from strategies.knn import KnnGraph, build_knn
from strategies.validation import check_features, check_int

_RESCORE_ROWS = 1024  # rows per float64 rescoring block: bounds the (rows, candidates, d) gather
# float32 cosines of unit vectors are accurate to ~1e-6; closer calls than this are re-decided in float64
_NEAR_TIE = 1e-4


class DBSCANClusterer:
    """DBSCAN on a precomputed **sparse** distance matrix (SpCL defaults eps=0.6, min_samples=4).

    A stored entry (explicit zeros included) is an edge at that distance; an absent entry means "not
    neighbours", never distance 0. Each point counts itself towards ``min_samples``. Outliers are -1.
    """

    def __init__(
        self, eps: float = DBSCAN_EPS, min_samples: int = DBSCAN_MIN_SAMPLES, n_jobs: int | None = None
    ):
        self.eps = eps
        self.min_samples = min_samples
        self.n_jobs = n_jobs

    def fit_predict(self, distance_csr: sp.spmatrix | sp.sparray) -> np.ndarray:
        """Cluster labels (int64, -1 = outlier) for the rows of ``distance_csr``."""
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float, np.integer, np.floating)):
            raise ValueError(f"eps must be a number, got {self.eps!r}")
        if not np.isfinite(self.eps) or self.eps <= 0:
            raise ValueError(f"eps must be a finite number > 0, got {self.eps}")
        min_samples = check_int(self.min_samples, "min_samples", 1)
        if not sp.issparse(distance_csr):
            raise ValueError(
                "distance_csr must be a scipy sparse matrix (absent entries = not neighbours); "
                f"got {type(distance_csr).__name__}"
            )
        dist = sp.csr_matrix(distance_csr, dtype=np.float64)
        n_rows, n_cols = dist.shape
        if n_rows != n_cols:
            raise ValueError(f"distance_csr must be square, got shape {dist.shape}")
        if n_rows == 0:
            raise ValueError("distance_csr must have at least one row")
        if dist.nnz and (not np.isfinite(dist.data).all() or dist.data.min() < 0):
            raise ValueError("distance_csr must hold finite, non-negative distances")
        model = DBSCAN(eps=float(self.eps), min_samples=min_samples, metric="precomputed", n_jobs=self.n_jobs)
        return model.fit_predict(dist).astype(np.int64)


@dataclass(frozen=True, eq=False)
class FinchResult:
    """FINCH hierarchy: ``partitions[0]`` is the finest; each is a label array ``0..c-1`` over the rows."""

    partitions: list[np.ndarray]
    n_clusters: list[int]


def _components(first: np.ndarray) -> tuple[np.ndarray, int]:
    """Weakly connected components of the graph i -> first[i], numbered by their lowest member."""
    m = first.size
    graph = sp.csr_matrix((np.ones(m, dtype=np.int8), (np.arange(m), first)), shape=(m, m))
    count, labels = sp.csgraph.connected_components(graph, directed=True, connection="weak")
    return labels.astype(np.int64), int(count)


def _norms(vectors: np.ndarray) -> np.ndarray:
    """Row norms accumulated in float64 without a float64 copy of the matrix (zero rows -> 1, as in
    sklearn's ``normalize``, so they stay zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
    norms[norms == 0] = 1.0
    return norms


def _unit(vectors: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to unit length in float64."""
    v = np.asarray(vectors, dtype=np.float64)
    return v / (_norms(v) if norms is None else norms)[:, None]


@dataclass(eq=False)
class FINCH:
    """FINCH clustering (Sarfraz et al. CVPR 2019), exact cosine first neighbours; see the module doc.

    ``random_state`` seeds the approximate index used above ``exact_max`` points.
    """

    random_state: int = 0
    _: KW_ONLY
    exact_max: int = EXACT_KNN_MAX
    approximate: str = APPROXIMATE_INDEX
    use_gpu: bool | None = None
    n_threads: int | None = None
    n_candidates: int = FINCH_CANDIDATES

    def _first_neighbours(
        self, vectors: np.ndarray, candidates: np.ndarray | None = None, sims: np.ndarray | None = None
    ) -> np.ndarray:
        """κ_i = argmin over j != i of clip(1 - cos, 0, 2), ties to the lowest j, among faiss candidates.

        faiss's float32 order is trusted where the best candidate leads the next by a clear margin;
        near-ties (and cosines that clip to distance 0) are re-decided on float64 cosines.
        """
        m = vectors.shape[0]
        if m == 1:
            return np.zeros(1, dtype=np.int64)
        # float64 only where a decision needs it (the near-tie rows below): converting every row at
        # every level cost ~20% of FINCH at 50k points.
        norms = _norms(vectors)
        if candidates is None or sims is None:
            graph = build_knn(
                (vectors / norms[:, None]).astype(np.float32),
                min(m, self.n_candidates + 1),
                exact_max=self.exact_max,
                approximate=self.approximate,
                use_gpu=self.use_gpu,
                random_state=self.random_state,
                n_threads=self.n_threads,
            )
            candidates, sims = graph.indices[:, 1:], graph.similarities[:, 1:]
        first = candidates[:, 0].copy()
        ambiguous = sims[:, 0] >= 1.0 - _NEAR_TIE
        if candidates.shape[1] > 1:
            ambiguous |= sims[:, 0] - sims[:, 1] <= _NEAR_TIE
        rows = np.flatnonzero(ambiguous)
        for start in range(0, rows.size, _RESCORE_ROWS):
            r = rows[start : start + _RESCORE_ROWS]
            block = candidates[r]
            unit_r = _unit(vectors[r], norms[r])
            unit_block = _unit(vectors[block.ravel()], norms[block.ravel()]).reshape(*block.shape, -1)
            dist = np.clip(1.0 - np.einsum("id,ikd->ik", unit_r, unit_block), 0.0, 2.0)
            best = np.lexsort((block, dist), axis=-1)[:, 0]
            first[r] = block[np.arange(r.size), best]
        return first

    def fit(
        self, features: np.ndarray, knn: KnnGraph | None = None, *, check_input: bool = True
    ) -> FinchResult:
        """Cluster ``features`` (n, d); ``knn`` (self in column 0, k >= 2) reuses an existing graph for
        the level-0 first neighbours instead of searching again. ``check_input=False`` skips the checks
        of ``features`` and ``knn`` for a caller that made them (``features`` float32, no zero row)."""
        check_int(self.random_state, "random_state", 0)
        check_int(self.n_candidates, "n_candidates", 1)
        data = _check_fit_inputs(features, knn) if check_input else features
        n = data.shape[0]
        candidates = sims = None
        if knn is not None:
            candidates = knn.indices[:, 1 : 1 + self.n_candidates]
            sims = knn.similarities[:, 1 : 1 + self.n_candidates]

        labels, count = _components(self._first_neighbours(data, candidates, sims))
        partitions, n_clusters = [labels], [count]
        while count > 1:
            # un-normalised means of the original rows over the current clusters (as finch-clust)
            ones = np.ones(n, dtype=np.float32)
            indicator = sp.csr_matrix((ones, (np.arange(n), labels)), shape=(n, count))
            means = (indicator.T @ data) / np.bincount(labels, minlength=count)[:, None]
            merged, new_count = _components(self._first_neighbours(means))
            if new_count == 1 or count - new_count <= 1:
                break
            labels, count = merged[labels], new_count
            partitions.append(labels)
            n_clusters.append(count)
        return FinchResult(partitions=partitions, n_clusters=n_clusters)


def _check_fit_inputs(features: np.ndarray, knn: KnnGraph | None) -> np.ndarray:
    data = check_features(features, unit_norm="any")
    zero = np.flatnonzero(~data.any(axis=1))
    if zero.size:
        raise ValueError(f"features row {int(zero[0])} is all zeros: its cosine similarity is undefined")
    n = data.shape[0]
    if knn is not None:
        if not isinstance(knn, KnnGraph):
            raise ValueError(f"knn must be a KnnGraph, got {type(knn).__name__}")
        if knn.n != n:
            raise ValueError(f"knn has {knn.n} rows but features has {n}")
        if knn.k < 2 and n > 1:
            raise ValueError(f"knn needs at least 2 columns (self + one neighbour), got k={knn.k}")
    return data


def select_finch_level(result: FinchResult, n_target: int) -> int:
    """Index of the FINCH level whose cluster count is closest to ``n_target`` (ties -> the finer level).

    AAS passes DBSCAN's number of groups with every outlier its own group (``aas_finch_level``), so that
    both clusterings work at the granularity its regions of uncertainty see.
    """
    if not isinstance(result, FinchResult):
        raise ValueError(f"result must be a FinchResult, got {type(result).__name__}")
    if not result.n_clusters:
        raise ValueError("result has no FINCH level")
    n_target = check_int(n_target, "n_target", 0)
    gaps = np.abs(np.asarray(result.n_clusters, dtype=np.int64) - n_target)
    return int(np.argmin(gaps))  # first minimum = finest, since level 0 is the finest
