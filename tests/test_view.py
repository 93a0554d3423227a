"""ClusteringView: each piece computed once, on first use; precomputed pieces are checked and kept."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.clustering import FINCH, DBSCANClusterer
from strategies.constraints import ConstraintGraph
from strategies.jaccard import jaccard_distance
from strategies.knn import build_knn
from strategies.np3 import NP3
from strategies.view import ClusteringView


def _x(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pieces_are_computed_on_first_use_and_kept() -> None:
    view = ClusteringView(_x(40))
    assert not {"knn", "jaccard", "dbscan_labels", "finch", "calibrator"} & set(vars(view))
    jaccard = view.jaccard
    assert jaccard.shape == (40, 40) and "knn" in vars(view)
    assert view.jaccard is jaccard and "finch" not in vars(view)


def test_pieces_equal_the_public_functions_with_the_same_parameters() -> None:
    x = _x(60, seed=1)
    g = ConstraintGraph()
    g.add("m", 0, 1, "must_link")
    g.add("c", 2, 3, "cannot_link")
    view = ClusteringView(x, g, random_state=3)
    knn = build_knn(x, 30, random_state=3)
    assert np.array_equal(view.knn.indices, knn.indices)
    assert (view.jaccard != jaccard_distance(x, knn=knn)).nnz == 0
    dbscan = DBSCANClusterer().fit_predict(jaccard_distance(x, knn=knn))
    assert np.array_equal(view.dbscan_labels, dbscan)
    assert np.array_equal(view.pseudo_labels, NP3(random_state=3).refine(dbscan, x, g).labels)
    finch = FINCH(random_state=3).fit(x, knn=knn)
    assert all(np.array_equal(a, b) for a, b in zip(view.finch.partitions, finch.partitions, strict=True))
    assert view.calibrator.n_labels_ == 2


def test_precomputed_pieces_are_used_and_checked() -> None:
    x = _x(30)
    knn = build_knn(x, 5)
    view = ClusteringView(x, knn=knn)
    assert view.knn is knn
    assert view.jaccard.shape == (30, 30)  # k1 = 29 > 5 columns: a wider graph is built for it
    with pytest.raises(TypeError, match="unknown precomputed"):
        ClusteringView(x, graph=knn)
    with pytest.raises(ValueError, match="dbscan_labels"):
        ClusteringView(x, dbscan_labels=np.zeros(3))
    with pytest.raises(ValueError, match="features"):
        ClusteringView(x[:1])
