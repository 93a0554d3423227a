"""Match-first (WBIA's priority, ALGORITHMS.md §11): the most likely unresolved match between two
different must-link components.

A "same" merges two components, a "different" separates them for good, so every answer settles all
pairs between the two components. Ranked by calibrated P(same) (equivalently by cosine), one pair per
component pair, an image in at most ``max_per_image`` pairs of one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies.defaults import CANDIDATE_NEIGHBORS, MAX_PAIRS_PER_IMAGE
from strategies.samplers.base import PairSampler, SamplingResult, register_sampler
from strategies.samplers.components import Batch, component_pairs
from strategies.samplers.numeric import predict_p_same
from strategies.samplers.pool import PairPool
from strategies.validation import check_int


@register_sampler
@dataclass(eq=False, repr=False)
class MatchFirstSampler(PairSampler):
    """Most likely matches first. ``n_neighbors``: kNN columns whose edges are candidates."""

    name: ClassVar[str] = "match_first"

    n_neighbors: int = CANDIDATE_NEIGHBORS
    max_per_image: int = MAX_PAIRS_PER_IMAGE
    random_state: int | None = 0

    def _propose(self, pool: PairPool, budget: int) -> SamplingResult:
        cand = component_pairs(pool, check_int(self.n_neighbors, "n_neighbors", 1))
        p = predict_p_same(pool.view.calibrator, cand.similarity)
        batch = Batch(cand.i, cand.j, check_int(self.max_per_image, "max_per_image", 1))
        kept = batch.fill(np.arange(cand.size), budget)  # candidates come by descending similarity
        pairs = [(int(cand.i[t]), int(cand.j[t])) for t in kept]
        reasons = [
            f"most likely match between two unlinked identities: cosine {cand.similarity[t]:.3f}, "
            f"P(same) {p[t]:.2f}"
            for t in kept
        ]
        proposals = self._proposals(
            pool, pairs, p[kept], ["match_first"] * len(pairs), reasons, p_same=p[kept]
        )
        return self._result(proposals, budget, {"component_pairs": cand.size})
