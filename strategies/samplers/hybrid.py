"""Hybrid: match-first for building identities, plus the pairs whose answer most likely changes them.

Half of a batch (``match_fraction``) asks the most likely matches (MatchFirstSampler's ranking); the
rest asks at the identity assignment's decision boundary: between two images the assignment puts in
different identities, the chance the answer is "same" (P(same)); inside one inferred identity, the
chance it is "different" (1 - P(same)). Those answers fix the assignment where it is most likely wrong,
and they are the hard positives and hard negatives a model learns from, which the near-duplicate pairs
match-first finds first teach little (measured: docs/benchmarks.md). Until the calibrator has answers
of both kinds there is no boundary to ask about, and the whole batch is match-first.

How much to ask match-first is read from the project's own answers. Once at least
``confirmed_same_rate`` of them are "same", the embedding already groups most individuals: the
likeliest matches mostly confirm links the identity assignment infers anyway, so only
``confirmed_match_fraction`` of the batch asks them and the rest goes to the boundary. Where most
answers are "different", most likely matches are wrong, and verifying them is what builds identities.
The rate counts answers as they were given, so no retraining of the embedding can bias it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies.constraints import ConstraintGraph
from strategies.defaults import (
    HYBRID_CONFIRMED_MATCH_FRACTION,
    HYBRID_CONFIRMED_MIN_ANSWERS,
    HYBRID_CONFIRMED_SAME_RATE,
    HYBRID_MATCH_FRACTION,
)
from strategies.samplers.base import SamplingResult, register_sampler
from strategies.samplers.components import ComponentSampler
from strategies.samplers.pool import PairPool


@register_sampler
@dataclass(eq=False, repr=False)
class HybridSampler(ComponentSampler):
    """``match_fraction`` of the batch match-first (``confirmed_match_fraction`` once at least
    ``confirmed_same_rate`` of the answers are "same"), the rest at the boundary (module docstring)."""

    name: ClassVar[str] = "hybrid"

    match_fraction: float = HYBRID_MATCH_FRACTION
    confirmed_match_fraction: float = HYBRID_CONFIRMED_MATCH_FRACTION
    confirmed_same_rate: float = HYBRID_CONFIRMED_SAME_RATE

    def match_share(self, constraints: ConstraintGraph) -> float:
        """The share of the batch asked match-first, given the answers so far."""
        for name in ("match_fraction", "confirmed_match_fraction", "confirmed_same_rate"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        answers = len(constraints)
        same = len(constraints.must_links())
        if answers >= HYBRID_CONFIRMED_MIN_ANSWERS and same >= float(self.confirmed_same_rate) * answers:
            return float(self.confirmed_match_fraction)
        return float(self.match_fraction)

    def _propose(self, pool: PairPool, budget: int) -> SamplingResult:
        share = self.match_share(pool.constraints)
        cand, p, batch = self._candidates(pool)
        calibrator = pool.view.calibrator
        n_match = budget if calibrator.is_prior else round(share * budget)

        labels = pool.view.identities.labels
        a, b = labels[cand.i], labels[cand.j]
        merged = a == b
        change = np.where(merged, 1.0 - p, p)
        # one question per pair of identities across the boundary, one per component pair inside one
        m = np.int64(max(int(labels.max()), int(cand.cb.max(initial=0))) + 1)
        groups = np.where(merged, -(cand.ca * m + cand.cb) - 1, np.minimum(a, b) * m + np.maximum(a, b))

        first = set(batch.fill(np.arange(cand.size), n_match))
        batch.fill(np.argsort(-change, kind="stable"), budget, groups=groups)
        if len(batch.rows) < budget:  # too few boundary pairs: the next most likely matches
            batch.fill(np.arange(cand.size), budget)
        kept = batch.rows

        pairs = [(int(cand.i[t]), int(cand.j[t])) for t in kept]
        pools, reasons, priority = [], [], []
        for t in kept:
            if t in first:
                pools.append("match_first")
                priority.append(p[t])
                reasons.append(f"most likely match between two unlinked identities: P(same) {p[t]:.2f}")
            elif merged[t]:
                pools.append("boundary:inside")
                priority.append(change[t])
                reasons.append(f"inferred to be one individual, P(different) {change[t]:.2f}")
            else:
                pools.append("boundary:across")
                priority.append(change[t])
                reasons.append(f"inferred to be two individuals, P(same) {change[t]:.2f}")
        proposals = self._proposals(pool, pairs, np.asarray(priority), pools, reasons, p_same=p[kept])
        sizes = {"component_pairs": cand.size, "inside_identities": int(merged.sum())}
        return self._result(proposals, budget, sizes)
