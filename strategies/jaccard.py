"""k-reciprocal Jaccard distance on the kNN graph (Zhong et al. CVPR 2017, as used by SpCL; ALGORITHMS.md §1).

DBSCAN needs a distance that is robust to hubs, and raw cosine is not: the Jaccard overlap of
k-reciprocal neighbourhoods is. The dense n×n matrix of the reference code is 4n² bytes, so everything
here is sparse: the neighbourhood encodings V are sparse rows, and the distance is evaluated only on the
kNN edges (both directions) and the diagonal — the only pairs DBSCAN and AAS ever look at.
Every step is a vectorised numpy / scipy.sparse operation: no per-pair or per-row Python loop (Σmin over
the edges runs in cache-sized blocks of rows).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from strategies.defaults import JACCARD_BLOCK_WORK, JACCARD_DOT_CHUNK, K1, K2, KNN_K
from strategies.knn import KnnGraph, build_knn
from strategies.validation import check_features, check_int


def _pattern(rows: np.ndarray, cols: np.ndarray, n: int) -> sp.csr_matrix:
    """Canonical CSR (sorted, no duplicates) with value 1 at every (row, col)."""
    m = sp.csr_matrix((np.ones(rows.size, dtype=np.int32), (rows, cols)), shape=(n, n))
    m.sum_duplicates()
    m.data[:] = 1
    return m


def _reciprocal(indices: np.ndarray, kk: int) -> sp.csr_matrix:
    """R(i, kk) = {j in N(i, kk) : i in N(j, kk)} as a 0/1 CSR matrix; N(i, kk) = first kk columns."""
    n = indices.shape[0]
    if kk < 1:
        return sp.csr_matrix((n, n), dtype=np.int32)
    forward = _pattern(np.repeat(np.arange(n), kk), indices[:, :kk].ravel(), n)
    return forward.multiply(forward.T.tocsr()).tocsr()


def _expanded_sets(indices: np.ndarray, k1: int) -> sp.csr_matrix:
    """R*(i): R(i, k1) plus R(j, round(k1/2)) for every j in R(i, k1) whose half-set lies > 2/3 inside it."""
    r_full = _reciprocal(indices, k1)
    r_half = _reciprocal(indices, round(k1 / 2))
    # overlap[i, j] = |R(i, k1) ∩ R(j, half)|, kept only where j ∈ R(i, k1)
    overlap = (r_full @ r_half.T).multiply(r_full).tocoo()
    half_size = np.diff(r_half.indptr)
    # integer form of |∩| > 2/3 |R(j, half)| (identical to the float test for every size, and exact)
    keep = 3 * overlap.data > 2 * half_size[overlap.col]
    chosen = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.int32), (overlap.row[keep], overlap.col[keep])), shape=r_full.shape
    )
    expanded = (r_full + chosen @ r_half).tocsr()
    expanded.data[:] = 1
    return expanded


def _encodings(x: np.ndarray, knn: KnnGraph, r_star: sp.csr_matrix) -> sp.csr_matrix:
    """V_i = softmax over l in R*(i) of -(2 - 2 x_i·x_l), reusing the kNN similarities where they exist."""
    n = x.shape[0]
    # exp(-(2 - 2s)) lies in [e^-4, 1]: a softmax without max-subtraction cannot overflow, and no weight is 0
    knn_rows = np.repeat(np.arange(n), knn.k)
    knn_cols = knn.indices.ravel()
    knn_weight = np.exp(2.0 * knn.similarities.ravel().astype(np.float64) - 2.0)
    known = r_star.multiply(sp.csr_matrix((knn_weight, (knn_rows, knn_cols)), shape=(n, n))).tocsr()
    knn_mask = sp.csr_matrix((np.ones(knn_cols.size, dtype=np.int32), (knn_rows, knn_cols)), shape=(n, n))
    missing = (r_star - r_star.multiply(knn_mask)).tocoo()
    sims = np.empty(missing.nnz, dtype=np.float64)
    step = JACCARD_DOT_CHUNK  # bounds the gathered (step, d) blocks
    for start in range(0, missing.nnz, step):
        # int64 indices: numpy's fancy indexing is several times slower with int32
        r = missing.row[start : start + step].astype(np.int64)
        c = missing.col[start : start + step].astype(np.int64)
        sims[start : start + r.size] = np.einsum("ij,ij->i", x[r], x[c])  # float32, like the kNN sims
    extra = sp.csr_matrix((np.exp(2.0 * sims - 2.0), (missing.row, missing.col)), shape=(n, n))
    v = (known + extra).tocsr()
    return sp.diags(1.0 / np.asarray(v.sum(axis=1)).ravel()) @ v


def _edges(knn: KnnGraph) -> tuple[np.ndarray, np.ndarray]:
    """Undirected kNN edges (i < j), each once, sorted."""
    n = knn.n
    i = np.repeat(np.arange(n, dtype=np.int64), knn.k - 1)
    j = knn.indices[:, 1:].ravel()
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    keys = np.unique(lo[lo != hi] * n + hi[lo != hi])
    return keys // n, keys % n


def _edge_intersections(v: sp.csr_matrix, ei: np.ndarray, ej: np.ndarray) -> np.ndarray:
    """Σ_l min(V_il, V_jl) for every edge (ei[e], ej[e]); ``ei`` sorted ascending.

    Rows i are processed in blocks small enough to stay in cache: a block's rows are scattered into a
    dense buffer over the block's own columns, then every entry of every V_j is compared with that
    buffer in one gather. Each edge costs |V_j| element operations; no sparse merge, no row copies.
    """
    n = v.shape[0]
    # int64 index arrays: numpy's gathers run several times faster with them than with int32
    indptr, indices, data = v.indptr.astype(np.int64), v.indices.astype(np.int64), v.data
    lengths = np.diff(indptr)
    inter = np.zeros(ei.size, dtype=np.float64)
    bounds = np.searchsorted(ei, np.arange(n + 1))  # edges of row i: bounds[i]:bounds[i + 1]
    work = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(ei, weights=lengths[ej], minlength=n).astype(np.int64), out=work[1:])
    slot = np.full(n, -1, dtype=np.int64)
    a = 0
    while a < n:
        b = max(a + 1, int(np.searchsorted(work, work[a] + JACCARD_BLOCK_WORK, side="right")) - 1)
        b = min(b, n)
        e0, e1 = bounds[a], bounds[b]
        if e0 < e1:
            lo, hi = indptr[a], indptr[b]
            own_cols = indices[lo:hi]
            cols = np.unique(own_cols)
            width = cols.size + 1  # the last column stays 0: "column not in any row of the block"
            slot[cols] = np.arange(cols.size)
            dense = np.zeros((b - a) * width, dtype=np.float64)
            dense[np.repeat(np.arange(b - a), lengths[a:b]) * width + slot[own_cols]] = data[lo:hi]
            rows_j = ej[e0:e1]
            seg = lengths[rows_j]
            ends = np.cumsum(seg)
            # positions of the entries of every V_j, concatenated edge after edge
            pos = np.arange(ends[-1]) + np.repeat(indptr[rows_j] - (ends - seg), seg)
            local = slot[indices[pos]]
            local[local < 0] = cols.size
            mins = np.minimum(dense[np.repeat(ei[e0:e1] - a, seg) * width + local], data[pos])
            inter[e0:e1] = np.add.reduceat(mins, ends - seg)
            slot[cols] = -1
        a = b
    return inter


def _check_knn(knn: object, n: int, k1: int) -> None:
    if not isinstance(knn, KnnGraph):
        raise ValueError(f"knn must be a KnnGraph, got {type(knn).__name__}")
    if knn.n != n:
        raise ValueError(f"knn has {knn.n} rows but features has {n}")
    if knn.k < k1:
        raise ValueError(f"knn has k={knn.k} columns but k1={k1} needs at least {k1}")


def jaccard_distance(
    features: np.ndarray,
    *,
    k1: int = K1,
    k2: int = K2,
    knn: KnnGraph | None = None,
    check_input: bool = True,
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance d_J on the kNN edges (both directions) and the diagonal.

    Returns a symmetric ``(n, n)`` float32 CSR matrix with values in [0, 1]; an absent entry means
    "not a kNN edge", never distance 1, so explicit zeros are **stored** (distance 0 is an edge).
    ``k1`` is clamped to ``[1, n - 1]`` and ``k2`` to ``[1, k1]``. ``knn`` (self in column 0, at least
    ``k1`` columns) is built with ``max(k1, KNN_K)`` neighbours when not given; its columns define the edges.
    ``check_input=False`` skips the checks for a caller that validated its inputs once already.
    """
    x = check_features(features) if check_input else features
    n = x.shape[0]
    if check_input:
        k1 = check_int(k1, "k1", 1)
        k2 = check_int(k2, "k2", 1)
    k1 = max(1, min(k1, n - 1))
    k2 = min(k2, k1)
    if knn is None:
        knn = build_knn(x, max(k1, KNN_K), check_input=False)
    elif check_input:
        _check_knn(knn, n, k1)
    r_star = _expanded_sets(knn.indices, k1)
    v = _encodings(x, knn, r_star)
    if k2 > 1:
        qe_rows = np.repeat(np.arange(n), k2)
        qe = sp.csr_matrix(
            (np.full(n * k2, 1.0 / k2), (qe_rows, knn.indices[:, :k2].ravel())), shape=(n, n)
        )
        v = (qe @ v).tocsr()
    v.sort_indices()
    row_sum = np.asarray(v.sum(axis=1)).ravel()

    ei, ej = _edges(knn)
    inter = _edge_intersections(v, ei, ej)
    # Σ max(V_i, V_j) = Σ V_i + Σ V_j - Σ min(V_i, V_j)
    dist = 1.0 - inter / (row_sum[ei] + row_sum[ej] - inter)
    np.clip(dist, 0.0, 1.0, out=dist)

    diag = np.arange(n, dtype=np.int64)
    rows = np.concatenate([ei, ej, diag])
    cols = np.concatenate([ej, ei, diag])
    data = np.concatenate([dist, dist, np.zeros(n)]).astype(np.float32)
    # build CSR by hand: the coo->csr route would be fine today, but stored zeros are the contract here
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    out = sp.csr_matrix((data[order], cols[order], indptr), shape=(n, n))
    out.has_sorted_indices = True
    return out
