"""k-nearest-neighbour graph over L2-normalised embeddings (ALGORITHMS.md §1).

Every similarity in `strategies/` starts from this graph, so it fixes three conventions the rest of the
code relies on: row ``i`` is sorted by descending cosine similarity, **column 0 is ``i`` itself** (even
when duplicates tie with it), and ties are broken by ascending index so that results are deterministic.
Exact search (faiss ``IndexFlatIP``) is used up to ``exact_max`` points; above it an approximate index
(HNSW or IVF) keeps the cost sub-quadratic, and :func:`approximate_recall` measures what that costs.

The approximate index searches a PCA projection of the features to ``APPROXIMATE_DIM`` dimensions, and
the neighbours it finds are then scored and ordered by their full-dimension cosine, so the graph's
similarities mean the same whichever path built it. On real-structured features the projection keeps
as many true same-identity neighbours as exact search in full dimension (benchmarks/bench_cycle.py) at a
fraction of the cost: index build and search scale with the projected width.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np

from strategies.defaults import (
    APPROXIMATE_DIM,
    APPROXIMATE_INDEX,
    APPROXIMATE_PCA_SAMPLE,
    EXACT_KNN_MAX,
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    IVF_NLIST_PER_SQRT_N,
    IVF_NPROBE,
    IVF_TRAIN_PER_LIST,
)
from strategies.validation import check_features, check_int

APPROXIMATE_KINDS = ("hnsw", "ivf")


@dataclass(frozen=True, eq=False)
class KnnGraph:
    """The k nearest neighbours of every row: ``indices`` int64 ``(n, k)``, ``similarities`` float32.

    Column 0 is the row itself; the other columns are sorted by descending similarity (ties by index).
    """

    indices: np.ndarray
    similarities: np.ndarray

    def __post_init__(self) -> None:
        indices = np.ascontiguousarray(self.indices, dtype=np.int64)
        similarities = np.ascontiguousarray(self.similarities, dtype=np.float32)
        if indices.ndim != 2 or indices.shape[1] < 1:
            raise ValueError(f"indices must be 2-D with at least one column, got shape {indices.shape}")
        if similarities.shape != indices.shape:
            raise ValueError(
                f"similarities shape {similarities.shape} does not match indices shape {indices.shape}"
            )
        n = indices.shape[0]
        if n and (indices.min() < 0 or indices.max() >= n):
            raise ValueError(f"indices must lie in [0, {n}) (the graph is over its own rows)")
        if n and not np.array_equal(indices[:, 0], np.arange(n)):
            raise ValueError("indices[:, 0] must be the row itself (column 0 is i)")
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "similarities", similarities)

    @property
    def n(self) -> int:
        """Number of points (rows)."""
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        """Neighbours per row, self included."""
        return int(self.indices.shape[1])


def gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@contextlib.contextmanager
def faiss_threads(n_threads: int | None) -> Iterator[None]:
    """Run a block with ``n_threads`` OpenMP threads in faiss, restoring the previous count afterwards.

    ``None`` keeps faiss's own default, which honours ``OMP_NUM_THREADS``; workers sharing a host pass
    their share explicitly so that several searches do not oversubscribe the cores.
    """
    if n_threads is None:
        yield
        return
    n_threads = check_int(n_threads, "n_threads", 1)
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n_threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


@functools.lru_cache(maxsize=1)
def _gpu_resources() -> faiss.StandardGpuResources:
    """One faiss GPU resource object per process: it owns scratch memory and must outlive its indexes."""
    return faiss.StandardGpuResources()


def _to_gpu(index: faiss.Index) -> faiss.Index:
    gpu_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    gpu_index.referenced_objects = [_gpu_resources()]  # keep the resources alive with the index
    return gpu_index


def _exact_index(x: np.ndarray, use_gpu: bool) -> faiss.Index:
    index: faiss.Index = faiss.IndexFlatIP(x.shape[1])
    if use_gpu:
        index = _to_gpu(index)
    index.add(x)
    return index


def _approximate_index(x: np.ndarray, kind: str, k: int, use_gpu: bool, random_state: int) -> faiss.Index:
    n, d = x.shape
    if kind == "hnsw" and not use_gpu:
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(HNSW_EF_CONSTRUCTION, k)
        index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
        index.hnsw.rng = faiss.RandomGenerator(int(random_state))
        index.add(x)
        return index
    # IVF-Flat; also what "hnsw" becomes on a GPU, since faiss has no GPU HNSW.
    nlist = max(1, min(n // 39, int(IVF_NLIST_PER_SQRT_N * math.sqrt(n))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(random_state)
    index.nprobe = min(nlist, IVF_NPROBE)
    if use_gpu:
        index = _to_gpu(index)  # the copy keeps nprobe
    rng = np.random.default_rng(random_state)
    n_train = min(n, IVF_TRAIN_PER_LIST * nlist)
    train = x if n_train == n else x[np.sort(rng.choice(n, size=n_train, replace=False))]
    index.train(train)
    index.add(x)
    return index


def _project(x: np.ndarray, random_state: int) -> np.ndarray:
    """``x`` projected on its top ``APPROXIMATE_DIM`` principal axes (fit on a seeded sample) and
    re-normalised; ``x`` itself when it is no wider than that."""
    n, d = x.shape
    if d <= APPROXIMATE_DIM:
        return x
    pca = faiss.PCAMatrix(d, APPROXIMATE_DIM)
    rng = np.random.default_rng(random_state)
    sample = x
    if n > APPROXIMATE_PCA_SAMPLE:
        sample = x[np.sort(rng.choice(n, APPROXIMATE_PCA_SAMPLE, replace=False))]
    pca.train(np.ascontiguousarray(sample))
    y = pca.apply(x)
    y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return y


def _full_similarities(x: np.ndarray, idx: np.ndarray, rows: int = 256) -> np.ndarray:
    """Cosine (inner product) of every row with each of its neighbours ``idx`` (``-1``: missing ->
    ``-inf``), in blocks of ``rows`` so the gathered neighbours stay small."""
    out = np.empty(idx.shape, dtype=np.float32)
    for start in range(0, idx.shape[0], rows):
        block = idx[start : start + rows]
        safe = np.maximum(block, 0)
        sims = np.einsum("id,ijd->ij", x[start : start + rows], x[safe])
        out[start : start + rows] = np.where(block < 0, -np.inf, sims)
    return out


def _self_first(
    row_ids: np.ndarray, self_sims: np.ndarray, dist: np.ndarray, idx: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Put each row first and keep its ``k - 1`` best other neighbours, ties by ascending index.

    faiss orders exact ties by descending id and, with duplicates, may rank another copy above the row
    itself or leave the row out; the contract needs column 0 to be the row, so it is forced here.
    """
    missing = idx < 0
    dist = np.where(missing, -np.inf, dist).astype(np.float32, copy=False)
    key_index = np.where(missing, np.iinfo(np.int64).max, idx)
    is_self = idx == row_ids[:, None]
    # self and missing (-1) entries sort last; the rest by (-similarity, index)
    order = np.lexsort((key_index, -dist, is_self | missing), axis=-1)[:, : k - 1]
    m = row_ids.shape[0]
    indices = np.empty((m, k), dtype=np.int64)
    sims = np.empty((m, k), dtype=np.float32)
    indices[:, 0] = row_ids
    sims[:, 0] = self_sims
    indices[:, 1:] = np.take_along_axis(idx, order, axis=1)
    sims[:, 1:] = np.take_along_axis(dist, order, axis=1)
    return indices, sims


def _search_tie_complete(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search that returns, per query, every item tied with its (k+1)-th best (so ties can be cut
    by ascending index afterwards); faiss itself keeps an arbitrary subset of a tie at the boundary.

    Returns ``(dist, idx)`` padded with ``-inf`` / ``-1`` to a common width of at least ``k + 2``.
    """
    n = index.ntotal
    width = min(n, k + 2)
    dist, idx = index.search(queries, width)
    if width == n:
        return dist, idx
    rows = np.flatnonzero(dist[:, k + 1] >= dist[:, k])  # the tie may continue past what was returned
    while rows.size:
        width = min(n, 2 * width)
        d_r, i_r = index.search(queries[rows], width)
        pad = width - dist.shape[1]
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=-np.inf)
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        dist[rows], idx[rows] = d_r, i_r
        rows = rows[d_r[:, -1] >= d_r[:, k]] if width < n else rows[:0]
    return dist, idx


def _search_exact(x: np.ndarray, rows: np.ndarray, k: int, use_gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest (self first) of ``x[rows]`` among all rows of ``x``."""
    dist, idx = _search_tie_complete(_exact_index(x, use_gpu), x[rows], k)
    return _self_first(rows, np.einsum("ij,ij->i", x[rows], x[rows]), dist, idx, k)


def build_knn(
    features: np.ndarray,
    k: int,
    *,
    exact_max: int = EXACT_KNN_MAX,
    approximate: str = APPROXIMATE_INDEX,
    use_gpu: bool | None = None,
    random_state: int = 0,
    n_threads: int | None = None,
    check_input: bool = True,
) -> KnnGraph:
    """k nearest neighbours (self included, in column 0) of every row of L2-normalised ``features``.

    ``k`` is clamped to ``n``. Exact inner-product search up to ``exact_max`` points, ``approximate``
    ("hnsw" or "ivf") above, on a PCA projection, its neighbours scored in full dimension (module doc).
    ``use_gpu=None`` uses a faiss GPU index when faiss was built with GPU support
    and a GPU is present. Rows the approximate index could not fill (IVF probes too few lists) are
    searched exactly, so every row always has ``k`` valid neighbours. ``check_input=False`` skips the
    checks for a caller that validated its inputs once already (``features`` float32 C-contiguous).
    """
    if check_input:
        features = check_features(features)
        k = check_int(k, "k", 1)
        exact_max = check_int(exact_max, "exact_max", 0)
        check_int(random_state, "random_state", 0)
        if approximate not in APPROXIMATE_KINDS:
            raise ValueError(f"approximate must be one of {APPROXIMATE_KINDS}, got {approximate!r}")
        if use_gpu and not gpu_available():
            raise ValueError("use_gpu=True but faiss has no GPU support or no GPU is visible")
    if use_gpu is None:
        use_gpu = gpu_available()
    x = features
    n = x.shape[0]
    k = min(k, n)
    with faiss_threads(n_threads):
        if n <= exact_max or k + 2 >= n:
            dist, idx = _search_tie_complete(_exact_index(x, use_gpu), x, k)
        else:
            y = _project(x, random_state)
            index = _approximate_index(y, approximate, k + 2, use_gpu, random_state)
            _, idx = index.search(y, k + 2)
            del index, y
            dist = _full_similarities(x, idx)
            self_seen = (idx == np.arange(n)[:, None]).any(axis=1)
            # a row is incomplete when it lacks k - 1 valid non-self neighbours (IVF probed too few lists)
            redo = np.flatnonzero((idx >= 0).sum(axis=1) - self_seen < k - 1)
            if redo.size:
                dist_r, idx_r = _search_tie_complete(_exact_index(x, use_gpu), x[redo], k)
                dist[redo], idx[redo] = dist_r[:, : k + 2], idx_r[:, : k + 2]
    indices, sims = _self_first(np.arange(n, dtype=np.int64), np.einsum("ij,ij->i", x, x), dist, idx, k)
    return KnnGraph(indices, sims)


def _recall(approx_rows: np.ndarray, exact_rows: np.ndarray, n: int) -> float:
    """Mean fraction of each exact row's neighbours (column 0, the row itself, excluded) in the approx row."""
    if approx_rows.shape[1] <= 1 or approx_rows.shape[0] == 0:
        return 1.0
    m = approx_rows.shape[0]
    offset = np.arange(m, dtype=np.int64)[:, None] * n
    # row-offset keys make one global sorted array, so membership is one vectorised searchsorted
    keys = np.sort(approx_rows[:, 1:] + offset, axis=1).ravel()
    queries = (exact_rows[:, 1:] + offset).ravel()
    pos = np.minimum(np.searchsorted(keys, queries), keys.size - 1)
    return float((keys[pos] == queries).mean())


def knn_recall(approx: KnnGraph, exact: KnnGraph) -> float:
    """Recall@k of ``approx`` against the exact graph ``exact`` (same n and k), self excluded."""
    if approx.n != exact.n or approx.k != exact.k:
        raise ValueError(
            f"approx (n={approx.n}, k={approx.k}) and exact (n={exact.n}, k={exact.k}) must have equal shapes"
        )
    return _recall(approx.indices, exact.indices, approx.n)


def approximate_recall(
    features: np.ndarray,
    graph: KnnGraph,
    *,
    n_queries: int = 1000,
    random_state: int = 0,
    n_threads: int | None = None,
) -> float:
    """Recall@k of ``graph`` against exact search, on ``n_queries`` sampled rows (all rows if fewer).

    Exact ground truth for a sample keeps the measurement cheap at sizes where a full exact graph is not.
    """
    x = check_features(features)
    if graph.n != x.shape[0]:
        raise ValueError(f"graph has n={graph.n} rows but features has {x.shape[0]}")
    n_queries = check_int(n_queries, "n_queries", 1)
    n = x.shape[0]
    rng = np.random.default_rng(random_state)
    rows = np.arange(n) if n_queries >= n else np.sort(rng.choice(n, size=n_queries, replace=False))
    with faiss_threads(n_threads):
        exact_rows, _ = _search_exact(x, rows, graph.k, use_gpu=False)
    return _recall(graph.indices[rows], exact_rows, n)
