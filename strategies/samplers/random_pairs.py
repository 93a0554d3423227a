"""Random baseline (ALGORITHMS.md §7): uniform over the pairs nobody has asked and nothing implies.

Rejection sampling keeps memory O(budget): draw (i, j) uniformly, reject (i, i), repeats and resolved
pairs. Only when rejections pile up (almost every pair resolved, which happens on tiny pools) do we
fall back to scanning rows, so that "fewer than budget" and "nothing left" are reported exactly
instead of looping forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from strategies.defaults import RANDOM_MAX_DRAWS_FACTOR, RANDOM_MIN_DRAWS
from strategies.samplers.base import PairSampler, SamplingResult, register_sampler
from strategies.samplers.numeric import unresolved_mask
from strategies.samplers.pool import PairPool
from strategies.validation import check_random_state

if TYPE_CHECKING:
    from strategies.constraints import ConstraintGraph


@register_sampler
@dataclass(eq=False, repr=False)
class RandomPairSampler(PairSampler):
    """Uniform random pairs over unasked, unimplied pairs; priority is the uniform draw itself."""

    name: ClassVar[str] = "random"

    max_draws_factor: int = RANDOM_MAX_DRAWS_FACTOR
    min_draws: int = RANDOM_MIN_DRAWS
    random_state: int | None = 0

    def _propose(self, pool: PairPool, budget: int) -> SamplingResult:
        if self.max_draws_factor < 1 or self.min_draws < 1:
            raise ValueError(
                f"max_draws_factor and min_draws must be >= 1, got {self.max_draws_factor}, {self.min_draws}"
            )
        rng = check_random_state(self.random_state)
        n, constraints = pool.n, pool.constraints
        total = n * (n - 1) // 2
        limit = min(budget, total)
        max_draws = max(self.min_draws, self.max_draws_factor * limit)
        chosen: dict[tuple[int, int], None] = {}
        draws = 0
        while len(chosen) < limit and draws < max_draws:
            m = int(min(max_draws - draws, max(64, 2 * (limit - len(chosen)))))
            a = rng.integers(0, n, size=m)
            b = rng.integers(0, n - 1, size=m)
            b = b + (b >= a)  # uniform over ordered pairs with a != b -> uniform over unordered pairs
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            draws += m
            ok = unresolved_mask(constraints, lo, hi)
            for x, y in zip(lo[ok].tolist(), hi[ok].tolist(), strict=True):
                if (x, y) not in chosen:
                    chosen[(x, y)] = None
                    if len(chosen) >= limit:
                        break
        scanned = 0
        if len(chosen) < limit:
            rest, scanned = _scan_remaining(n, constraints, chosen, limit - len(chosen), rng)
            for pair in rest:
                chosen[pair] = None
        pairs = list(chosen)
        priorities = rng.random(len(pairs))
        reasons = ["uniform draw over unasked, unimplied pairs"] * len(pairs)
        proposals = self._proposals(pool, pairs, priorities, ["random"] * len(pairs), reasons)
        pool_sizes = {"all_pairs": total, "draws": draws, "scanned_rows": scanned}
        return self._result(proposals, budget, pool_sizes)


def _scan_remaining(
    n: int,
    constraints: ConstraintGraph,
    chosen: dict[tuple[int, int], None],
    needed: int,
    rng: np.random.Generator,
) -> tuple[list[tuple[int, int]], int]:
    """Exact fallback: a uniform choice of ``needed`` proposable pairs not yet chosen, by scanning rows
    and keeping the ``needed`` smallest random keys (a reservoir, so memory stays O(needed + n)).
    Reached only when rejection sampling stalls, i.e. when almost every pair is resolved."""
    keep_keys = np.zeros(0, dtype=np.float64)
    keep_i = np.zeros(0, dtype=np.int64)
    keep_j = np.zeros(0, dtype=np.int64)
    rows = 0
    for i in range(n - 1):
        rows += 1
        j = np.arange(i + 1, n, dtype=np.int64)
        ii = np.full(j.size, i, dtype=np.int64)
        ok = unresolved_mask(constraints, ii, j)
        if chosen:
            ok &= np.fromiter(((i, b) not in chosen for b in j.tolist()), dtype=bool, count=j.size)
        if not ok.any():
            continue
        keep_keys = np.concatenate([keep_keys, rng.random(int(ok.sum()))])
        keep_i = np.concatenate([keep_i, ii[ok]])
        keep_j = np.concatenate([keep_j, j[ok]])
        if keep_keys.size > needed:
            top = np.argsort(keep_keys, kind="stable")[:needed]
            keep_keys, keep_i, keep_j = keep_keys[top], keep_i[top], keep_j[top]
    return list(zip(keep_i.tolist(), keep_j.tolist(), strict=True)), rows
