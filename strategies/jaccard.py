"""k-reciprocal Jaccard distance on the kNN graph (Zhong et al. CVPR 2017, as used by SpCL; ALGORITHMS.md §1).

DBSCAN needs a distance that is robust to hubs, and raw cosine is not: the Jaccard overlap of
k-reciprocal neighbourhoods is. The dense n×n matrix of the reference code is 4n² bytes, so everything
here is sparse: the neighbourhood encodings V are sparse rows, and the distance is evaluated only on the
kNN edges (both directions) and the diagonal — the only pairs DBSCAN looks at. Pairs off the kNN graph
(AAS's region medoids) get their similarity from ``jaccard_similarity_pairs``, which builds V only for
the rows those pairs name.
Every step is a vectorised numpy / scipy.sparse operation: no per-pair or per-row Python loop (Σmin over
the edges runs in cache-sized blocks of rows).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from strategies.defaults import JACCARD_BLOCK_WORK, JACCARD_DOT_CHUNK, JACCARD_ROWS_FACTOR, K1, K2, KNN_K
from strategies.knn import KnnGraph, build_knn
from strategies.validation import check_features, check_int


def _pattern(rows: np.ndarray, cols: np.ndarray, n: int) -> sp.csr_matrix:
    """Canonical CSR (sorted, no duplicates) with value 1 at every (row, col)."""
    m = sp.csr_matrix((np.ones(rows.size, dtype=np.int32), (rows, cols)), shape=(n, n))
    m.sum_duplicates()
    m.data[:] = 1
    return m


def _reciprocal(indices: np.ndarray, kk: int, rows: np.ndarray | None = None) -> sp.csr_matrix:
    """R(i, kk) = {j in N(i, kk) : i in N(j, kk)} as a 0/1 CSR matrix; N(i, kk) = first kk columns.

    With ``rows``, only those rows are filled (the others stay empty): reciprocity is then checked
    row by row against the neighbours' own lists (kk² per row), so the cost follows ``rows``, not n;
    when ``rows`` is most of the pool, the whole-graph product is cheaper and its extra rows are dropped.
    """
    n = indices.shape[0]
    if kk < 1:
        return sp.csr_matrix((n, n), dtype=np.int32)
    if rows is None or rows.size * kk > JACCARD_ROWS_FACTOR * n:
        forward = _pattern(np.repeat(np.arange(n), kk), indices[:, :kk].ravel(), n)
        both = forward.multiply(forward.T.tocsr()).tocsr()
        if rows is None:
            return both
        keep = np.zeros(n, dtype=bool)
        keep[rows] = True
        lengths = np.diff(both.indptr) * keep
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        entries = np.repeat(keep, np.diff(both.indptr))
        out = sp.csr_matrix((both.data[entries], both.indices[entries], indptr), shape=(n, n))
        out.has_canonical_format = True
        return out
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    cols = indices[rows, :kk]
    back = np.empty(cols.shape, dtype=bool)
    step = max(1, JACCARD_DOT_CHUNK // (kk * kk))  # bounds the gathered (step, kk, kk) block
    for start in range(0, rows.size, step):
        own = rows[start : start + step, None, None]
        back[start : start + step] = (indices[cols[start : start + step], :kk] == own).any(axis=2)
    # canonical CSR straight from the (sorted) rows: members sorted within each row, non-members last
    members = np.sort(np.where(back, cols, n), axis=1)
    if kk > 1:
        members[:, 1:][members[:, 1:] == members[:, :-1]] = n  # a repeated neighbour counts once
        members.sort(axis=1)
    per_row = np.zeros(n, dtype=np.int64)
    per_row[rows] = (members < n).sum(axis=1)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_row, out=indptr[1:])
    found = members[members < n]
    out = sp.csr_matrix((np.ones(found.size, dtype=np.int32), found, indptr), shape=(n, n))
    out.has_canonical_format = True
    return out


def _expanded_sets(indices: np.ndarray, k1: int, rows: np.ndarray | None = None) -> sp.csr_matrix:
    """R*(i): R(i, k1) plus R(j, round(k1/2)) for every j in R(i, k1) whose half-set lies > 2/3 inside it.

    With ``rows``, only those rows (and the half-sets they read) are built."""
    r_full = _reciprocal(indices, k1, rows)
    half_rows = None
    if rows is not None:
        # the half-sets read are those of R(i, k1)'s members: a mark per row, cheaper than a sort
        read = np.zeros(indices.shape[0], dtype=bool)
        read[r_full.indices] = True
        half_rows = np.flatnonzero(read)
    r_half = _reciprocal(indices, round(k1 / 2), half_rows)
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


def _encodings(
    x: np.ndarray, knn: KnnGraph, r_star: sp.csr_matrix, rows: np.ndarray | None = None
) -> sp.csr_matrix:
    """V_i = softmax over l in R*(i) of -(2 - 2 x_i·x_l), reusing the kNN similarities where they exist.

    ``r_star`` is canonical (sorted, no duplicates); when only some of its rows are filled, ``rows``
    (sorted) names them, so that only their kNN rows are searched. Each entry takes its kNN similarity
    where it is a kNN edge (found by a key search) and a dot product elsewhere."""
    n = x.shape[0]
    er = np.repeat(np.arange(n, dtype=np.int64), np.diff(r_star.indptr))
    keys = er * n + r_star.indices  # ascending: r_star is canonical
    src = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    within = np.argsort(knn.indices[src], axis=1, kind="stable")  # each kNN row by column, so keys ascend
    knn_cols = np.take_along_axis(knn.indices[src], within, axis=1).ravel()
    knn_sims = np.take_along_axis(knn.similarities[src], within, axis=1).ravel()
    knn_keys = np.repeat(src, knn.k) * n + knn_cols
    pos = np.minimum(np.searchsorted(knn_keys, keys), max(knn_keys.size - 1, 0))
    hit = knn_keys[pos] == keys if knn_keys.size else np.zeros(keys.size, dtype=bool)
    sims = np.empty(keys.size, dtype=np.float64)
    sims[hit] = knn_sims[pos[hit]]
    missing = np.flatnonzero(~hit)
    step = JACCARD_DOT_CHUNK  # bounds the gathered (step, d) blocks
    for start in range(0, missing.size, step):
        at = missing[start : start + step]
        # int64 indices: numpy's fancy indexing is several times slower with int32
        r = er[at]
        c = r_star.indices[at].astype(np.int64)
        sims[at] = np.einsum("ij,ij->i", x[r], x[c])  # float32, like the kNN sims
    # exp(-(2 - 2s)) lies in [e^-4, 1]: a softmax without max-subtraction cannot overflow, and no weight is 0
    weight = np.exp(2.0 * sims - 2.0)
    total = np.bincount(er, weights=weight, minlength=n)
    # every built row holds itself (weight > 0); rows left out stay empty
    scale = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
    v = sp.csr_matrix((weight * scale[er], r_star.indices.copy(), r_star.indptr.copy()), shape=(n, n))
    v.has_sorted_indices = True
    return v


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


def _prepare(
    features: np.ndarray, k1: int, k2: int, knn: KnnGraph | None, check_input: bool
) -> tuple[np.ndarray, int, int, KnnGraph]:
    """Checked features, k1/k2 clamped to the pool, and the kNN graph (built when not given)."""
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
    return x, k1, k2, knn


def _all_encodings(x: np.ndarray, knn: KnnGraph, k1: int, k2: int) -> sp.csr_matrix:
    """V of every row, ``(n, n)`` with sorted indices."""
    n = x.shape[0]
    r_star = _expanded_sets(knn.indices, k1)
    v = _encodings(x, knn, r_star)
    if k2 > 1:
        qe_rows = np.repeat(np.arange(n), k2)
        qe = sp.csr_matrix(
            (np.full(n * k2, 1.0 / k2), (qe_rows, knn.indices[:, :k2].ravel())), shape=(n, n)
        )
        v = (qe @ v).tocsr()
    v.sort_indices()
    return v


def _row_encodings(x: np.ndarray, knn: KnnGraph, k1: int, k2: int, rows: np.ndarray) -> sp.csr_matrix:
    """V (after query expansion) of ``rows`` only, as a ``(len(rows), n)`` CSR matrix with sorted indices.

    V_i averages V'_j over N(i, k2), so V' is built for those neighbours and nothing else; their R*
    sets need only the reciprocal sets of their own neighbours. Same arithmetic as the full build."""
    n = x.shape[0]
    expanded = knn.indices[rows, :k2]
    base = np.unique(expanded)
    v = _encodings(x, knn, _expanded_sets(knn.indices, k1, base), base)
    if k2 > 1:
        qe_rows = np.repeat(np.arange(rows.size), k2)
        weights = np.full(expanded.size, 1.0 / k2)
        qe = sp.csr_matrix((weights, (qe_rows, expanded.ravel())), shape=(rows.size, n))
        v = (qe @ v).tocsr()
    else:
        v = v[rows]
    v.sort_indices()
    return v


def jaccard_encodings(
    features: np.ndarray,
    rows: np.ndarray | None = None,
    *,
    k1: int = K1,
    k2: int = K2,
    knn: KnnGraph | None = None,
    check_input: bool = True,
) -> sp.csr_matrix:
    """The k-reciprocal encodings V (§1 steps 1-4, query expansion included) as sparse rows summing to 1.

    ``rows=None`` gives every row, ``(n, n)``; otherwise row t of the ``(len(rows), n)`` result is V of
    ``rows[t]``, built from the neighbourhoods that row needs only (the cost follows ``rows``, not n).
    Parameters and clamping as in ``jaccard_distance``.
    """
    x, k1, k2, knn = _prepare(features, k1, k2, knn, check_input)
    if rows is None:
        return _all_encodings(x, knn, k1, k2)
    rows = np.asarray(rows, dtype=np.int64)
    if check_input and rows.size and (rows.ndim != 1 or rows.min() < 0 or rows.max() >= x.shape[0]):
        raise ValueError(f"rows must be a 1-D array of row indices in [0, {x.shape[0]})")
    return _row_encodings(x, knn, k1, k2, rows)


def jaccard_similarity_pairs(
    features: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    *,
    k1: int = K1,
    k2: int = K2,
    knn: KnnGraph | None = None,
    check_input: bool = True,
) -> np.ndarray:
    """sim_J = 1 - d_J (float64 in [0, 1]) of each pair (i[t], j[t]), kNN edge or not.

    ``jaccard_distance`` covers the kNN edges only; two points that are no kNN edge of each other can
    still share most of their k-reciprocal neighbourhood (AAS's region medoids). V is built for the
    rows the pairs name only, so the cost follows the number of pairs, never n². On a kNN edge the
    value equals ``1 - jaccard_distance`` (up to its float32 storage).
    """
    x, k1, k2, knn = _prepare(features, k1, k2, knn, check_input)
    i = np.asarray(i, dtype=np.int64).ravel()
    j = np.asarray(j, dtype=np.int64).ravel()
    n = x.shape[0]
    if i.shape != j.shape:
        raise ValueError(f"i and j must have the same length, got {i.size} and {j.size}")
    if i.size == 0:
        return np.zeros(0)
    if check_input and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise ValueError(f"pair indices must lie in [0, {n})")
    rows, pos = np.unique(np.concatenate([i, j]), return_inverse=True)
    v = _row_encodings(x, knn, k1, k2, rows)
    pi, pj = pos[: i.size], pos[i.size :]
    # V is non-negative, so the element-wise minimum of the two row sets keeps only shared columns
    inter = np.asarray(v[pi].minimum(v[pj]).sum(axis=1), dtype=np.float64).ravel()
    row_sum = np.asarray(v.sum(axis=1)).ravel()
    sim = inter / (row_sum[pi] + row_sum[pj] - inter)
    return np.clip(sim, 0.0, 1.0)


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
    x, k1, k2, knn = _prepare(features, k1, k2, knn, check_input)
    n = x.shape[0]
    v = _all_encodings(x, knn, k1, k2)
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
