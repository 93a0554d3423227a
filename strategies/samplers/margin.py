"""Margin baseline (ALGORITHMS.md §7): the kNN pairs whose calibrated P(same) is closest to 1/2.

Candidates are the kNN graph's edges (O(n·k)); P(same) comes from the context's calibrator (fit on the
constraint graph's labelled pairs when absent). Priority 1 - 2|p - 0.5| is 1 for a coin flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies.samplers.base import PairSampler, SamplingResult, register_sampler
from strategies.samplers.numeric import predict_p_same, take_unresolved, unique_pairs
from strategies.samplers.pool import PairPool
from strategies.validation import check_random_state


@register_sampler
@dataclass(eq=False, repr=False)
class MarginSampler(PairSampler):
    """Smallest |P(same) - 0.5| among kNN candidate pairs; ties broken by a seeded random key.

    ``n_neighbors`` limits the candidates to the first neighbours of each row (None: every column of
    the kNN graph).
    """

    name: ClassVar[str] = "margin"

    n_neighbors: int | None = None
    random_state: int | None = 0

    def _propose(self, pool: PairPool, budget: int) -> SamplingResult:
        if self.n_neighbors is not None and (
            isinstance(self.n_neighbors, bool)
            or not isinstance(self.n_neighbors, int)
            or self.n_neighbors < 1
        ):
            raise ValueError(f"n_neighbors must be a positive int or None, got {self.n_neighbors!r}")
        rng = check_random_state(self.random_state)
        n, knn, calibrator = pool.n, pool.view.knn, pool.view.calibrator
        idx = np.asarray(knn.indices)
        sim = np.asarray(knn.similarities)
        cols = idx.shape[1] if self.n_neighbors is None else min(idx.shape[1], self.n_neighbors + 1)
        rows = np.repeat(np.arange(n, dtype=np.int64), cols - 1)
        nbrs = idx[:, 1:cols].reshape(-1)
        sims = sim[:, 1:cols].reshape(-1)
        ii, jj, first = unique_pairs(rows, nbrs, n)
        sims = sims[first]
        p = predict_p_same(calibrator, sims)
        priority = 1.0 - 2.0 * np.abs(p - 0.5)
        order = np.lexsort((rng.random(ii.size), -priority))
        ok = order[take_unresolved(ii[order], jj[order], pool.constraints, budget)]
        pairs = list(zip(ii[ok].tolist(), jj[ok].tolist(), strict=True))
        reasons = [
            f"kNN pair, cosine {s:.3f}, calibrated P(same) {q:.3f}"
            for s, q in zip(sims[ok], p[ok], strict=True)
        ]
        proposals = self._proposals(pool, pairs, priority[ok], ["margin"] * len(pairs), reasons, p_same=p[ok])
        return self._result(proposals, budget, {"knn_pairs": int(ii.size)})
