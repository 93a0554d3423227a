"""Candidate pairs between must-link components, the unit match-first and hybrid ask about.

An answer about one pair of images settles every pair between their two components (transitivity), so
the candidates are component pairs, each shown to the annotator as its most similar image pair. A
component pair drops out once any pair between the two components has been asked or answered (an open
task, a skip, an "unsure" or an answer): nobody is asked about the same two individuals twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strategies.defaults import CANDIDATE_NEIGHBORS, MAX_PAIRS_PER_IMAGE
from strategies.samplers.base import PairSampler
from strategies.samplers.numeric import predict_p_same, unique_pairs
from strategies.samplers.pool import PairPool
from strategies.validation import check_int

__all__ = ["Batch", "ComponentPairs", "ComponentSampler", "component_pairs"]


@dataclass(frozen=True)
class ComponentPairs:
    """One row per candidate component pair: the image pair shown (``i < j``), its cosine ``similarity``,
    and the two components ``ca < cb``; rows sorted by descending similarity."""

    i: np.ndarray
    j: np.ndarray
    similarity: np.ndarray
    ca: np.ndarray
    cb: np.ndarray

    @property
    def size(self) -> int:
        return int(self.i.size)


def _component_keys(comp: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    a, b = comp[i], comp[j]
    m = np.int64(comp.max()) + 1 if comp.size else np.int64(1)
    return np.minimum(a, b).astype(np.int64) * m + np.maximum(a, b)


def component_pairs(pool: PairPool, n_neighbors: int) -> ComponentPairs:
    """The kNN edges (first ``n_neighbors`` columns) between two different must-link components that no
    answer, open task or implication already covers, reduced to the most similar edge per component pair."""
    n, knn = pool.n, pool.view.knn
    cols = min(knn.k, n_neighbors + 1)
    rows = np.repeat(np.arange(n, dtype=np.int64), cols - 1)
    nbrs = np.asarray(knn.indices)[:, 1:cols].reshape(-1)
    sims = np.asarray(knn.similarities)[:, 1:cols].reshape(-1)
    ii, jj, first = unique_pairs(rows, nbrs, n)
    sims = sims[first]
    comp = pool.constraints.component_labels(n)
    keep = comp[ii] != comp[jj]
    ii, jj, sims = ii[keep], jj[keep], sims[keep]
    if ii.size:
        keep = ~np.asarray(pool.constraints.resolved_mask(np.stack([ii, jj], axis=1)), dtype=bool)
        ii, jj, sims = ii[keep], jj[keep], sims[keep]
    # component pairs already asked about (through any of their images)
    asked = list(pool.constraints.asked_pairs()) + [c.pair for c in pool.constraints]
    if asked and ii.size:
        done = np.asarray(asked, dtype=np.int64).reshape(-1, 2)
        done = done[(done.max(axis=1) < n)]
        keys = _component_keys(comp, ii, jj)
        keep = ~np.isin(keys, _component_keys(comp, done[:, 0], done[:, 1]))
        ii, jj, sims = ii[keep], jj[keep], sims[keep]
    order = np.lexsort((jj, ii, -sims))
    ii, jj, sims = ii[order], jj[order], sims[order]
    keys = _component_keys(comp, ii, jj)
    _, first = np.unique(keys, return_index=True)
    first = np.sort(first)
    ii, jj, sims = ii[first], jj[first], sims[first]
    ca, cb = np.minimum(comp[ii], comp[jj]), np.maximum(comp[ii], comp[jj])
    return ComponentPairs(ii, jj, sims.astype(np.float64), ca, cb)


class Batch:
    """A batch being filled: no image in more than ``max_per_image`` pairs, no ``groups`` key twice."""

    def __init__(self, i: np.ndarray, j: np.ndarray, max_per_image: int) -> None:
        self.i, self.j, self.max_per_image = i, j, max_per_image
        self.used: dict[int, int] = {}
        self.groups: set[int] = set()
        self.rows: list[int] = []
        self._rows: set[int] = set()

    def fill(self, order: np.ndarray, limit: int, groups: np.ndarray | None = None) -> list[int]:
        """Walk ``order`` adding rows until the batch holds ``limit``; returns the rows added."""
        added: list[int] = []
        for t in order.tolist():
            if len(self.rows) >= limit:
                break
            if t in self._rows:
                continue
            a, b = int(self.i[t]), int(self.j[t])
            if max(self.used.get(a, 0), self.used.get(b, 0)) >= self.max_per_image:
                continue
            if groups is not None:
                g = int(groups[t])
                if g in self.groups:
                    continue
                self.groups.add(g)
            self.used[a] = self.used.get(a, 0) + 1
            self.used[b] = self.used.get(b, 0) + 1
            self.rows.append(t)
            self._rows.add(t)
            added.append(t)
        return added


@dataclass(eq=False, repr=False)
class ComponentSampler(PairSampler):
    """The parameters match-first and hybrid share: ``n_neighbors`` kNN columns give the candidate
    edges, and an image stands in at most ``max_per_image`` pairs of one batch."""

    n_neighbors: int = CANDIDATE_NEIGHBORS
    max_per_image: int = MAX_PAIRS_PER_IMAGE
    random_state: int | None = 0

    def _candidates(self, pool: PairPool) -> tuple[ComponentPairs, np.ndarray, Batch]:
        """The pool's component pairs, their calibrated P(same) and an empty batch to fill."""
        per_image = check_int(self.max_per_image, "max_per_image", 1)
        cand = component_pairs(pool, check_int(self.n_neighbors, "n_neighbors", 1))
        return cand, predict_p_same(pool.view.calibrator, cand.similarity), Batch(cand.i, cand.j, per_image)
