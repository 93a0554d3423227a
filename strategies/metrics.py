"""Re-ID evaluation (ALGORITHMS.md §9): retrieval mAP / CMC / mINP and clustering agreement.

Retrieval follows the Market-1501 protocol: per query a stable sort of the gallery by distance,
same-identity-same-camera gallery items dropped when cameras are known, queries with no positive
left skipped and counted. Work is chunked over queries so memory stays bounded by
``chunk_elements`` distances, whatever the gallery size. Clustering scores treat a predicted -1 as a
singleton, so an outlier never counts as agreeing with anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import adjusted_rand_score

from strategies.defaults import METRICS_CHUNK_ELEMENTS
from strategies.validation import check_features, check_per_item

__all__ = ["RetrievalMetrics", "adjusted_rand", "pairwise_prf", "retrieval_metrics"]


@dataclass(frozen=True)
class RetrievalMetrics:
    """mAP, CMC and mINP in [0, 1] over the ``n_queries`` evaluated queries (``n_skipped`` had no positive).

    When every query is skipped the scores are NaN: there is nothing to average.
    """

    mAP: float
    cmc: dict[int, float]
    mINP: float
    n_queries: int
    n_skipped: int


def retrieval_metrics(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    query_ids: np.ndarray | Sequence[int],
    gallery_ids: np.ndarray | Sequence[int],
    query_cameras: np.ndarray | Sequence[int] | None = None,
    gallery_cameras: np.ndarray | Sequence[int] | None = None,
    ranks: Sequence[int] = (1, 5, 10),
    *,
    exclude_self: bool = False,
    chunk_elements: int = METRICS_CHUNK_ELEMENTS,
) -> RetrievalMetrics:
    """Rank the gallery for every query by cosine distance (features L2-normalised) and score it.

    ``exclude_self=True`` is for the pool-evaluates-itself setting (query k *is* gallery item k, same
    length): each query's own row is dropped from its ranking even when no cameras are given.
    """
    q = check_features(query_features, "query_features", unit_norm="any", dtype=None)
    g = check_features(gallery_features, "gallery_features", unit_norm="any", dtype=None)
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"gallery_features: dimension {g.shape[1]} differs from query_features dimension {q.shape[1]}"
        )
    qid = check_per_item(query_ids, q.shape[0], "query_ids")
    gid = check_per_item(gallery_ids, g.shape[0], "gallery_ids")
    if (query_cameras is None) != (gallery_cameras is None):
        raise ValueError("query_cameras, gallery_cameras: give both or neither")
    qcam = None if query_cameras is None else check_per_item(query_cameras, q.shape[0], "query_cameras")
    gcam = None if gallery_cameras is None else check_per_item(gallery_cameras, g.shape[0], "gallery_cameras")
    rank_list = _check_ranks(ranks)
    if exclude_self and q.shape[0] != g.shape[0]:
        raise ValueError("exclude_self: query and gallery must be the same rows (equal lengths)")
    if (
        isinstance(chunk_elements, bool)
        or not isinstance(chunk_elements, int | np.integer)
        or chunk_elements < 1
    ):
        raise ValueError(f"chunk_elements: must be a positive int, got {chunk_elements!r}")

    n_gallery = g.shape[0]
    chunk = max(1, int(chunk_elements) // max(n_gallery, 1))
    g64 = g.astype(np.float64)
    ap_sum = inp_sum = 0.0
    hits = np.zeros(len(rank_list), dtype=np.int64)
    n_eval = n_skipped = 0
    thresholds = np.asarray(rank_list, dtype=np.int64)
    for start in range(0, q.shape[0], chunk):
        stop = min(start + chunk, q.shape[0])
        distance = 1.0 - q[start:stop].astype(np.float64) @ g64.T
        same_id = gid[None, :] == qid[start:stop, None]
        valid = np.ones_like(same_id)
        if qcam is not None and gcam is not None:
            valid &= ~(same_id & (gcam[None, :] == qcam[start:stop, None]))
        if exclude_self:
            valid[np.arange(stop - start), np.arange(start, stop)] = False
        positive = same_id & valid
        for row in range(stop - start):
            ranks = _positive_ranks(distance[row], valid[row], positive[row])
            if ranks.size == 0:
                n_skipped += 1
                continue
            ap_sum += float(np.mean(np.arange(1, ranks.size + 1) / ranks))
            inp_sum += ranks.size / float(ranks[-1])
            hits += ranks[0] <= thresholds
            n_eval += 1

    if n_eval == 0:
        nan = float("nan")
        return RetrievalMetrics(nan, {k: nan for k in rank_list}, nan, 0, n_skipped)
    cmc = {k: float(h) / n_eval for k, h in zip(rank_list, hits.tolist(), strict=True)}
    return RetrievalMetrics(ap_sum / n_eval, cmc, inp_sum / n_eval, n_eval, n_skipped)


def pairwise_prf(
    pred: np.ndarray | Sequence[int], truth: np.ndarray | Sequence[int]
) -> tuple[float, float, float]:
    """Pairwise precision, recall, F1 of a clustering, from contingency counts (never O(n^2) pairs).

    A pair is predicted positive when both items share a predicted label (-1 = singleton, in both
    arrays). Conventions for empty sets: no predicted pair -> precision 1.0 (no false positive); no
    true pair -> recall 1.0; F1 is 0 when precision + recall is 0.
    """
    p, t = _check_pair(pred, truth)
    tp = _pairs_within(_joint(p, t))
    pred_pairs = _pairs_within(p)
    true_pairs = _pairs_within(t)
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


def adjusted_rand(pred: np.ndarray | Sequence[int], truth: np.ndarray | Sequence[int]) -> float:
    """Adjusted Rand index with -1 read as a singleton (in both arrays)."""
    p, t = _check_pair(pred, truth)
    return float(adjusted_rand_score(t, p))


# ---------------------------------------------------------------------- helpers
def _positive_ranks(distance: np.ndarray, valid: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """1-based ranks of the positives among the valid gallery items, ascending.

    Equivalent to a stable sort of the valid items by distance (ties: lower gallery index first)
    without sorting the gallery: each valid item is binned against the few sorted positives, which
    costs O(G log P) instead of O(G log G).
    """
    pos_idx = np.flatnonzero(positive)
    if pos_idx.size == 0:
        return pos_idx
    pos_d = distance[pos_idx]
    order = np.lexsort((pos_idx, pos_d))
    pos_idx, pos_d = pos_idx[order], pos_d[order]
    valid_idx = np.flatnonzero(valid)
    valid_d = distance[valid_idx]
    right = np.searchsorted(pos_d, valid_d, side="right")  # positives at or before each item's distance
    # items strictly closer than the k-th positive: those with fewer than k positives at or before them
    closer = np.cumsum(np.bincount(right, minlength=pos_idx.size + 1))[: pos_idx.size]
    left = np.searchsorted(pos_d, valid_d, side="left")
    tied = np.flatnonzero(left != right)  # exact distance ties with some positive: order by index
    ties = np.zeros(pos_idx.size, dtype=np.int64)
    for t in tied.tolist():
        lo, hi = left[t], right[t]
        ties[lo:hi] += valid_idx[t] < pos_idx[lo:hi]
    return closer + ties + 1


def _check_ranks(ranks: Sequence[int]) -> list[int]:
    try:
        out = [int(k) for k in ranks]
    except (TypeError, ValueError):
        raise ValueError(f"ranks: expected a sequence of positive ints, got {ranks!r}") from None
    if not out or any(k < 1 for k in out) or any(int(k) != k for k in ranks):
        raise ValueError(f"ranks: expected a non-empty sequence of positive ints, got {ranks!r}")
    return sorted(set(out))


def _check_pair(
    pred: np.ndarray | Sequence[int], truth: np.ndarray | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred), np.asarray(truth)
    for arr, name in ((p, "pred"), (t, "truth")):
        if arr.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D label array, got shape {arr.shape}")
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected integer labels, got dtype {arr.dtype}")
    if p.shape != t.shape:
        raise ValueError(f"truth: length {t.shape[0]} differs from pred length {p.shape[0]}")
    if p.size == 0:
        raise ValueError("pred: empty label array")
    return _singletons(p.astype(np.int64)), _singletons(t.astype(np.int64))


def _singletons(labels: np.ndarray) -> np.ndarray:
    """-1 -> a fresh id per item, so outliers never pair with anything."""
    out = labels.copy()
    outliers = np.flatnonzero(out < 0)
    if outliers.size:
        out[outliers] = int(out.max(initial=-1)) + 1 + np.arange(outliers.size)
    return out


def _joint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One id per (a, b) contingency cell."""
    _, cells = np.unique(np.stack([a, b], axis=1), axis=0, return_inverse=True)
    return cells.reshape(-1)


def _pairs_within(labels: np.ndarray) -> int:
    counts = np.unique(labels, return_counts=True)[1].astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())
