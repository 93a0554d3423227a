"""The cycle benchmark's data generator and recall figure: what its numbers mean rests on them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_cycle", ROOT / "benchmarks" / "bench_cycle.py")
assert _spec is not None and _spec.loader is not None
bench_cycle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_cycle)


def _real(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, 16))
    labels = np.repeat(np.arange(30), 4)
    x = centres[labels] + 0.3 * rng.normal(size=(labels.size, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_generated_identities_have_two_to_six_unit_views_and_are_reproducible() -> None:
    source, labels = _real()
    x, ids = bench_cycle.realistic(1000, source, labels, seed=3)
    assert x.shape == (1000, 16) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sizes = np.bincount(ids)
    assert sizes.min() >= 1 and sizes.max() <= 6 and (sizes >= 2).mean() > 0.95
    again, _ = bench_cycle.realistic(1000, source, labels, seed=3)
    assert np.array_equal(x, again)
    # views of one generated identity are closer to each other than to other identities' views
    sim = x @ x.T
    same = ids[:, None] == ids[None, :]
    np.fill_diagonal(same, False)
    assert sim[same].mean() > sim[~same & ~np.eye(len(ids), dtype=bool)].mean() + 0.2


def test_identity_neighbour_recall_counts_mates_that_fit_in_the_list() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    # k = 2 neighbours besides the row itself; image 5 has no mate and does not count
    indices = np.array([[0, 1, 3], [1, 2, 0], [2, 4, 5], [3, 4, 0], [4, 0, 1], [5, 0, 1]])
    # found: row0 1 of 2, row1 2 of 2, row2 0 of 2, row3 1 of 1, row4 0 of 1 -> 4 of 8
    assert bench_cycle.identity_recall(indices, labels, np.arange(6)) == 0.5
    assert bench_cycle._recall_rows(indices[[1, 3]], labels, np.array([1, 3])) == 1.0
