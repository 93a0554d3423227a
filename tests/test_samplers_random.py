"""Random baseline (ALGORITHMS.md §7): uniform over unasked, unimplied pairs via rejection sampling."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from strategies.constraints import ConstraintGraph
from strategies.samplers import PoolExhaustedError, RandomPairSampler, make_sampler


def _x(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 4))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_random_is_roughly_uniform_over_open_pairs() -> None:
    x = _x(6)
    g = ConstraintGraph()
    g.add("m", 0, 1, "must_link")
    g.add("c", 1, 2, "cannot_link")  # implies (0, 2) different
    counts: dict[tuple[int, int], int] = {}
    for seed in range(600):
        pair = RandomPairSampler(random_state=seed).select(x, g, 1).pairs()[0]
        counts[pair] = counts.get(pair, 0) + 1
    open_pairs = {p for p in combinations(range(6), 2) if not g.is_resolved(*p)}
    assert set(counts) == open_pairs
    freq = np.array(list(counts.values())) / 600
    assert freq.max() - freq.min() < 0.06  # 12 pairs at ~8.3% each


def test_random_shortfall_uses_the_exact_fallback() -> None:
    x = _x(5)
    g = ConstraintGraph()
    for k, (i, j) in enumerate([(0, 1), (1, 2), (2, 3)]):
        g.add(f"m{k}", i, j, "must_link")
    # component {0,1,2,3} plus the lone row 4: only the four pairs (k, 4) are open
    result = RandomPairSampler(min_draws=50).select(x, g, 10)
    assert sorted(result.pairs()) == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert result.shortfall == 6
    assert result.pool_sizes["scanned_rows"] > 0


def test_random_exhausted_when_every_pair_is_resolved() -> None:
    x = _x(4)
    g = ConstraintGraph()
    for _k, (i, j) in enumerate(combinations(range(4), 2)):
        g.mark_asked(i, j)
    with pytest.raises(PoolExhaustedError, match="random"):
        RandomPairSampler(min_draws=20).select(x, g, 2)


def test_random_priorities_are_uniform_draws_ranked_best_first() -> None:
    result = make_sampler("random", random_state=2).select(_x(50), ConstraintGraph(), 20)
    pr = [p.priority for p in result.proposals]
    assert pr == sorted(pr, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in pr)
    assert len(set(result.pairs())) == 20


def test_random_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="max_draws_factor"):
        RandomPairSampler(max_draws_factor=0).select(_x(4), ConstraintGraph(), 1)
