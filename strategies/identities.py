"""Identities: every pool image gets an individual, verified by answers or inferred (ALGORITHMS.md §11).

What the labelling team takes home. Must-link components are human-verified identities; cannot-links
are hard. Every other image joins an identity by FINCH's first partition taken under the constraints:
each image links to its first neighbour (the most similar image the answers do not separate it from),
and links are unioned from the most similar down, skipping any that would join two clusters a
cannot-link separates. Why first neighbours and not a similarity threshold: with 2-4 images per
individual a global threshold over-merges dense regions and under-merges sparse ones (measured on real
sets, docs/benchmarks.md), while "my nearest image is probably me" holds at every density and needs no
parameter that the first answers would have to estimate. ``min_p_same`` drops links whose calibrated
P(same) is below it, so an image unlike everything else stays a new individual. An image whose most
similar image is cannot-linked to it links to its next image (``link_past_cannot_link``), or makes no
link of its own (others may still link to it): a wrong "different" answer then cannot split the
image from its individual *and* merge it into a stranger, but where first neighbours are often wrong the
next image is often the right one (docs/benchmarks.md measures both). The cycle's default, ``"auto"``
(:func:`resolve_link_rule`), links past a cannot-link until the answers show that annotators err.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strategies.constraints import ConstraintGraph, must_link_components
from strategies.defaults import CONTRADICTION_POLICY, IDENTITY_MIN_P_SAME, NEW_INDIVIDUAL_MIN
from strategies.knn import KnnGraph
from strategies.validation import check_features, check_unit_interval

__all__ = ["LINK_AUTO", "IdentityAssigner", "IdentityAssignment", "resolve_link_rule"]

LINK_AUTO = "auto"


def resolve_link_rule(setting: bool | str, *, conflicts: int) -> bool:
    """``link_past_cannot_link`` for this cycle. ``"auto"``: link past a cannot-link while no answers
    conflict, stop once some do (``conflicts``: pairs answered both ways plus open contradictions,
    strategies.review). Why: a careful annotator's "different" next to an image's best match is a hard
    negative, and its next match is often right; once answers conflict, a "different" may be a wrong
    one, and linking past it would also put the image with a stranger."""
    if setting == LINK_AUTO:
        return conflicts == 0
    if not isinstance(setting, bool):
        raise ValueError(f"link_past_cannot_link must be true, false or {LINK_AUTO!r}, got {setting!r}")
    return setting


@dataclass(frozen=True)
class IdentityAssignment:
    """Per image: ``labels`` (identity id 0..m-1, every image has one), ``verified`` (inside a must-link
    component of two or more images), ``confidence`` in [0, 1] and ``answers`` (human answers touching
    the image's must-link component)."""

    labels: np.ndarray
    verified: np.ndarray
    confidence: np.ndarray
    answers: np.ndarray

    @property
    def n_identities(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def new_individual(self) -> np.ndarray:
        """Images proposed as individuals seen nowhere else in the pool: alone in their identity, and
        their confidence (1 - calibrated P(same) to their most similar image) at least ``NEW_INDIVIDUAL_MIN``
        — a team reviews these before opening a new identity (the open-set case)."""
        if not self.labels.size:
            return np.zeros(0, dtype=bool)
        alone = np.bincount(self.labels)[self.labels] == 1
        return alone & ~self.verified & (self.confidence >= NEW_INDIVIDUAL_MIN)

    def summary(self) -> dict[str, int]:
        """Counts a project lead reads: identities, how many are verified, images verified/inferred."""
        sizes = np.bincount(self.labels) if self.labels.size else np.zeros(0, dtype=np.int64)
        verified_ids = np.unique(self.labels[self.verified]).size
        return {
            "identities": self.n_identities,
            "identities_verified": int(verified_ids),
            "identities_single_image": int((sizes == 1).sum()),
            "images_verified": int(self.verified.sum()),
            "images_inferred": int((~self.verified).sum()),
            "new_individuals": int(self.new_individual.sum()),
        }


class _Clusters:
    """Union-find over must-link components that carries each cluster's cannot-link partners."""

    def __init__(self, m: int, cannot: list[tuple[int, int]]) -> None:
        self.parent = np.arange(m)
        self.apart: dict[int, set[int]] = {}
        for a, b in cannot:
            if a != b:
                self.apart.setdefault(a, set()).add(b)
                self.apart.setdefault(b, set()).add(a)

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return int(root)

    def separated(self, a: int, b: int) -> bool:
        return self.find(b) in self.apart.get(self.find(a), ())

    def union(self, a: int, b: int) -> bool:
        """Join the clusters of ``a`` and ``b`` unless a cannot-link separates them."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb or rb in self.apart.get(ra, ()):
            return False
        self.parent[rb] = ra
        moved = self.apart.pop(rb, set())
        for c in moved:
            partners = self.apart[c]
            partners.discard(rb)
            partners.add(ra)
        if moved:
            self.apart.setdefault(ra, set()).update(moved)
        return True


class IdentityAssigner:
    """Verified components joined by first-neighbour links under the constraints (module docstring).

    ``min_p_same``: a link whose calibrated P(same) is below this is not made (0 keeps every first
    neighbour, FINCH's rule). ``contradiction_policy``: how a cannot-link inside a must-link component is
    resolved before assigning (strategies.constraints). ``link_past_cannot_link``: an image whose most
    similar image a cannot-link separates from it links to its next image (FINCH under constraints);
    False: it makes no link of its own (module docstring).
    """

    def __init__(
        self,
        *,
        min_p_same: float = IDENTITY_MIN_P_SAME,
        contradiction_policy: str = CONTRADICTION_POLICY,
        link_past_cannot_link: bool = True,
    ) -> None:
        self.min_p_same = min_p_same
        self.contradiction_policy = contradiction_policy
        self.link_past_cannot_link = link_past_cannot_link

    def assign(
        self,
        features: np.ndarray,
        constraints: ConstraintGraph,
        knn: KnnGraph,
        calibrator: object | None = None,
    ) -> IdentityAssignment:
        """The identity of every row of ``features`` given the answers in ``constraints``.

        ``knn``: the embedding's kNN graph (column 0 = the row itself); ``calibrator``: anything with
        ``predict(similarities) -> P(same)`` (needed for ``min_p_same > 0`` and for the confidences;
        without one, confidences are the raw similarities clipped to [0, 1]).
        """
        x = check_features(features, min_rows=1)
        n = x.shape[0]
        if knn.n != n:
            raise ValueError(f"knn: covers {knn.n} rows but features has {n}")
        check_unit_interval(self.min_p_same, "min_p_same", "[0, 1)")
        if not isinstance(self.link_past_cannot_link, bool):
            raise ValueError(f"link_past_cannot_link: must be true or false here (the cycle resolves "
                             f"{LINK_AUTO!r}), got {self.link_past_cannot_link!r}")
        effective = constraints.effective(self.contradiction_policy)
        comp = must_link_components(np.asarray(effective.must_link, dtype=np.int64).reshape(-1, 2), n)
        cannot = [(int(comp[i]), int(comp[j])) for i, j in effective.cannot_link]
        clusters = _Clusters(int(comp.max()) + 1 if n else 0, cannot)

        def p_same(similarities: np.ndarray) -> np.ndarray:
            s = np.asarray(similarities, dtype=np.float64)
            if calibrator is None:
                return np.clip(s, 0.0, 1.0)
            return np.clip(np.asarray(calibrator.predict(s), dtype=np.float64).reshape(s.shape), 0.0, 1.0)

        # each image's first neighbour outside its component (past cannot-linked ones only if allowed)
        idx, sim = knn.indices[:, 1:], knn.similarities[:, 1:]
        links: list[tuple[float, int, int]] = []
        for i in range(n):
            ci = int(comp[i])
            for j, s in zip(idx[i].tolist(), sim[i].tolist(), strict=True):
                cj = int(comp[j])
                if cj == ci:
                    break  # nearest is a verified mate: the image is where it belongs
                if not clusters.separated(ci, cj):
                    links.append((float(s), ci, cj))
                    break
                if not self.link_past_cannot_link:
                    break
        if links and self.min_p_same > 0:
            keep = p_same(np.array([s for s, _, _ in links])) >= self.min_p_same
            links = [link for link, k in zip(links, keep, strict=True) if k]
        for _, a, b in sorted(links, key=lambda t: -t[0]):
            clusters.union(a, b)

        roots = np.array([clusters.find(int(c)) for c in comp], dtype=np.int64)
        _, labels = np.unique(roots, return_inverse=True)
        sizes = np.bincount(comp)
        verified = sizes[comp] >= 2
        confidence = self._confidence(labels, verified, idx, sim, p_same)
        answers = _answers_per_component(comp, constraints)
        return IdentityAssignment(labels.astype(np.int64), verified, confidence, answers[comp])

    @staticmethod
    def _confidence(labels, verified, idx, sim, p_same) -> np.ndarray:
        """Verified images 1; an inferred image the P(same) of its most similar identity mate among its
        neighbours; an image alone 1 - P(same) of its nearest neighbour (it is a new individual)."""
        n = labels.shape[0]
        conf = np.ones(n, dtype=np.float64)
        if idx.shape[1] == 0:
            return conf
        mate = labels[idx] == labels[:, None]
        has_mate = mate.any(axis=1)
        first_mate = np.argmax(mate, axis=1)
        mate_sim = sim[np.arange(n), first_mate]
        alone = np.bincount(labels)[labels] == 1
        inferred = ~verified & has_mate
        conf[inferred] = p_same(mate_sim[inferred])
        conf[alone] = 1.0 - p_same(sim[alone, 0])
        # an inferred image whose identity mate lies beyond its neighbour list: no evidence either way
        conf[~verified & ~has_mate & ~alone] = 0.5
        return conf


def _answers_per_component(comp: np.ndarray, constraints: ConstraintGraph) -> np.ndarray:
    """How many human answers (must- and cannot-links) touch each must-link component."""
    counts = np.zeros(int(comp.max()) + 1 if comp.size else 0, dtype=np.int64)
    for c in constraints:
        a, b = int(comp[c.i]), int(comp[c.j])
        counts[a] += 1
        if b != a:
            counts[b] += 1
    return counts
