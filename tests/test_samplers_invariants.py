"""Property tests of the sampler contract (docs/architecture.md) for EVERY registered strategy.

Never a pair already asked, never a pair the constraints imply, never (i, i), no duplicates, never more
than the budget, deterministic for a fixed random_state; "nothing left" is PoolExhaustedError.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies.constraints import ConstraintGraph
from strategies.samplers import PoolExhaustedError, available_samplers, make_sampler


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[np.ndarray, ConstraintGraph, int, int, np.ndarray | None]:
    n = draw(st.integers(2, 18))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    # a few directions with repeats: exact duplicates and near-duplicates exercise every tie rule
    n_dirs = draw(st.integers(1, n))
    dirs = rng.normal(size=(n_dirs, 3))
    x = dirs[rng.integers(0, n_dirs, size=n)] + draw(st.sampled_from([0.0, 0.01, 0.3])) * rng.normal(
        size=(n, 3)
    )
    x[np.linalg.norm(x, axis=1) < 1e-6] = 1.0
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    g = ConstraintGraph()
    all_pairs = list(combinations(range(n), 2))
    picks = draw(
        st.lists(st.tuples(st.sampled_from(all_pairs), st.sampled_from(["ml", "cl", "asked"])), max_size=12)
    )
    for k, ((i, j), kind) in enumerate(picks):
        if kind == "asked":
            g.mark_asked(i, j)
        else:
            g.add(f"a{k}", i, j, "must_link" if kind == "ml" else "cannot_link")
    budget = draw(st.integers(1, 12))
    random_state = draw(st.integers(0, 3))
    tracklets = None
    if draw(st.booleans()):
        tracklets = rng.integers(-1, max(1, n // 3), size=n)
    return x, g, budget, random_state, tracklets


def _check(name: str, x: np.ndarray, g: ConstraintGraph, budget: int, seed: int, tracklets) -> None:
    n = x.shape[0]
    x_before = x.copy()
    try:
        result = make_sampler(name, random_state=seed).select(x, g, budget, tracklets=tracklets)
    except PoolExhaustedError:
        if name == "random":  # random's candidates are all pairs: exhaustion must be real
            assert all(g.is_resolved(i, j) for i, j in combinations(range(n), 2))
        return
    pairs = result.pairs()
    assert len(pairs) <= budget
    assert result.shortfall == budget - len(pairs)
    assert len(set(pairs)) == len(pairs)
    for p in result.proposals:
        assert 0 <= p.i < p.j < n
        assert not g.is_resolved(p.i, p.j), (name, p)
        assert 0.0 <= p.priority <= 1.0
        assert 0.0 <= p.p_same <= 1.0
        assert p.strategy == name
        assert p.reason
    pr = [p.priority for p in result.proposals]
    assert pr == sorted(pr, reverse=True)
    if name != "aas":
        assert pairs, "a non-AAS strategy returns proposals or raises PoolExhaustedError"
    again = make_sampler(name, random_state=seed).select(x, g, budget, tracklets=tracklets)
    assert again.proposals == result.proposals
    assert np.array_equal(x, x_before)  # the caller's embeddings are never modified


@pytest.mark.parametrize("name", available_samplers())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenarios())
def test_sampler_invariants(name: str, case) -> None:
    x, g, budget, seed, tracklets = case
    _check(name, x, g, budget, seed, tracklets)


def test_the_property_test_covers_every_registered_strategy() -> None:
    assert set(available_samplers()) == {
        "aas", "uncertainty", "random", "coreset", "margin", "match_first", "hybrid"
    }
