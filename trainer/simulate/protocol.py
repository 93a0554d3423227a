"""Evaluation protocol of the simulator: an identity-disjoint pool/test split and the metrics on it.

Protocol (documented in benchmarks/results/simulate.md):
- Identities (not images) are split: a fraction `test_fraction` goes to a held-out test set, the rest
  is the *pool* the active learner sees and the oracle labels. No test identity is ever annotated.
- Only identities that can be matched go to test: >= 2 images, and when cameras exist, >= 2 cameras.
- Retrieval (ALGORITHMS.md §9) on the test identities:
  * with cameras (Market protocol): one query per (identity, camera), drawn at random, kept only when
    the gallery still holds an image of that identity from another camera (so no query is skipped by
    construction); the gallery is every other test image; same-identity-same-camera gallery items are
    ignored per query;
  * without cameras: every test image queries all test images (leave-one-out); the query itself,
    and its tracklet-mates when tracklets exist, are ignored (passed as the "camera" exclusion group).
  mAP, CMC Rank-1/5/10 and mINP; queries with no positive left are skipped and counted.
- Clustering quality on the pool: pairwise precision/recall/F1 and ARI of the identity assignment
  against the truth; -1 (outlier) counts as a singleton.
- Open set (seed 001's open-world evaluation): one image of a fifth of the pool identities (those with
  >= 3 images) is kept out of the pool as a *known* query; the test queries are *unknown* individuals.
  Each query's score is its largest cosine to the pool; ``open_set_auc`` is the AUC-ROC of telling the
  unknown from the known by a low score.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from trainer.defaults import OPEN_SET_KNOWN_FRACTION
from trainer.simulate.datasets import SimulationDataset

RANKS = (1, 5, 10)


@dataclass(frozen=True)
class Split:
    """Row indices into the dataset (all sorted); groups are the per-query exclusion ids."""

    pool: np.ndarray
    test: np.ndarray
    query: np.ndarray
    gallery: np.ndarray
    query_groups: np.ndarray
    gallery_groups: np.ndarray
    group_kind: str  # "camera" | "tracklet" | "image"
    random_state: int | None
    known: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # open-set queries

    def summary(self) -> dict[str, Any]:
        return {
            "n_pool": int(self.pool.size),
            "n_test": int(self.test.size),
            "n_queries": int(self.query.size),
            "n_gallery": int(self.gallery.size),
            "n_known_queries": int(self.known.size),
            "exclusion_group": self.group_kind,
            "random_state": self.random_state,
        }


def split_identities(
    dataset: SimulationDataset,
    *,
    test_fraction: float = 0.5,
    random_state: int | None = 0,
    known_fraction: float = OPEN_SET_KNOWN_FRACTION,
) -> Split:
    """Identity-disjoint pool/test split plus query/gallery rows inside test and the open-set known
    queries kept out of the pool (see module docstring)."""
    split = _split(dataset, test_fraction=test_fraction, random_state=random_state)
    if not 0.0 <= float(known_fraction) < 1.0:
        raise ValueError(f"known_fraction: must be in [0, 1), got {known_fraction}")
    labels = dataset.labels[split.pool]
    ids, counts = np.unique(labels, return_counts=True)
    eligible = ids[counts >= 3]
    n_known = round(float(known_fraction) * eligible.size)
    if n_known == 0:
        return split
    rng = np.random.default_rng(None if random_state is None else int(random_state) + 1)
    chosen = rng.choice(eligible, size=n_known, replace=False)
    known = np.sort([int(rng.choice(split.pool[labels == c])) for c in chosen]).astype(np.int64)
    return replace(split, pool=np.setdiff1d(split.pool, known), known=known)


def _split(dataset: SimulationDataset, *, test_fraction: float, random_state: int | None) -> Split:
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction: must be in (0, 1), got {test_fraction}")
    labels = dataset.labels
    rng = np.random.default_rng(random_state)
    identities = np.unique(labels)
    counts = np.bincount(labels, minlength=int(identities.max()) + 1)
    eligible = counts[identities] >= 2
    if dataset.cameras is not None:
        n_cams = np.array([np.unique(dataset.cameras[labels == c]).size for c in identities])
        eligible &= n_cams >= 2
    candidates = identities[eligible]
    n_test = round(float(test_fraction) * identities.size)
    n_test = min(max(n_test, 1), candidates.size, identities.size - 2)
    if n_test < 1:
        raise ValueError(
            "dataset: cannot split — need at least 3 identities, of which one has >= 2 images"
            + (" seen by >= 2 cameras" if dataset.cameras is not None else "")
        )
    test_ids = np.sort(rng.choice(candidates, size=n_test, replace=False))
    is_test = np.isin(labels, test_ids)
    pool = np.flatnonzero(~is_test)
    test = np.flatnonzero(is_test)

    if dataset.cameras is not None:
        cams = dataset.cameras
        query_rows: list[int] = []
        for ident in test_ids:
            rows = test[labels[test] == ident]
            left = set(rows.tolist())  # rows of this identity still in the gallery
            chosen: list[int] = []
            for cam in rng.permutation(np.unique(cams[rows])):
                pick = int(rng.choice(rows[cams[rows] == cam]))
                rest = left - {pick}
                # only if every query of this identity keeps a cross-camera positive in the gallery
                if all(any(cams[r] != cams[q] for r in rest) for q in [*chosen, pick]):
                    chosen.append(pick)
                    left = rest
            query_rows.extend(chosen)
        query = np.sort(np.asarray(query_rows, dtype=np.int64))
        gallery = np.setdiff1d(test, query)
        return Split(pool, test, query, gallery, cams[query], cams[gallery], "camera", random_state)
    if dataset.tracklets is not None:
        groups = dataset.tracklets
        return Split(pool, test, test, test, groups[test], groups[test], "tracklet", random_state)
    rows = np.arange(dataset.n, dtype=np.int64)
    return Split(pool, test, test, test, rows[test], rows[test], "image", random_state)


def open_set_auc(embeddings: np.ndarray, split: Split) -> float | None:
    """AUC-ROC of telling unknown individuals (test queries) from known ones (the known queries) by a
    low largest cosine to the pool; None without known queries."""
    if split.known.size == 0 or split.query.size == 0:
        return None
    emb = np.asarray(embeddings, dtype=np.float32)
    pool = emb[split.pool]

    def best(rows: np.ndarray) -> np.ndarray:
        out = np.empty(rows.size, dtype=np.float64)
        step = max(1, 4_000_000 // max(1, pool.shape[0]))
        for start in range(0, rows.size, step):
            out[start : start + step] = (emb[rows[start : start + step]] @ pool.T).max(axis=1)
        return out

    known, unknown = best(split.known), best(split.query)
    # P(an unknown query scores lower than a known one), ties counted one half
    both = np.concatenate([unknown, known])
    ranks = np.empty(both.size)
    order = np.argsort(both, kind="mergesort")
    sorted_vals = both[order]
    _, start, count = np.unique(sorted_vals, return_index=True, return_counts=True)
    ranks[order] = np.repeat(start + (count - 1) / 2.0 + 1.0, count)
    r_known = ranks[unknown.size :].sum() - known.size * (known.size + 1) / 2.0
    return float(r_known / (known.size * unknown.size))


def retrieval_scores(embeddings: np.ndarray, dataset: SimulationDataset, split: Split) -> dict[str, float]:
    """mAP / CMC / mINP of held-out queries against the gallery, with `embeddings` for all rows."""
    from strategies.metrics import retrieval_metrics

    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != dataset.n:
        raise ValueError(f"embeddings: expected shape ({dataset.n}, d), got {emb.shape}")
    res = retrieval_metrics(
        emb[split.query],
        emb[split.gallery],
        dataset.labels[split.query],
        dataset.labels[split.gallery],
        query_cameras=split.query_groups,
        gallery_cameras=split.gallery_groups,
        ranks=RANKS,
    )
    out: dict[str, float] = {"mAP": float(res.mAP), "mINP": float(res.mINP)}
    for r in RANKS:
        out[f"rank{r}"] = float(res.cmc[r])
    out["n_queries"] = int(res.n_queries)
    out["n_skipped"] = int(res.n_skipped)
    return out


def clustering_scores(pseudo_labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pairwise P/R/F1 and ARI of predicted pool labels (-1 = singleton) against the truth."""
    from strategies.metrics import adjusted_rand, pairwise_prf

    pred = np.asarray(pseudo_labels)
    true = np.asarray(truth)
    if pred.shape != true.shape:
        raise ValueError(f"pseudo_labels: shape {pred.shape} does not match the pool's {true.shape}")
    p, r, f1 = pairwise_prf(pred, true)
    n_clusters = int(np.unique(pred[pred >= 0]).size)
    return {
        "pairwise_precision": float(p),
        "pairwise_recall": float(r),
        "pairwise_f1": float(f1),
        "ari": float(adjusted_rand(pred, true)),
        "n_clusters": n_clusters,
        "n_outliers": int(np.sum(pred < 0)),
    }


def evaluate(
    embeddings: np.ndarray,
    pool_pseudo_labels: np.ndarray,
    dataset: SimulationDataset,
    split: Split,
) -> dict[str, float]:
    """Both halves of the protocol in one flat dict (what results.json stores per cycle and seed)."""
    scores = {
        **retrieval_scores(embeddings, dataset, split),
        **clustering_scores(pool_pseudo_labels, dataset.labels[split.pool]),
    }
    auc = open_set_auc(embeddings, split)
    if auc is not None:
        scores["open_set_auc"] = auc
    return scores


def unsupervised_pseudo_labels(features: np.ndarray, **params: Any) -> np.ndarray:
    """DBSCAN over k-reciprocal Jaccard distances (the pipeline's pseudo-labels with no constraints);
    ``params`` override the ClusteringView's (k1, k2, eps, min_samples)."""
    from strategies.view import ClusteringView

    return np.asarray(ClusteringView(np.asarray(features, dtype=np.float32), **params).dbscan_labels)
