"""Numeric helpers the samplers share: blocked similarities, pair bookkeeping against the constraints.

Every function here trusts its inputs (the sampler's PairPool checked them once) and never forms an
n x n matrix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from strategies.view import labelled_pairs

if TYPE_CHECKING:
    from strategies.calibration import PSameCalibrator
    from strategies.constraints import ConstraintGraph

# take_unresolved checks pair by pair (no vectorised query) when at most this many are wanted.
SCALAR_TAKE_MAX = 8

# Rows per block when a dense (block x m) similarity matrix is needed: keeps the transient memory of
# blocked products near BLOCK_ELEMENTS floats whatever n is.
BLOCK_ELEMENTS = 4_000_000


def labelled_items(constraints: ConstraintGraph, n: int) -> np.ndarray:
    """Boolean mask of the rows that appear in at least one human answer."""
    pairs, _ = labelled_pairs(constraints)
    mask = np.zeros(n, dtype=bool)
    ends = pairs.T.reshape(-1)
    mask[ends[(ends >= 0) & (ends < n)]] = True
    return mask


def pair_similarity(features: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine similarity of each (i[t], j[t]) (rows are unit vectors)."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    if i.size == 0:
        return np.zeros(0, dtype=np.float32)
    return np.einsum("ij,ij->i", features[i], features[j])


def predict_p_same(calibrator: PSameCalibrator, similarities: np.ndarray) -> np.ndarray:
    """Calibrated P(same), clipped to [0, 1] (guards against a calibrator's rounding)."""
    s = np.asarray(similarities, dtype=np.float64)
    if s.size == 0:
        return np.zeros(0, dtype=np.float64)
    return np.clip(np.asarray(calibrator.predict(s), dtype=np.float64).reshape(-1), 0.0, 1.0)


def matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """matrix @ vector without BLAS threads: the greedy loops call this once per pick, and a threaded
    GEMV on a loaded machine spends more time synchronising threads than computing (measured 2-20x)."""
    return np.einsum("ij,j->i", matrix, vector)


def block_rows(m: int) -> int:
    """How many rows of a (rows x m) dense block fit in BLOCK_ELEMENTS."""
    return max(1, BLOCK_ELEMENTS // max(1, m))


def max_similarity_to(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row: the largest cosine similarity to ``targets`` rows and the arg (row of targets);
    blocked so memory stays O(n + block)."""
    n = features.shape[0]
    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    if targets.shape[0] == 0:
        return best, arg
    step = block_rows(targets.shape[0])
    for start in range(0, n, step):
        sims = features[start : start + step] @ targets.T
        a = np.argmax(sims, axis=1)
        arg[start : start + step] = a
        best[start : start + step] = sims[np.arange(sims.shape[0]), a]
    return best, arg


def unresolved_mask(constraints: ConstraintGraph, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Boolean mask: pair t is proposable (i != j, not asked, not implied by the constraints)."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    out = i != j
    idx = np.flatnonzero(out)
    if idx.size == 0:
        return out
    vectorised = getattr(constraints, "resolved_mask", None)
    if vectorised is not None:
        out[idx] = ~np.asarray(vectorised(np.stack([i[idx], j[idx]], axis=1)), dtype=bool)
    else:
        out[idx] = [not constraints.is_resolved(int(a), int(b)) for a, b in zip(i[idx], j[idx], strict=True)]
    return out


def take_unresolved(
    i: np.ndarray, j: np.ndarray, constraints: ConstraintGraph, limit: int, *, chunk: int | None = None
) -> np.ndarray:
    """Positions of the first ``limit`` candidates (in the given order) that are proposable.

    Candidates must already be distinct pairs. Checked chunk by chunk, so a long ranked candidate list
    only costs graph lookups as far down as the budget reaches.
    """
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    taken: list[np.ndarray] = []
    n_taken = 0
    head = 0
    if limit <= SCALAR_TAKE_MAX:
        # a handful wanted (one partner per pick): the first candidates are nearly always open, and a
        # scalar lookup is ~50x cheaper than building the vectorised query
        head = min(i.size, 4 * limit)
        ok = [t for t in range(head) if i[t] != j[t] and not constraints.is_resolved(int(i[t]), int(j[t]))]
        taken.append(np.asarray(ok[:limit], dtype=np.int64))
        n_taken = taken[0].size
        if n_taken >= limit:
            return taken[0]
    step = chunk if chunk is not None else max(1024, 4 * limit)
    for start in range(head, i.size, step):
        ok = np.flatnonzero(unresolved_mask(constraints, i[start : start + step], j[start : start + step]))
        ok = ok[: limit - n_taken] + start
        taken.append(ok)
        n_taken += ok.size
        if n_taken >= limit:
            break
    return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)


def unique_pairs(i: np.ndarray, j: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise pairs to i < j, drop (i, i) and duplicates; returns (i, j, index of first occurrence)."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    lo = np.minimum(i, j)
    hi = np.maximum(i, j)
    keep = lo != hi
    idx = np.flatnonzero(keep)
    keys = lo[keep] * n + hi[keep]
    _, first = np.unique(keys, return_index=True)
    first = np.sort(first)
    sel = idx[first]
    return lo[sel], hi[sel], sel
