"""Core-set baseline (ALGORITHMS.md §7; Sener & Savarese 2018): k-centre greedy on images.

Each step picks the image farthest from every centre (labelled images plus earlier picks) and pairs it
with its nearest centre, i.e. the labelled (or already chosen) image whose answer tells whether the
new region of the space is a known identity. Memory is O(n): one running min-distance per image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from strategies.samplers.base import PairSampler, SamplingResult, register_sampler
from strategies.samplers.numeric import labelled_items, matvec, max_similarity_to, take_unresolved
from strategies.samplers.pool import PairPool
from strategies.validation import check_random_state

if TYPE_CHECKING:
    from strategies.constraints import ConstraintGraph

__all__ = ["CoresetSampler", "k_center_greedy"]


def k_center_greedy(
    features: np.ndarray,
    initial: np.ndarray | None = None,
    *,
    exclude: np.ndarray | None = None,
    random_state: int | None = 0,
) -> Iterator[tuple[int, float]]:
    """Yield ``(row, coverage distance)`` picks of k-centre greedy, lazily, until no row is left.

    Distance is the cosine distance halved, (1 - s) / 2 in [0, 1]. ``initial`` is a boolean mask of
    the starting centres; with none, the first pick is a seeded uniform draw (reported distance 1.0).
    ``exclude`` masks rows that are never picked (and are not centres either).
    Ties go to the lowest row. The caller consumes as many picks as it needs.
    """
    n = features.shape[0]
    initial = np.zeros(n, dtype=bool) if initial is None else np.asarray(initial, dtype=bool)
    blocked = initial.copy()
    if exclude is not None:
        blocked |= np.asarray(exclude, dtype=bool)
    left = int(n - blocked.sum())
    # similarity to the nearest centre; +inf marks rows that can no longer be picked (max keeps it)
    near = None
    if initial.any():
        near, _ = max_similarity_to(features, features[initial])
        near[blocked] = np.inf
    while left > 0:
        if near is None:
            candidates = np.flatnonzero(~blocked)
            pick = int(candidates[check_random_state(random_state).integers(candidates.size)])
            score = 1.0
            near = np.full(n, -np.inf, dtype=np.float32)
            near[blocked] = np.inf
        else:
            pick = int(np.argmin(near))
            score = float(np.clip((1.0 - float(near[pick])) / 2.0, 0.0, 1.0))
        blocked[pick] = True
        near[pick] = np.inf
        left -= 1
        yield pick, score
        np.maximum(near, matvec(features, features[pick]), out=near)


@register_sampler
@dataclass(eq=False, repr=False)
class CoresetSampler(PairSampler):
    """k-centre greedy images, each paired with its nearest labelled image (nearest image at cold start);
    priority = coverage distance."""

    name: ClassVar[str] = "coreset"

    random_state: int | None = 0

    def _propose(self, pool: PairPool, budget: int) -> SamplingResult:
        check_random_state(self.random_state)  # validates random_state up front
        features, constraints, n = pool.features, pool.constraints, pool.n
        labelled = labelled_items(constraints, n)
        centres: list[int] = np.flatnonzero(labelled).tolist()
        pairs: list[tuple[int, int]] = []
        priorities: list[float] = []
        reasons: list[str] = []
        picks = 0
        taken: dict[int, set[int]] = {}  # partners already paired with a row in this batch
        for pick, score in k_center_greedy(features, labelled, random_state=self.random_state):
            picks += 1
            # §7: the partner is the nearest *labelled* image (its answer places the pick among known
            # identities). Earlier picks of this batch are not labelled: pairing picks with each other
            # asks about far-apart images, almost always "different". Cold start: the nearest image.
            partner = _nearest_unresolved(features, pick, centres, constraints, taken)
            if partner is None:
                continue
            pairs.append((min(pick, partner), max(pick, partner)))
            taken.setdefault(pick, set()).add(partner)
            taken.setdefault(partner, set()).add(pick)
            priorities.append(score)
            reasons.append(
                f"k-centre pick {pick} (coverage distance {score:.3f}) vs nearest "
                f"{'labelled image' if centres else 'image'} {partner}"
            )
            if len(pairs) >= budget:
                break
        proposals = self._proposals(pool, pairs, np.asarray(priorities), ["coreset"] * len(pairs), reasons)
        pool_sizes = {"labelled": int(labelled.sum()), "candidates": int(n - labelled.sum()), "picks": picks}
        return self._result(proposals, budget, pool_sizes)


def _nearest_unresolved(
    features: np.ndarray,
    pick: int,
    centres: list[int],
    constraints: ConstraintGraph,
    taken: dict[int, set[int]],
) -> int | None:
    """Most similar labelled image whose pair with ``pick`` is still open and not already in this batch;
    with nothing labelled yet (cold start), the most similar image overall."""
    pool = np.asarray(centres, dtype=np.int64) if centres else np.arange(features.shape[0], dtype=np.int64)
    pool = pool[pool != pick]
    if pick in taken:
        pool = pool[~np.isin(pool, np.fromiter(taken[pick], dtype=np.int64))]
    if pool.size == 0:
        return None
    sims = matvec(features[pool], features[pick])
    # usually the nearest centre is open: rank a short head first, the whole pool only if needed
    if pool.size > 8:
        kth = -np.partition(-sims, 7)[7]
        head = np.flatnonzero(sims >= kth)  # the 8 most similar, every tie included: ranking stays exact
    else:
        head = np.arange(pool.size)
    for cand in (head, np.arange(pool.size)):
        order = pool[cand[np.lexsort((pool[cand], -sims[cand]))]]
        ok = take_unresolved(np.full(order.size, pick, dtype=np.int64), order, constraints, 1)
        if ok.size:
            return int(order[ok[0]])
    return None
