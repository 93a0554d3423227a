"""Margin baseline (ALGORITHMS.md §7): kNN pairs with calibrated P(same) closest to 1/2."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.calibration import PSameCalibrator
from strategies.constraints import ConstraintGraph
from strategies.knn import build_knn
from strategies.samplers import MarginSampler, PoolExhaustedError
from strategies.view import ClusteringView


def _x(n: int, seed: int = 0, d: int = 4) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute(x: np.ndarray, knn, cal: PSameCalibrator, budget: int) -> list[tuple[int, int]]:
    pairs = {(min(i, int(j)), max(i, int(j))) for i in range(x.shape[0]) for j in knn.indices[i, 1:]}
    scored = sorted(pairs, key=lambda p: abs(float(cal.predict(np.array([x[p[0]] @ x[p[1]]]))[0]) - 0.5))
    return scored[:budget]


def test_margin_picks_the_knn_pairs_closest_to_one_half() -> None:
    x = _x(60)
    knn = build_knn(x, 6)
    cal = PSameCalibrator()
    result = MarginSampler().select(x, ConstraintGraph(), 8, view=ClusteringView(x, knn=knn, calibrator=cal))
    assert set(result.pairs()) == set(_brute(x, knn, cal, 8))
    for p in result.proposals:
        assert p.priority == pytest.approx(1.0 - 2.0 * abs(p.p_same - 0.5))
    pr = [p.priority for p in result.proposals]
    assert pr == sorted(pr, reverse=True)


def test_margin_fits_the_calibrator_on_labelled_pairs_when_absent() -> None:
    x = _x(40, seed=1)
    g = ConstraintGraph()
    sims = x @ x.T
    order = np.dstack(np.unravel_index(np.argsort(-sims, axis=None), sims.shape))[0]
    pairs = [(int(i), int(j)) for i, j in order if i < j]
    for k, (i, j) in enumerate(pairs[:4]):
        g.add(f"m{k}", i, j, "must_link")
    for k, (i, j) in enumerate(pairs[-4:]):
        g.add(f"c{k}", i, j, "cannot_link")
    result = MarginSampler().select(x, g, 5)
    fitted = PSameCalibrator()
    same = [1] * 4 + [0] * 4
    chosen = pairs[:4] + pairs[-4:]
    fitted.fit(np.array([sims[i, j] for i, j in chosen]), np.array(same))
    for p in result.proposals:
        assert p.p_same == pytest.approx(float(fitted.predict(np.array([sims[p.i, p.j]]))[0]), abs=1e-6)
        assert not g.is_resolved(p.i, p.j)


def test_margin_n_neighbors_limits_candidates_and_is_validated() -> None:
    x = _x(30, seed=2)
    knn = build_knn(x, 10)
    view = ClusteringView(x, knn=knn, calibrator=PSameCalibrator())
    result = MarginSampler(n_neighbors=1).select(x, ConstraintGraph(), 100, view=view)
    first = {(min(i, int(knn.indices[i, 1])), max(i, int(knn.indices[i, 1]))) for i in range(30)}
    assert set(result.pairs()) == first
    assert result.shortfall == 100 - len(first)
    with pytest.raises(ValueError, match="n_neighbors"):
        MarginSampler(n_neighbors=0).select(x, ConstraintGraph(), 2, view=view)


def test_margin_exhausted_when_all_knn_pairs_are_asked() -> None:
    x = _x(5, seed=3)
    knn = build_knn(x, 5)
    g = ConstraintGraph()
    for i in range(5):
        for j in knn.indices[i, 1:]:
            g.mark_asked(i, int(j))
    with pytest.raises(PoolExhaustedError, match="margin"):
        MarginSampler().select(x, g, 3, view=ClusteringView(x, g, knn=knn))
