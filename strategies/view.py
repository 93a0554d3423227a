"""One clustering of one embedding: kNN graph -> k-reciprocal Jaccard -> DBSCAN, FINCH and P(same).

The retraining cycle, the samplers and the CLI all look at an embedding the same way (ALGORITHMS.md
§1-2, §4, §7). ``ClusteringView`` holds the embedding, the constraints and the parameters, and computes
each piece the first time something asks for it, then keeps it: a cycle that hands its view to a sampler
never computes a kNN graph twice, and a sampler that needs no FINCH hierarchy never builds one.

A new piece (e.g. an identity assignment) is one more ``cached_property`` reading the ones above it.
Precomputed pieces (a benchmark that times them apart, a test with hand-made labels) are passed as
keyword arguments and are then never recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp

from strategies.calibration import PSameCalibrator
from strategies.clustering import FINCH, DBSCANClusterer, FinchResult
from strategies.constraints import CONTRADICTION_POLICIES, ConstraintGraph
from strategies.defaults import (
    CONTRADICTION_POLICY,
    DBSCAN_EPS,
    DBSCAN_MIN_SAMPLES,
    IDENTITY_LINK_PAST_CANNOT_LINK,
    IDENTITY_MIN_P_SAME,
    K1,
    K2,
    KNN_K,
)
from strategies.identities import LINK_AUTO, IdentityAssigner, IdentityAssignment, resolve_link_rule
from strategies.jaccard import jaccard_distance
from strategies.knn import KnnGraph, build_knn
from strategies.np3 import NP3, NP3Result
from strategies.validation import check_features, check_int

__all__ = ["PRECOMPUTABLE", "ClusteringView", "ViewParams", "labelled_pairs"]

# the pieces a caller may hand in already computed
PRECOMPUTABLE = ("knn", "jaccard", "dbscan_labels", "finch", "calibrator", "identities")


def labelled_pairs(constraints: ConstraintGraph) -> tuple[np.ndarray, np.ndarray]:
    """Every human answer as ``(pairs (m, 2), same (m,))``: must-links (same) first, then cannot-links,
    each in insertion order."""
    rows = [(c.i, c.j, 1) for c in constraints.must_links()] + [
        (c.i, c.j, 0) for c in constraints.cannot_links()
    ]
    if not rows:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=bool)
    arr = np.asarray(rows, dtype=np.int64)
    return arr[:, :2], arr[:, 2].astype(bool)


@dataclass
class ViewParams:
    """A ClusteringView's parameters, declared once for whoever builds views with the same settings
    (the retraining cycle's config inherits them); ClusteringView documents each."""

    k1: int = K1
    k2: int = K2
    knn_k: int = KNN_K
    eps: float = DBSCAN_EPS
    min_samples: int = DBSCAN_MIN_SAMPLES
    contradiction_policy: str = CONTRADICTION_POLICY
    min_p_same: float = IDENTITY_MIN_P_SAME
    # True, False or "auto" (strategies.identities); a view knows no review, so it takes "auto" as True:
    # the cycle resolves it from the review of the answers before building any view
    link_past_cannot_link: bool | str = IDENTITY_LINK_PAST_CANNOT_LINK
    random_state: int = 0

    def check_view_params(self) -> None:
        """Refuse a bad parameter before any view is built, naming it."""
        if self.contradiction_policy not in CONTRADICTION_POLICIES:
            raise ValueError(
                f"contradiction_policy must be one of {CONTRADICTION_POLICIES}, "
                f"got {self.contradiction_policy!r}"
            )
        for name in ("k1", "k2", "min_samples", "knn_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 < float(self.eps) <= 1.0:
            raise ValueError(f"eps must be in (0, 1] (a Jaccard distance), got {self.eps!r}")
        if not 0.0 <= float(self.min_p_same) < 1.0:
            raise ValueError(f"min_p_same must be in [0, 1), got {self.min_p_same!r}")
        if not (isinstance(self.link_past_cannot_link, bool) or self.link_past_cannot_link == LINK_AUTO):
            raise ValueError(f"link_past_cannot_link must be true, false or {LINK_AUTO!r}, "
                             f"got {self.link_past_cannot_link!r}")

    def view(self, features: np.ndarray, constraints: ConstraintGraph | None = None) -> ClusteringView:
        """The clustering view of ``features`` under ``constraints`` with these parameters."""
        return ClusteringView(
            features,
            constraints,
            k1=int(self.k1),
            k2=int(self.k2),
            knn_k=int(self.knn_k),
            eps=self.eps,
            min_samples=self.min_samples,
            contradiction_policy=self.contradiction_policy,
            min_p_same=self.min_p_same,
            link_past_cannot_link=resolve_link_rule(self.link_past_cannot_link, conflicts=0),
            random_state=self.random_state,
        )


class ClusteringView:
    """The clustering pieces of ``features`` (L2-normalised rows) under ``constraints``.

    Parameters keep the papers' names: ``k1``/``k2`` (k-reciprocal Jaccard, clamped to the pool),
    ``knn_k`` (columns of the kNN graph, at least ``k1``), ``eps``/``min_samples`` (DBSCAN),
    ``contradiction_policy`` (NP3 and the identities), ``min_p_same`` (the identities' weakest link),
    ``link_past_cannot_link`` (strategies.identities) and ``random_state`` (approximate kNN index,
    FINCH, NP3).
    """

    def __init__(
        self,
        features: np.ndarray,
        constraints: ConstraintGraph | None = None,
        *,
        k1: int = K1,
        k2: int = K2,
        knn_k: int = KNN_K,
        eps: float = DBSCAN_EPS,
        min_samples: int = DBSCAN_MIN_SAMPLES,
        contradiction_policy: str = CONTRADICTION_POLICY,
        min_p_same: float = IDENTITY_MIN_P_SAME,
        link_past_cannot_link: bool = True,
        random_state: int = 0,
        **precomputed: Any,
    ) -> None:
        self.features = check_features(features, min_rows=2)
        self.n = int(self.features.shape[0])
        self.constraints = ConstraintGraph() if constraints is None else constraints
        self.k1 = max(1, min(check_int(k1, "k1", 1), self.n - 1))
        self.k2 = max(1, min(check_int(k2, "k2", 1), self.k1))
        self.knn_k = check_int(knn_k, "knn_k", 1)
        self.eps = eps
        self.min_samples = min_samples
        self.contradiction_policy = contradiction_policy
        self.min_p_same = min_p_same
        if not isinstance(link_past_cannot_link, bool):
            raise ValueError(f"link_past_cannot_link: a view takes true or false (ViewParams resolves "
                             f"{LINK_AUTO!r}), got {link_past_cannot_link!r}")
        self.link_past_cannot_link = link_past_cannot_link
        self.random_state = check_int(random_state, "random_state", 0)
        unknown = sorted(set(precomputed) - set(PRECOMPUTABLE))
        if unknown:
            raise TypeError(f"unknown precomputed piece(s) {unknown}; known: {list(PRECOMPUTABLE)}")
        for name, value in precomputed.items():
            if value is not None:
                self._check_piece(name, value)
                self.__dict__[name] = value  # a cached_property never recomputes what is already set

    def __repr__(self) -> str:
        done = [name for name in PRECOMPUTABLE if name in self.__dict__]
        return f"ClusteringView(n={self.n}, k1={self.k1}, k2={self.k2}, computed={done})"

    def _check_piece(self, name: str, value: Any) -> None:
        n = self.n
        if name == "knn":
            if not isinstance(value, KnnGraph) or value.n != n:
                raise ValueError(f"knn must be a KnnGraph over the {n} rows, got {value!r}")
        elif name == "jaccard":
            if not sp.issparse(value) or value.shape != (n, n):
                shape = getattr(value, "shape", value)
                raise ValueError(f"jaccard must be a sparse ({n}, {n}) matrix, got {shape}")
        elif name == "dbscan_labels":
            if np.asarray(value).shape != (n,):
                raise ValueError(f"dbscan_labels must have shape ({n},), got {np.asarray(value).shape}")
        elif name == "finch":
            if not isinstance(value, FinchResult):
                raise ValueError(f"finch must be a FinchResult, got {type(value).__name__}")
            for level, part in enumerate(value.partitions):
                if np.asarray(part).shape != (n,):
                    raise ValueError(f"finch.partitions[{level}] must have shape ({n},)")
        elif name == "identities":
            if not isinstance(value, IdentityAssignment) or value.labels.shape != (n,):
                raise ValueError(f"identities must be an IdentityAssignment over the {n} rows")
        elif name == "calibrator" and not hasattr(value, "predict"):
            raise ValueError(f"calibrator must have a predict method, got {type(value).__name__}")

    # ------------------------------------------------------------------ the pieces, computed on first use
    @cached_property
    def knn(self) -> KnnGraph:
        """The kNN graph (self in column 0) with ``max(k1, knn_k)`` columns (at most n)."""
        return self._knn_graph()

    def _knn_graph(self) -> KnnGraph:
        width = min(self.n, max(self.k1, self.knn_k))
        return build_knn(self.features, width, random_state=self.random_state, check_input=False)

    @cached_property
    def jaccard(self) -> sp.csr_matrix:
        """k-reciprocal Jaccard distances on the kNN edges; a precomputed kNN graph narrower than ``k1``
        is not enough for them, so a graph of the default width is built for them instead."""
        knn = self.knn if self.knn.k >= self.k1 else self._knn_graph()
        return jaccard_distance(self.features, k1=self.k1, k2=self.k2, knn=knn, check_input=False)

    @cached_property
    def dbscan_labels(self) -> np.ndarray:
        """DBSCAN over the Jaccard distances; -1 = outlier."""
        return np.asarray(DBSCANClusterer(self.eps, self.min_samples).fit_predict(self.jaccard))

    @cached_property
    def np3(self) -> NP3Result:
        """DBSCAN's labels refined by NP3 so that every kept constraint holds."""
        np3 = NP3(self.contradiction_policy, random_state=self.random_state)
        return np3.refine(self.dbscan_labels, self.features, self.constraints, check_input=False)

    @property
    def pseudo_labels(self) -> np.ndarray:
        """The NP3-refined clustering: what training and evaluation use as pseudo-labels."""
        return np.asarray(self.np3.labels)

    @cached_property
    def finch(self) -> FinchResult:
        """The FINCH hierarchy, its first neighbours read from the kNN graph (when it has any)."""
        knn = self.knn if self.knn.k >= 2 else None
        return FINCH(random_state=self.random_state).fit(self.features, knn=knn, check_input=False)

    @cached_property
    def calibrator(self) -> PSameCalibrator:
        """P(same) as a function of cosine similarity, fit on the answered pairs under this embedding."""
        pairs, same = labelled_pairs(self.constraints)
        emb = self.features
        sims = (emb[pairs[:, 0]] * emb[pairs[:, 1]]).sum(axis=1).astype(np.float64)
        return PSameCalibrator().fit(sims, same)

    @cached_property
    def identities(self) -> IdentityAssignment:
        """Every row's individual: must-link components joined by first-neighbour links under the
        constraints (strategies.identities). What the team exports and what training learns from."""
        assigner = IdentityAssigner(
            min_p_same=self.min_p_same, contradiction_policy=self.contradiction_policy,
            link_past_cannot_link=self.link_past_cannot_link,
        )
        return assigner.assign(self.features, self.constraints, self.knn, self.calibrator)

    @property
    def n_clusters(self) -> int:
        """Clusters of the refined clustering, outliers not counted."""
        labels = self.pseudo_labels
        return int(np.unique(labels[labels >= 0]).size)
