"""NP3: refine any clustering so it satisfies pairwise constraints (seed 001 §3.1 E; ALGORITHMS.md §4).

Must-links merge whole clusters; clusters left holding both ends of a cannot-link ("impure") are split
by colouring a conflict graph of must-link groups, matching the other groups' colour classes to the
sub-clusters with the Hungarian algorithm, and sending unconstrained points to the nearest
sub-cluster centroid. Everything outside impure clusters is plain numpy, so the cost is dominated by
the (few) impure clusters, not by the pool size.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

from strategies.constraints import (
    CONTRADICTION_POLICIES,
    ConstraintGraph,
    ConstraintKind,
    Contradiction,
    must_link_components,
)
from strategies.defaults import CONTRADICTION_POLICY, EXACT_COLOURING_MAX_NODES
from strategies.validation import check_features, check_labels

__all__ = ["NP3", "NP3Result", "colour_graph"]

_EPS = 1e-12


@dataclass(frozen=True)
class NP3Result:
    """Refined labels (-1 kept for untouched outliers), the contradictions met, and how many rows changed."""

    labels: np.ndarray
    contradictions: tuple[Contradiction, ...]
    n_changed: int


class NP3:
    """Non-parametric, plug-and-play constrained refinement of pseudo-labels.

    NP3 draws no random numbers (ties break towards lower indices), so ``random_state`` only keeps
    the estimator contract shared by every strategy. ``features`` are L2-normalised rows: cosine
    similarity (a dot product) drives centroid matching and the ``cl_wins`` choice of edge to cut.
    """

    def __init__(
        self,
        contradiction_policy: str = CONTRADICTION_POLICY,
        random_state: int | None = 0,
        exact_colouring_max_nodes: int = EXACT_COLOURING_MAX_NODES,
    ) -> None:
        self.contradiction_policy = contradiction_policy
        self.random_state = random_state
        self.exact_colouring_max_nodes = exact_colouring_max_nodes

    def refine(
        self,
        labels: np.ndarray | Sequence[int],
        features: np.ndarray,
        constraints: ConstraintGraph | tuple[np.ndarray, np.ndarray],
        *,
        check_input: bool = True,
    ) -> NP3Result:
        """Return labels satisfying every constraint kept by the contradiction policy.

        ``constraints`` is a ConstraintGraph or a tuple ``(ml_pairs (m, 2), cl_pairs (c, 2))``; a tuple
        carries no time order, so under ``latest_wins`` its cannot-links count as newer than its
        must-links. Labels of -1 are outliers (each its own singleton); those no constraint moves stay -1.
        ``check_input=False`` skips the checks of labels and features for a caller that made them.
        """
        if self.contradiction_policy not in CONTRADICTION_POLICIES:
            raise ValueError(
                f"contradiction_policy: unknown policy {self.contradiction_policy!r}; "
                f"one of {CONTRADICTION_POLICIES}"
            )
        if isinstance(self.exact_colouring_max_nodes, bool) or not isinstance(
            self.exact_colouring_max_nodes, int | np.integer
        ):
            raise ValueError("exact_colouring_max_nodes: must be an int")
        lab_in = check_labels(labels) if check_input else np.asarray(labels).astype(np.int64)
        n = lab_in.shape[0]
        feats = check_features(features, rows=n, unit_norm="any", dtype=None) if check_input else features
        graph = _as_graph(constraints)
        if graph.max_node() >= n:
            raise ValueError(f"constraints: reference row {graph.max_node()} but labels has {n} rows")

        def cosine(i: int, j: int) -> float:
            return float(np.dot(feats[i], feats[j]))

        eff = graph.effective(self.contradiction_policy, similarity=cosine)
        ml, cl = eff.must_link, eff.cannot_link
        if ml.shape[0] == 0 and cl.shape[0] == 0:
            return NP3Result(lab_in.copy(), eff.contradictions, 0)

        # Outliers become temporary singleton ids above every real label.
        first_fresh = int(lab_in.max(initial=-1)) + 1
        work = lab_in.copy()
        outliers = np.flatnonzero(work < 0)
        work[outliers] = first_fresh + np.arange(outliers.size)
        fresh = _Counter(first_fresh + outliers.size)

        if ml.shape[0]:
            work = _merge_must_links(work, ml, first_fresh)
        if cl.shape[0]:
            same = work[cl[:, 0]] == work[cl[:, 1]]
            if same.any():
                comp = must_link_components(ml, n)  # global ML components = the ML groups inside any cluster
                self._purify(work, lab_in, feats, comp, cl[same], fresh)

        _verify(work, ml, cl)
        out = _finalise(work, first_fresh, first_fresh + outliers.size)
        return NP3Result(out, eff.contradictions, int(np.count_nonzero(out != lab_in)))

    # ------------------------------------------------------------------ impure clusters
    def _purify(
        self,
        work: np.ndarray,
        lab_in: np.ndarray,
        feats: np.ndarray,
        comp: np.ndarray,
        cl_inside: np.ndarray,
        fresh: _Counter,
    ) -> None:
        """Split every cluster holding both ends of a cannot-link (in place on ``work``)."""
        cluster_of_cl = work[cl_inside[:, 0]]
        cl_order = np.argsort(cluster_of_cl, kind="stable")
        cl_sorted, cl_clusters = cl_inside[cl_order], cluster_of_cl[cl_order]
        impure, cl_start = np.unique(cl_clusters, return_index=True)
        cl_stop = np.append(cl_start[1:], cl_clusters.size)

        in_impure = np.isin(work, impure)
        rows = np.flatnonzero(in_impure)
        rows = rows[np.argsort(work[rows], kind="stable")]
        row_clusters = work[rows]
        row_start = np.searchsorted(row_clusters, impure, side="left")
        row_stop = np.searchsorted(row_clusters, impure, side="right")

        # Feature sums and sizes of every ML group (unit) living in an impure cluster.
        units, unit_of_row = np.unique(comp[rows], return_inverse=True)
        unit_of_row = unit_of_row.reshape(-1)
        membership = csr_matrix(
            (np.ones(rows.size), (unit_of_row, np.arange(rows.size))), shape=(units.size, rows.size)
        )
        unit_sums = np.asarray(membership @ feats[rows].astype(np.float64))
        unit_sizes = np.bincount(unit_of_row, minlength=units.size)
        unit_dirs = _normalise(unit_sums)

        for q, label in enumerate(impure):
            members = rows[row_start[q] : row_stop[q]]
            member_units = unit_of_row[row_start[q] : row_stop[q]]
            cls = cl_sorted[cl_start[q] : cl_stop[q]]
            cl_units = np.searchsorted(units, comp[cls])
            sub_of_member = self._split_cluster(member_units, cl_units, unit_sums, unit_dirs, unit_sizes)
            self._relabel(work, lab_in, int(label), members, sub_of_member, fresh)

    def _split_cluster(
        self,
        member_units: np.ndarray,
        cl_units: np.ndarray,
        unit_sums: np.ndarray,
        unit_dirs: np.ndarray,
        unit_sizes: np.ndarray,
    ) -> np.ndarray:
        """Sub-cluster index for every member of one impure cluster (steps 3a-3f)."""
        local_units, member_local = np.unique(member_units, return_inverse=True)
        member_local = member_local.reshape(-1)
        edge_local = np.searchsorted(local_units, cl_units)  # ML groups are whole inside the cluster
        nodes, edges = np.unique(edge_local, return_inverse=True)
        edges = edges.reshape(-1, 2)
        n_nodes = nodes.size
        node_sums = unit_sums[local_units[nodes]]  # only constrained groups need their sums
        node_sizes = unit_sizes[local_units[nodes]]

        # c. CL groups = connected components of the conflict graph (small: plain BFS beats scipy here)
        adjacency: list[set[int]] = [set() for _ in range(n_nodes)]
        for a, b in edges.tolist():
            adjacency[a].add(b)
            adjacency[b].add(a)
        group_lists = _components_of(adjacency)

        # d. colour every CL group (exactly when small)
        groups = []
        for g, members in enumerate(group_lists):
            group_nodes = np.asarray(members, dtype=np.int64)
            position = {v: k for k, v in enumerate(members)}
            local_adj = [{position[u] for u in adjacency[v]} for v in members]
            colours = colour_graph(local_adj, exact_max_nodes=self.exact_colouring_max_nodes)
            n_colours = int(colours.max()) + 1
            points = int(node_sizes[group_nodes].sum())
            groups.append((g, group_nodes, colours, n_colours, points))
        # the group with the largest chromatic number defines the sub-clusters; the rest, largest first
        groups.sort(key=lambda t: (-t[3], -t[4], t[0]))

        node_sub = np.full(n_nodes, -1, dtype=np.int64)
        _, first_nodes, first_colours, n_first, _ = groups[0]
        dim = node_sums.shape[1]
        sub_sums = np.zeros((n_first, dim), dtype=np.float64)
        for c in range(n_first):
            chosen = first_nodes[first_colours == c]
            node_sub[chosen] = c
            sub_sums[c] = node_sums[chosen].sum(axis=0)

        # e. match the colour classes of every other group to the sub-clusters (Hungarian)
        for _, group_nodes, colours, n_colours, _ in groups[1:]:
            class_sums = np.zeros((n_colours, dim), dtype=np.float64)
            for c in range(n_colours):
                class_sums[c] = node_sums[group_nodes[colours == c]].sum(axis=0)
            cost = 1.0 - _normalise(class_sums) @ _normalise(sub_sums).T
            class_idx, sub_idx = linear_sum_assignment(cost)
            target = np.full(n_colours, -1, dtype=np.int64)
            target[class_idx] = sub_idx
            unmatched = np.flatnonzero(target < 0)
            if unmatched.size:  # more colours than sub-clusters: open new ones
                target[unmatched] = sub_sums.shape[0] + np.arange(unmatched.size)
                sub_sums = np.vstack([sub_sums, np.zeros((unmatched.size, dim))])
            for c in range(n_colours):
                sub_sums[target[c]] += class_sums[c]
            node_sub[group_nodes] = target[colours]

        # f. unconstrained ML groups join the nearest sub-cluster centroid, as whole groups
        unit_sub = np.full(local_units.size, -1, dtype=np.int64)
        unit_sub[nodes] = node_sub
        free = np.flatnonzero(unit_sub < 0)
        if free.size:
            scores = unit_dirs[local_units[free]] @ _normalise(sub_sums).T
            unit_sub[free] = np.argmax(scores, axis=1)
        return unit_sub[member_local]

    @staticmethod
    def _relabel(
        work: np.ndarray,
        lab_in: np.ndarray,
        label: int,
        members: np.ndarray,
        sub_of_member: np.ndarray,
        fresh: _Counter,
    ) -> None:
        """g. the sub-cluster overlapping the original label most keeps it; the others get fresh ids."""
        n_sub = int(sub_of_member.max()) + 1
        overlap = np.bincount(sub_of_member, weights=(lab_in[members] == label), minlength=n_sub)
        size = np.bincount(sub_of_member, minlength=n_sub)
        keeper = int(np.lexsort((np.arange(n_sub), -size, -overlap))[0])
        new_labels = np.empty(n_sub, dtype=np.int64)
        for s in range(n_sub):
            new_labels[s] = label if s == keeper else fresh.next()
        work[members] = new_labels[sub_of_member]


# ---------------------------------------------------------------------- graph colouring
def colour_graph(
    adjacency: Sequence[set[int]], *, exact_max_nodes: int = EXACT_COLOURING_MAX_NODES
) -> np.ndarray:
    """Proper colouring (colours 0..k-1): exact minimum for <= ``exact_max_nodes`` nodes, else DSATUR."""
    n = len(adjacency)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    for v, nbrs in enumerate(adjacency):
        if v in nbrs:
            raise ValueError(f"adjacency: node {v} has a self-loop and cannot be coloured")
    colours = _dsatur(adjacency)
    if n <= exact_max_nodes and int(colours.max()) + 1 > 2:  # 1 or 2 colours are already optimal
        best = colours
        lower = _greedy_clique_size(adjacency)
        k = int(best.max()) + 1
        while k - 1 >= lower:
            attempt = _colour_with_at_most(adjacency, k - 1)
            if attempt is None:
                break
            best, k = attempt, int(attempt.max()) + 1
        colours = best
    return colours


def _dsatur(adjacency: Sequence[set[int]]) -> np.ndarray:
    """DSATUR with a lazy heap: O((n + m) log n)."""
    n = len(adjacency)
    colour = [-1] * n
    saturation: list[set[int]] = [set() for _ in range(n)]
    heap = [(0, -len(adjacency[v]), v) for v in range(n)]
    heapq.heapify(heap)
    while heap:
        neg_sat, _, v = heapq.heappop(heap)
        if colour[v] >= 0 or -neg_sat != len(saturation[v]):
            continue  # stale entry
        c = 0
        while c in saturation[v]:
            c += 1
        colour[v] = c
        for u in adjacency[v]:
            if colour[u] < 0 and c not in saturation[u]:
                saturation[u].add(c)
                heapq.heappush(heap, (-len(saturation[u]), -len(adjacency[u]), u))
    return np.asarray(colour, dtype=np.int64)


def _greedy_clique_size(adjacency: Sequence[set[int]]) -> int:
    """A lower bound on the chromatic number (stops the exact search early)."""
    best = 1
    for start in range(len(adjacency)):
        clique = {start}
        for v in sorted(adjacency[start], key=lambda u: -len(adjacency[u])):
            if all(v in adjacency[u] for u in clique):
                clique.add(v)
        best = max(best, len(clique))
    return best


def _colour_with_at_most(adjacency: Sequence[set[int]], limit: int) -> np.ndarray | None:
    """Backtracking (DSATUR order, new colours opened one at a time): a colouring with <= limit colours."""
    n = len(adjacency)
    colour = [-1] * n

    def solve(done: int, used: int) -> bool:
        if done == n:
            return True
        best_v, best_key = -1, (-1, -1)
        for v in range(n):
            if colour[v] < 0:
                key = (len({colour[u] for u in adjacency[v] if colour[u] >= 0}), len(adjacency[v]))
                if key > best_key:
                    best_v, best_key = v, key
        forbidden = {colour[u] for u in adjacency[best_v]}
        for c in range(min(used + 1, limit)):
            if c not in forbidden:
                colour[best_v] = c
                if solve(done + 1, max(used, c + 1)):
                    return True
        colour[best_v] = -1
        return False

    return np.asarray(colour, dtype=np.int64) if limit >= 1 and solve(0, 0) else None


# ---------------------------------------------------------------------- helpers
def _components_of(adjacency: Sequence[set[int]]) -> list[list[int]]:
    """Connected components as sorted node lists, ordered by their lowest node."""
    seen = [False] * len(adjacency)
    out = []
    for start in range(len(adjacency)):
        if seen[start]:
            continue
        seen[start] = True
        stack, members = [start], []
        while stack:
            v = stack.pop()
            members.append(v)
            for u in adjacency[v]:
                if not seen[u]:
                    seen[u] = True
                    stack.append(u)
        out.append(sorted(members))
    return out


class _Counter:
    """Hands out fresh label ids."""

    def __init__(self, start: int) -> None:
        self.value = start

    def next(self) -> int:
        self.value += 1
        return self.value - 1


def _as_graph(constraints: ConstraintGraph | tuple[np.ndarray, np.ndarray]) -> ConstraintGraph:
    if isinstance(constraints, ConstraintGraph):
        return constraints
    if not isinstance(constraints, tuple | list) or len(constraints) != 2:
        raise ValueError("constraints: expected a ConstraintGraph or a tuple (ml_pairs, cl_pairs)")
    graph = ConstraintGraph()
    for prefix, kind, pairs in (
        ("ml", ConstraintKind.MUST_LINK, constraints[0]),
        ("cl", ConstraintKind.CANNOT_LINK, constraints[1]),
    ):
        arr = np.asarray(pairs) if pairs is not None else np.zeros((0, 2), dtype=np.int64)
        if arr.size == 0:
            continue
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype.kind not in "iu":
            raise ValueError(f"constraints: {prefix} pairs must be an integer array of shape (k, 2)")
        for k, (i, j) in enumerate(arr.tolist()):
            try:
                graph.add(f"{prefix}:{k}", i, j, kind)
            except ValueError as exc:
                raise ValueError(f"constraints: {prefix} pair {k} ({i}, {j}): {exc}") from None
    return graph


def _merge_must_links(work: np.ndarray, ml: np.ndarray, first_fresh: int) -> np.ndarray:
    """Step 2: every cluster touched by one ML component becomes one cluster.

    The merged cluster keeps the label of its largest real (non-outlier) cluster, ties to the lowest
    label; outlier-only merges keep a temporary id that `_finalise` turns into a fresh one.
    """
    uniq, cluster = np.unique(work, return_inverse=True)
    cluster = cluster.reshape(-1)
    k = uniq.size
    edges = cluster[ml]
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(k, k))
    _, merged = connected_components(graph, directed=False)
    size = np.bincount(cluster, minlength=k)
    is_outlier = uniq >= first_fresh
    order = np.lexsort((uniq, -size, is_outlier, merged))
    first = np.ones(k, dtype=bool)
    first[1:] = merged[order][1:] != merged[order][:-1]
    representative = np.empty(merged.max() + 1, dtype=np.int64)
    representative[merged[order][first]] = uniq[order][first]
    return representative[merged[cluster]]


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, _EPS)


def _verify(work: np.ndarray, ml: np.ndarray, cl: np.ndarray) -> None:
    """Step 4: every enforced constraint holds (an internal error otherwise, never a silent pass)."""
    broken_ml = int(np.count_nonzero(work[ml[:, 0]] != work[ml[:, 1]])) if ml.shape[0] else 0
    broken_cl = int(np.count_nonzero(work[cl[:, 0]] == work[cl[:, 1]])) if cl.shape[0] else 0
    if broken_ml or broken_cl:  # pragma: no cover - would be a bug in the steps above
        raise RuntimeError(f"NP3 left {broken_ml} must-links and {broken_cl} cannot-links violated")


def _finalise(work: np.ndarray, first_fresh: int, first_new: int) -> np.ndarray:
    """Untouched outliers back to -1; every id above the input labels renumbered compactly."""
    out = work.copy()
    high = out >= first_fresh
    if not high.any():
        return out
    ids, first_seen, inverse, counts = np.unique(
        out[high], return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    lone_outlier = (ids < first_new) & (counts == 1)
    keep = ~lone_outlier
    rank = np.full(ids.size, -1, dtype=np.int64)
    kept_order = np.argsort(first_seen[keep], kind="stable")
    rank_keep = np.empty(kept_order.size, dtype=np.int64)
    rank_keep[kept_order] = np.arange(kept_order.size)
    rank[np.flatnonzero(keep)] = first_fresh + rank_keep
    out[high] = rank[inverse]
    return out
