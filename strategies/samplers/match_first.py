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

from strategies.samplers.base import SamplingResult, register_sampler
from strategies.samplers.components import ComponentSampler
from strategies.samplers.pool import PairPool


@register_sampler
@dataclass(eq=False, repr=False)
class MatchFirstSampler(ComponentSampler):
    """Most likely matches first; parameters as ComponentSampler's."""

    name: ClassVar[str] = "match_first"

    def _propose(self, pool: PairPool, budget: int) -> SamplingResult:
        cand, p, batch = self._candidates(pool)
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
