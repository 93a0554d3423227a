"""Match-first and hybrid: the samplers that build identities."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.constraints import ConstraintGraph
from strategies.samplers import PoolExhaustedError, make_sampler


def _pool(
    n_ids: int = 12, per_id: int = 4, noise: float = 0.4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(n_ids), per_id)
    x = rng.normal(size=(n_ids, 16))[truth] + noise * rng.normal(size=(truth.size, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def _answer(g: ConstraintGraph, pairs: list[tuple[int, int]], truth: np.ndarray, tag: str) -> None:
    for k, (i, j) in enumerate(pairs):
        g.mark_asked(i, j)
        g.add(f"{tag}{k}", i, j, "must_link" if truth[i] == truth[j] else "cannot_link")


def test_match_first_asks_the_most_similar_pair_between_components_first() -> None:
    x, _ = _pool()
    result = make_sampler("match_first").select(x, ConstraintGraph(), 5)
    sims = [float(x[p.i] @ x[p.j]) for p in result.proposals]
    assert sims == sorted(sims, reverse=True)
    best = max(float(x[i] @ x[j]) for i in range(len(x)) for j in range(i + 1, len(x)))
    assert sims[0] == pytest.approx(best)


def test_match_first_never_asks_two_components_twice() -> None:
    x, _ = _pool()
    g = ConstraintGraph()
    g.add("m", 0, 1, "must_link")
    g.mark_asked(2, 5)  # an open task, a skip or an "unsure" between the components of 2 and 5
    result = make_sampler("match_first").select(x, g, 40)
    comp = g.component_labels(len(x))
    keys = [tuple(sorted((comp[p.i], comp[p.j]))) for p in result.proposals]
    assert len(keys) == len(set(keys))
    assert all(comp[p.i] != comp[p.j] for p in result.proposals)
    assert (comp[2], comp[5]) not in {tuple(k) for k in keys}
    assert not any({p.i, p.j} <= {0, 1} for p in result.proposals)


def test_match_first_spreads_images_over_the_batch() -> None:
    x, _ = _pool()
    result = make_sampler("match_first", max_per_image=1).select(x, ConstraintGraph(), 20)
    images = [k for p in result.proposals for k in (p.i, p.j)]
    assert len(images) == len(set(images))


def test_match_first_exhausts_when_every_identity_is_settled() -> None:
    x, _ = _pool(n_ids=3, per_id=2, noise=0.05)
    g = ConstraintGraph()
    for c in range(3):
        g.add(f"m{c}", 2 * c, 2 * c + 1, "must_link")
    g.add("c1", 0, 2, "cannot_link")
    g.add("c2", 0, 4, "cannot_link")
    g.add("c3", 2, 4, "cannot_link")
    with pytest.raises(PoolExhaustedError):
        make_sampler("match_first").select(x, g, 3)


def test_match_first_builds_identities_from_answers() -> None:
    x, truth = _pool(noise=0.3)
    g = ConstraintGraph()
    for cycle in range(6):
        _answer(g, make_sampler("match_first").select(x, g, 8).pairs(), truth, f"c{cycle}")
    # near-duplicates first: most answers are "same"
    assert len(g.must_links()) > 0.75 * len(g)


def test_hybrid_is_all_match_first_until_both_answers_are_known() -> None:
    x, _ = _pool()
    result = make_sampler("hybrid").select(x, ConstraintGraph(), 10)
    assert {p.pool for p in result.proposals} == {"match_first"}


def test_hybrid_splits_the_batch_and_asks_at_the_boundary() -> None:
    x, truth = _pool(noise=0.6, seed=3)
    g = ConstraintGraph()
    for cycle in range(3):
        _answer(g, make_sampler("match_first").select(x, g, 8).pairs(), truth, f"c{cycle}")
    _answer(g, [(0, 4), (8, 12), (16, 20), (24, 28)], truth, "d")  # a few "different" answers
    assert g.must_links() and g.cannot_links()
    assert sum(c.is_must_link for c in g) / len(g) >= 0.5  # mostly "same": the smaller share
    result = make_sampler("hybrid").select(x, g, 12)
    assert [p.pool for p in result.proposals].count("match_first") == 3
    result = make_sampler("hybrid", match_fraction=0.5, confirmed_same_rate=1.0).select(x, g, 10)
    pools = [p.pool for p in result.proposals]
    assert pools.count("match_first") == 5
    assert all(p.startswith("boundary:") for p in pools if p != "match_first")
    only_boundary = make_sampler("hybrid", match_fraction=0.0, confirmed_match_fraction=0.0).select(x, g, 10)
    assert all(p.pool.startswith("boundary:") for p in only_boundary.proposals)
    # the boundary is ranked by the chance the answer changes the identity assignment
    change = [p.priority for p in only_boundary.proposals]
    assert change == sorted(change, reverse=True)


def test_hybrid_rejects_a_bad_fraction() -> None:
    x, _ = _pool()
    with pytest.raises(ValueError, match="match_fraction"):
        make_sampler("hybrid", match_fraction=1.5).select(x, ConstraintGraph(), 4)
    with pytest.raises(ValueError, match="confirmed_same_rate"):
        make_sampler("hybrid", confirmed_same_rate=-0.1).select(x, ConstraintGraph(), 4)


def _answers(same: int, different: int) -> ConstraintGraph:
    g = ConstraintGraph()
    for t in range(same):
        g.add(f"s{t}", 2 * t, 2 * t + 1, "must_link")
    for t in range(different):
        g.add(f"d{t}", 100 + 2 * t, 101 + 2 * t, "cannot_link")
    return g


def test_hybrid_asks_fewer_likely_matches_once_most_answers_confirm_them() -> None:
    hybrid = make_sampler("hybrid")
    assert hybrid.match_share(_answers(0, 0)) == 0.5  # nothing answered yet
    assert hybrid.match_share(_answers(9, 0)) == 0.5  # too few answers to tell
    assert hybrid.match_share(_answers(6, 4)) == 0.25  # most likely matches are right
    assert hybrid.match_share(_answers(5, 5)) == 0.25  # the rate is "at least"
    assert hybrid.match_share(_answers(4, 6)) == 0.5  # most are wrong: verifying them builds identities
    fixed = make_sampler("hybrid", match_fraction=0.4, confirmed_match_fraction=0.4)
    assert fixed.match_share(_answers(10, 0)) == fixed.match_share(_answers(0, 10)) == 0.4
