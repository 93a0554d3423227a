"""Core-set baseline (ALGORITHMS.md §7): k-centre greedy equals brute force; pairs with nearest centre."""

from __future__ import annotations

from itertools import islice, pairwise

import numpy as np
import pytest

from strategies.constraints import ConstraintGraph
from strategies.samplers import CoresetSampler, PoolExhaustedError, make_sampler
from strategies.samplers.coreset import k_center_greedy


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_k_center(x: np.ndarray, centres: list[int], picks: int) -> list[int]:
    """Textbook k-centre greedy: max over points of min over centres of the cosine distance."""
    chosen: list[int] = []
    centres = list(centres)
    for _ in range(picks):
        best, arg = -1.0, -1
        for p in range(x.shape[0]):
            if p in centres:
                continue
            d = min(1.0 - float(x[p] @ x[c]) for c in centres)
            if d > best + 1e-9:
                best, arg = d, p
        chosen.append(arg)
        centres.append(arg)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_center_greedy_equals_brute_force_from_labelled_centres(seed: int) -> None:
    x = _unit(np.random.default_rng(seed).normal(size=(40, 5)))
    initial = np.zeros(40, dtype=bool)
    initial[[3, 17]] = True
    got = [p for p, _ in islice(k_center_greedy(x, initial), 12)]
    assert got == _brute_k_center(x, [3, 17], 12)


def test_k_center_greedy_cold_start_is_seeded_then_brute_force() -> None:
    x = _unit(np.random.default_rng(4).normal(size=(30, 4)))
    a = [p for p, _ in islice(k_center_greedy(x, random_state=9), 8)]
    b = [p for p, _ in islice(k_center_greedy(x, random_state=9), 8)]
    assert a == b
    assert a[1:] == _brute_k_center(x, [a[0]], 7)


def test_k_center_greedy_scores_are_non_increasing_coverage_distances() -> None:
    x = _unit(np.random.default_rng(5).normal(size=(25, 3)))
    scores = [s for _, s in k_center_greedy(x, random_state=0)]
    assert scores[0] == 1.0
    assert all(a >= b - 1e-12 for a, b in pairwise(scores))
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len(scores) == 25  # the generator runs until every row is picked


def test_coreset_sampler_pairs_each_pick_with_its_nearest_labelled_image() -> None:
    x = _unit(np.random.default_rng(6).normal(size=(50, 6)))
    g = ConstraintGraph()
    g.add("a", 0, 1, "must_link")
    g.add("b", 2, 3, "cannot_link")
    result = CoresetSampler().select(x, g, 5)
    expected_picks = _brute_k_center(x, [0, 1, 2, 3], 5)
    labelled = [0, 1, 2, 3]
    for pick in expected_picks:
        partner = max(labelled, key=lambda c: float(x[pick] @ x[c]))
        assert (min(pick, partner), max(pick, partner)) in result.pairs()
    # never two unlabelled picks of one batch paired with each other (§7: nearest *labelled* image)
    assert all(i in labelled or j in labelled for i, j in result.pairs())
    assert result.shortfall == 0
    pr = [p.priority for p in result.proposals]
    assert pr == sorted(pr, reverse=True)
    assert all(p.pool == "coreset" and p.strategy == "coreset" for p in result.proposals)


def test_coreset_skips_a_partner_already_asked() -> None:
    x = _unit(np.random.default_rng(7).normal(size=(30, 4)))
    g = ConstraintGraph()
    g.add("a", 0, 1, "cannot_link")
    pick = _brute_k_center(x, [0, 1], 1)[0]
    near = max((0, 1), key=lambda c: float(x[pick] @ x[c]))
    g.mark_asked(pick, near)
    result = CoresetSampler().select(x, g, 1)
    far = 1 - near
    assert result.pairs() == [(min(pick, far), max(pick, far))]


def test_coreset_exhausted_when_every_pair_is_implied() -> None:
    x = _unit(np.random.default_rng(8).normal(size=(4, 3)))
    g = ConstraintGraph()
    for k, (i, j) in enumerate([(0, 1), (1, 2), (2, 3)]):
        g.add(f"m{k}", i, j, "must_link")
    with pytest.raises(PoolExhaustedError, match="coreset"):
        CoresetSampler().select(x, g, 3)


def test_coreset_reports_shortfall_when_few_pairs_remain() -> None:
    x = _unit(np.random.default_rng(9).normal(size=(3, 3)))
    g = ConstraintGraph()
    g.add("m", 0, 1, "must_link")
    result = make_sampler("coreset").select(x, g, 5)
    # only row 2 is unlabelled; paired with its nearest of {0, 1}
    assert len(result.proposals) == 1 and result.shortfall == 4


def test_coreset_rejects_a_bad_random_state() -> None:
    x = _unit(np.random.default_rng(9).normal(size=(5, 3)))
    with pytest.raises(TypeError, match="random_state"):
        CoresetSampler(random_state="seven").select(x, ConstraintGraph(), 2)


def test_coreset_cold_start_pairs_each_pick_with_its_nearest_image() -> None:
    # Clustered data, nothing labelled: each k-centre pick is asked against its nearest neighbour (likely
    # the same individual), not against another far-away pick (almost surely a different one).
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(10, 16))
    x = _unit(np.repeat(centres, 6, axis=0) + 0.05 * rng.normal(size=(60, 16)))
    result = CoresetSampler(random_state=3).select(x, ConstraintGraph(), 8)
    assert len(result.proposals) == 8
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    for p in result.proposals:
        pick = int(p.reason.split()[2])
        partner = p.j if p.i == pick else p.i
        assert sims[pick, partner] == sims[pick].max()
    same = sum(i // 6 == j // 6 for i, j in result.pairs())
    assert same == 8
