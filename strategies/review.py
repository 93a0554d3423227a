"""Which answers the identities may trust, and which pairs to ask again (WBIA's graph identification).

Why: one wrong "same" merges two whole individuals, and a contradiction that is only counted stays
wrong. Following WBIA (wbia/algo/graph: inconsistency recovery, positive redundancy), the answers are
read in three steps before anything is built on them:

1. **Votes per pair.** Every answer on a pair counts once (several annotators, or the same pair asked
   again). The majority decides; a tie (as many "same" as "different") is a *disagreement*: neither a
   must-link nor a cannot-link, and the pair is asked again. Majority is order-independent: it does not
   matter who answered first, and a third answer settles a one-to-one tie.
2. **Redundancy.** Replayed in arrival order, a "same" verdict that would merge two groups whose smaller
   one has ``redundancy_min_size`` images or more, or that the model strongly doubts (calibrated P(same)
   below ``redundancy_max_p_same``), is *held* until ``redundancy_k`` answers on the pair say "same": it
   merges nothing meanwhile and the pair is asked again (a second opinion).
3. **Contradictions.** A cannot-link whose two images are in one must-link group is a contradiction.
   As in WBIA's ``hypothesis_errors``, each edge carries its evidence, weight = net supporting answers +
   the model's agreement (P(same) for a must-link, 1 - P(same) for a cannot-link); the minimum cut of
   the group's must-links between the two images is computed (scipy's maximum flow). The suspected
   error is the lighter side: the cut edges, or the cannot-link itself when its weight is below the
   cut's. Until a later answer resolves it, the group is split at the cut (the cut must-links are set
   aside, the cannot-link kept), so the two images never share an identity while the contradiction is
   open; the suspected pairs are asked again at the top of the queue. Cannot-links are handled
   strongest first, so the result does not depend on their arrival order.

An answer on a re-asked pair is one more vote: the pair's majority, and through it every step above,
decides again on the next cycle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

from strategies.constraints import ConstraintGraph, ConstraintKind
from strategies.defaults import REDUNDANCY_K, REDUNDANCY_MAX_P_SAME, REDUNDANCY_MIN_SIZE
from strategies.validation import check_counts, check_unit_interval

__all__ = ["REVIEW_KINDS", "AnswerReview", "Review", "ReviewedAnswers"]

# most urgent first: a contradiction splits a group, a disagreement blocks a pair, a second opinion a merge
REVIEW_KINDS = ("contradiction", "disagreement", "second_opinion")
_FLOW_SCALE = 1000  # weights become integer capacities for scipy's maximum flow


@dataclass(frozen=True)
class Review:
    """A pair to ask again: why (``kind``), the evidence behind its current verdict (``weight``: lower
    is weaker), the model's ``p_same``, and the answers in question (``annotation_ids``)."""

    i: int
    j: int
    kind: str
    weight: float
    p_same: float
    annotation_ids: tuple[str, ...]
    reason: str

    @property
    def pair(self) -> tuple[int, int]:
        return (self.i, self.j)

    def to_dict(self) -> dict[str, Any]:
        return {"i": self.i, "j": self.j, "kind": self.kind, "weight": float(self.weight),
                "p_same": float(self.p_same), "annotation_ids": list(self.annotation_ids),
                "reason": self.reason}


@dataclass(frozen=True)
class ReviewedAnswers:
    """The answers that may be trusted now (``graph``: every answered or asked pair is marked asked, so
    samplers never propose one again) and the pairs to ask again (``reviews``, most urgent first)."""

    graph: ConstraintGraph
    reviews: tuple[Review, ...]
    set_aside: tuple[str, ...] = field(default=())  # annotation ids the graph leaves out
    contradictions: int = 0  # open: cannot-links inside a group of the majority verdicts
    disagreements: int = 0  # pairs with as many "same" as "different" answers
    held: int = 0  # "same" verdicts waiting for a second opinion
    split_edges: tuple[tuple[int, int], ...] = field(default=())  # must-links cut until resolved
    conflicts: int = 0  # pairs answered both ways plus open contradictions: evidence that annotators err

    def summary(self) -> dict[str, int]:
        by_kind = {kind: sum(r.kind == kind for r in self.reviews) for kind in REVIEW_KINDS}
        return {"contradictions_open": self.contradictions, "disagreements_open": self.disagreements,
                "merges_held": self.held, "reviews_open": len(self.reviews),
                "answers_set_aside": len(self.set_aside), "edges_split": len(self.split_edges),
                "answers_in_conflict": self.conflicts,
                **{f"reviews_{kind}": n for kind, n in by_kind.items()}}


@dataclass
class _Votes:
    same: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)

    @property
    def net(self) -> int:
        """"same" minus "different" answers."""
        return len(self.same) - len(self.different)


class _Groups:
    """Union-find with sizes over the accepted must-links of the redundancy replay."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def size_of(self, x: int) -> int:
        return self.size.get(self.find(x), 1)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        sa, sb = self.size.get(ra, 1), self.size.get(rb, 1)
        if sa < sb:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] = sa + sb
        self.size.pop(rb, None)


@dataclass(kw_only=True, eq=False)
class AnswerReview:
    """Votes, redundancy and contradiction review over a ConstraintGraph (module docstring).

    ``redundancy_k``: "same" answers a held merge needs (1: no redundancy); ``redundancy_min_size``:
    a merge is held when the smaller of the two groups has at least this many images;
    ``redundancy_max_p_same``: ... or when the model's calibrated P(same) is below this (0: never).
    """

    redundancy_k: int = REDUNDANCY_K
    redundancy_min_size: int = REDUNDANCY_MIN_SIZE
    redundancy_max_p_same: float = REDUNDANCY_MAX_P_SAME

    def check_params(self) -> None:
        """Refuse a bad parameter, naming it (run by resolve; callers may check a config early)."""
        check_counts(self, "redundancy_k", "redundancy_min_size")
        check_unit_interval(self.redundancy_max_p_same, "redundancy_max_p_same")

    def resolve(
        self,
        constraints: ConstraintGraph,
        p_same: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> ReviewedAnswers:
        """The trusted answers and the reviews of ``constraints``.

        ``p_same``: the model's calibrated P(same) of an ``(m, 2)`` array of pairs (None: 0.5 for all,
        the model has no say).
        """
        self.check_params()
        if not isinstance(constraints, ConstraintGraph):
            raise TypeError(f"constraints: expected a ConstraintGraph, got {type(constraints).__name__}")
        votes: dict[tuple[int, int], _Votes] = {}
        for c in constraints:  # insertion order: a pair's place is that of its first answer
            entry = votes.setdefault(c.pair, _Votes())
            (entry.same if c.is_must_link else entry.different).append(c.annotation_id)
        pairs = list(votes)
        p = self._p_same(pairs, p_same)

        disputed = [pair for pair in pairs if votes[pair].net == 0]
        held, accepted = self._redundancy([pair for pair in pairs if votes[pair].net > 0], votes, p)
        cannot = [pair for pair in pairs if votes[pair].net < 0]
        weight = {pair: abs(votes[pair].net) + (p[pair] if votes[pair].net > 0 else 1.0 - p[pair])
                  for pair in pairs}
        cut, suspects, n_contradictions = _recover(accepted, cannot, weight, votes)

        trusted_ml = set(accepted) - cut
        trusted_cl = set(cannot)
        graph = ConstraintGraph()
        set_aside: list[str] = []
        for c in constraints:
            keep = c.pair in trusted_ml if c.is_must_link else c.pair in trusted_cl
            if keep:
                graph.add(c.annotation_id, c.i, c.j, ConstraintKind.MUST_LINK if c.is_must_link
                          else ConstraintKind.CANNOT_LINK)
            else:
                set_aside.append(c.annotation_id)
        for pair in [*constraints.asked_pairs(), *pairs]:
            graph.mark_asked(*pair)

        reviews: dict[tuple[int, int], Review] = {}
        for pair, why in suspects:
            reviews.setdefault(pair, self._review(pair, "contradiction", why, votes, p, weight))
        for pair in disputed:
            reviews.setdefault(pair, self._review(
                pair, "disagreement", "annotators disagree: as many 'same' as 'different' answers",
                votes, p, {pair: abs(p[pair] - 0.5)}))
        for pair in held:
            reviews.setdefault(pair, self._review(
                pair, "second_opinion", self._held_reason(pair, votes, p), votes, p, weight))
        ordered = sorted(reviews.values(), key=lambda r: (REVIEW_KINDS.index(r.kind), r.weight, r.pair))
        return ReviewedAnswers(
            graph=graph, reviews=tuple(ordered), set_aside=tuple(set_aside),
            contradictions=n_contradictions, disagreements=len(disputed), held=len(held),
            split_edges=tuple(sorted(cut)),
            conflicts=n_contradictions + sum(bool(v.same and v.different) for v in votes.values()),
        )

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _p_same(pairs: list[tuple[int, int]], p_same: Callable[[np.ndarray], np.ndarray] | None
                ) -> dict[tuple[int, int], float]:
        if not pairs:
            return {}
        if p_same is None:
            return dict.fromkeys(pairs, 0.5)
        values = np.asarray(p_same(np.asarray(pairs, dtype=np.int64)), dtype=np.float64).reshape(-1)
        if values.shape != (len(pairs),) or not np.all(np.isfinite(values)):
            raise ValueError(f"p_same: expected {len(pairs)} finite probabilities, got shape {values.shape}")
        return dict(zip(pairs, np.clip(values, 0.0, 1.0).tolist(), strict=True))

    def _redundancy(self, same: list[tuple[int, int]], votes: dict[tuple[int, int], _Votes],
                    p: dict[tuple[int, int], float]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(held, accepted) "same" verdicts, replayed in arrival order."""
        groups = _Groups()
        held: list[tuple[int, int]] = []
        accepted: list[tuple[int, int]] = []
        k = int(self.redundancy_k)
        for pair in same:
            a, b = pair
            if groups.find(a) != groups.find(b) and len(votes[pair].same) < k and (
                min(groups.size_of(a), groups.size_of(b)) >= int(self.redundancy_min_size)
                or p[pair] < float(self.redundancy_max_p_same)
            ):
                held.append(pair)
                continue
            groups.union(a, b)
            accepted.append(pair)
        return held, accepted

    def _held_reason(self, pair: tuple[int, int], votes: dict[tuple[int, int], _Votes],
                     p: dict[tuple[int, int], float]) -> str:
        n = len(votes[pair].same)
        doubted = p[pair] < float(self.redundancy_max_p_same)
        doubt = f", the model says P(same) {p[pair]:.2f}" if doubted else ""
        return f"second opinion before a merge: {n} of {self.redundancy_k} 'same' answers{doubt}"

    @staticmethod
    def _review(pair: tuple[int, int], kind: str, reason: str, votes: dict[tuple[int, int], _Votes],
                p: dict[tuple[int, int], float], weight: dict[tuple[int, int], float]) -> Review:
        v = votes[pair]
        return Review(pair[0], pair[1], kind, float(weight[pair]), float(p[pair]),
                      tuple(v.same + v.different), reason)


def _recover(
    accepted: list[tuple[int, int]],
    cannot: list[tuple[int, int]],
    weight: dict[tuple[int, int], float],
    votes: dict[tuple[int, int], _Votes],
) -> tuple[set[tuple[int, int]], list[tuple[tuple[int, int], str]], int]:
    """Split every group that holds a cannot-link at its minimum cut; returns (cut must-links, the
    suspected pairs with a reason, the number of contradictions)."""
    adjacency: dict[int, dict[int, float]] = {}
    for a, b in accepted:
        adjacency.setdefault(a, {})[b] = weight[(a, b)]
        adjacency.setdefault(b, {})[a] = weight[(a, b)]
    cut: set[tuple[int, int]] = set()
    suspects: list[tuple[tuple[int, int], str]] = []
    n = 0
    for s, t in sorted(cannot, key=lambda pair: (-weight[pair], pair)):  # strongest cannot-link first
        group = _reachable(adjacency, s)
        if t not in group:
            continue
        n += 1
        edges, cut_weight = _min_cut(adjacency, sorted(group), s, t)
        for a, b in edges:
            del adjacency[a][b], adjacency[b][a]
            cut.add((a, b))
        answers = f"{len(votes[(s, t)].different)} 'different' vs a 'same' path"
        if weight[(s, t)] < cut_weight:
            suspects.append(((s, t), f"contradiction: this 'different' ({answers}) is the weakest link"))
        else:
            suspects.extend((edge, f"contradiction: weakest link of the 'same' path between {s} and {t}, "
                                   f"which were answered 'different'") for edge in edges)
    return cut, suspects, n


def _reachable(adjacency: dict[int, dict[int, float]], start: int) -> set[int]:
    seen = {start}
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for v in adjacency.get(u, {}):
            if v not in seen:
                seen.add(v)
                queue.append(v)
    return seen


def _min_cut(adjacency: dict[int, dict[int, float]], nodes: list[int], s: int, t: int
             ) -> tuple[list[tuple[int, int]], float]:
    """The must-links of a minimum s-t cut inside one group (sorted) and their total weight."""
    local = {node: k for k, node in enumerate(nodes)}
    rows, cols, caps = [], [], []
    for u in nodes:
        for v, w in adjacency[u].items():
            rows.append(local[u])
            cols.append(local[v])
            caps.append(max(1, round(w * _FLOW_SCALE)))
    m = len(nodes)
    capacity = csr_matrix((np.asarray(caps, dtype=np.int32), (rows, cols)), shape=(m, m))
    flow = maximum_flow(capacity, local[s], local[t]).flow
    residual = (capacity - flow).tocsr()
    residual.eliminate_zeros()
    source_side = {local[s]}
    queue = deque([local[s]])
    while queue:  # what the source still reaches through unsaturated edges
        u = queue.popleft()
        start, end = residual.indptr[u], residual.indptr[u + 1]
        for v, r in zip(residual.indices[start:end].tolist(), residual.data[start:end].tolist(), strict=True):
            if r > 0 and v not in source_side:
                source_side.add(v)
                queue.append(v)
    edges = sorted({(min(nodes[u], nodes[v]), max(nodes[u], nodes[v]))
                    for u in source_side for v in (local[x] for x in adjacency[nodes[u]])
                    if v not in source_side})
    return edges, float(sum(adjacency[a][b] for a, b in edges))
