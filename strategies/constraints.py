# Long on purpose: the constraint graph, its union-find index and the contradiction policies go together.
"""Pairwise constraints from human answers: must-link / cannot-link graph (ALGORITHMS.md §3).

Every constraint is keyed by the Label Studio annotation id that produced it, so an annotation update
replaces exactly one constraint and a deletion removes exactly one. Must-links form components
(union-find); a cannot-link between two points is a cannot-link between their components. The graph
answers "is this pair already implied?" in amortised near-constant time because samplers ask that
question for every candidate pair.
"""

from __future__ import annotations

import json
import operator
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from strategies.defaults import CONTRADICTION_POLICY

__all__ = [
    "CONTRADICTION_POLICIES",
    "JSON_SCHEMA",
    "JSON_VERSION",
    "Constraint",
    "ConstraintGraph",
    "ConstraintKind",
    "Contradiction",
    "EffectiveConstraints",
    "Relation",
    "must_link_components",
]

JSON_SCHEMA = "reid-al/constraints"
JSON_VERSION = 1
CONTRADICTION_POLICIES = ("ml_wins", "cl_wins", "latest_wins")

_KIND_ALIASES = {
    "must_link": "must_link",
    "must-link": "must_link",
    "mustlink": "must_link",
    "ml": "must_link",
    "same": "must_link",
    "cannot_link": "cannot_link",
    "cannot-link": "cannot_link",
    "cannotlink": "cannot_link",
    "cl": "cannot_link",
    "different": "cannot_link",
}


class ConstraintKind(str, Enum):
    """What a human answered about a pair."""

    MUST_LINK = "must_link"
    CANNOT_LINK = "cannot_link"

    @classmethod
    def parse(cls, kind: ConstraintKind | str) -> ConstraintKind:
        """Accept the enum or a spelling of it ("ML", "cannot-link", ...); anything else is an error."""
        if isinstance(kind, ConstraintKind):
            return kind
        if isinstance(kind, str):
            canonical = _KIND_ALIASES.get(kind.strip().lower())
            if canonical is not None:
                return cls(canonical)
        raise ValueError(f"kind: unknown constraint kind {kind!r} (expected 'must_link' or 'cannot_link')")


class Relation(str, Enum):
    """The answer the constraints already imply for a pair."""

    SAME = "same"
    DIFFERENT = "different"
    UNKNOWN = "unknown"


def _as_node(value: object, name: str) -> int:
    """A node id is a non-negative int (numpy ints accepted, bools and floats refused)."""
    if type(value) is int and value >= 0:  # the common case, kept cheap
        return value
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name}: node id must be an integer, got {value!r}")
    try:
        node = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}: node id must be an integer, got {value!r}") from None
    if node < 0:
        raise ValueError(f"{name}: node id must be non-negative, got {node}")
    return int(node)


def _as_pair(i: object, j: object) -> tuple[int, int]:
    a, b = _as_node(i, "i"), _as_node(j, "j")
    if a == b:
        raise ValueError(f"i, j: a pair needs two distinct nodes, got i == j == {a}")
    return (a, b) if a < b else (b, a)


def _as_annotation_id(annotation_id: object) -> str:
    """Label Studio ids are ints, our synthetic ones strings: both become the same str key."""
    if isinstance(annotation_id, bool | np.bool_) or not isinstance(annotation_id, str | int | np.integer):
        raise ValueError(f"annotation_id: expected str or int, got {type(annotation_id).__name__}")
    key = str(int(annotation_id)) if isinstance(annotation_id, int | np.integer) else annotation_id
    if not key:
        raise ValueError("annotation_id: must not be empty")
    return key


@dataclass(frozen=True)
class Constraint:
    """One human answer: pair (i, j) with i < j, normalised on construction."""

    annotation_id: str
    i: int
    j: int
    kind: ConstraintKind

    def __post_init__(self) -> None:
        a, b = _as_pair(self.i, self.j)
        object.__setattr__(self, "annotation_id", _as_annotation_id(self.annotation_id))
        object.__setattr__(self, "i", a)
        object.__setattr__(self, "j", b)
        object.__setattr__(self, "kind", ConstraintKind.parse(self.kind))

    @property
    def pair(self) -> tuple[int, int]:
        return (self.i, self.j)

    @property
    def is_must_link(self) -> bool:
        return self.kind is ConstraintKind.MUST_LINK


@dataclass(frozen=True)
class Contradiction:
    """A cannot-link inside one must-link component, with the must-links of a path joining its ends."""

    cannot_link: Constraint
    must_links: tuple[Constraint, ...]

    @property
    def annotation_ids(self) -> tuple[str, ...]:
        """The annotations a reviewer has to look at: the cannot-link first, then the path."""
        return (self.cannot_link.annotation_id, *(c.annotation_id for c in self.must_links))


@dataclass(frozen=True)
class EffectiveConstraints:
    """What refinement should enforce under a contradiction policy (consistent by construction)."""

    must_link: np.ndarray  # (m, 2) int64, unique pairs, i < j, first-seen order
    cannot_link: np.ndarray  # (c, 2) int64, unique pairs, i < j, first-seen order
    dropped: tuple[Constraint, ...] = field(default=())  # constraints the policy set aside
    contradictions: tuple[Contradiction, ...] = field(default=())  # as listed by contradictions()


@dataclass(frozen=True)
class _LookupTables:
    """Sorted arrays behind `ConstraintGraph.resolved_mask`."""

    node_keys: np.ndarray  # nodes of the union-find ...
    node_roots: np.ndarray  # ... and their roots
    handle_keys: np.ndarray  # roots with cannot-links ...
    handle_values: np.ndarray  # ... and their adjacency handles
    cannot_link_keys: np.ndarray  # (handle << 32 | handle) of cannot-linked components
    known_keys: np.ndarray  # (i << 32 | j) of asked or constrained pairs


class _LinkIndex:
    """Union-find over must-links plus cannot-link adjacency between components.

    Cannot-link adjacency is keyed by a per-component *handle* (a node id that travels with its
    component) so that merging two components rewires only the smaller adjacency set
    (small-to-large): union and the DIFFERENT test stay amortised near-constant time.
    """

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.handle: dict[int, int] = {}  # root -> handle of its cannot-link adjacency
        self.adj: dict[int, set[int]] = {}  # handle -> handles it has a cannot-link with

    def find(self, x: int) -> int:
        parent = self.parent
        if x not in parent:
            return x  # an implicit singleton
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def same(self, a: int, b: int) -> bool:
        return self.find(a) == self.find(b)

    def different(self, a: int, b: int) -> bool:
        """True when the components of a and b (distinct) are joined by a cannot-link."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        ha, hb = self.handle.get(ra), self.handle.get(rb)
        return ha is not None and hb is not None and hb in self.adj[ha]

    def union(self, a: int, b: int) -> bool:
        """Merge the components of a and b; False when they were already one."""
        for x in (a, b):
            if x not in self.parent:
                self.parent[x] = x
                self.size[x] = 1
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size.pop(rb)
        ha, hb = self.handle.pop(ra, None), self.handle.pop(rb, None)
        if ha is None or hb is None:
            survivor = ha if hb is None else hb
            if survivor is not None:
                self.handle[ra] = survivor
            return True
        adj_a, adj_b = self.adj[ha], self.adj[hb]
        if len(adj_a) < len(adj_b):
            ha, hb, adj_a, adj_b = hb, ha, adj_b, adj_a
        del self.adj[hb]
        if hb in adj_a:  # a cannot-link between the two merged components: now a self-loop
            adj_a.discard(hb)
            adj_a.add(ha)
        for x in adj_b:
            if x in (ha, hb):
                adj_a.add(ha)
                continue
            neighbours = self.adj[x]
            neighbours.discard(hb)
            neighbours.add(ha)
            adj_a.add(x)
        self.handle[ra] = ha
        return True

    def add_cannot_link(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        ha = self.handle.setdefault(ra, ra)
        hb = self.handle.setdefault(rb, rb)
        self.adj.setdefault(ha, set()).add(hb)
        self.adj.setdefault(hb, set()).add(ha)


class ConstraintGraph:
    """Must-link / cannot-link constraints keyed by annotation id, plus the set of pairs already asked.

    Node ids are non-negative row indices, unbounded (the pool may grow). Several annotations may
    cover one pair (two annotators); all are kept, and an ML and a CL on one pair is a contradiction
    that `contradictions()` reports rather than a silent overwrite.
    """

    def __init__(self) -> None:
        self._constraints: dict[str, Constraint] = {}  # insertion order = age (oldest first)
        self._asked: dict[tuple[int, int], None] = {}  # ordered set
        self._pair_count: dict[tuple[int, int], int] = {}
        self._index = _LinkIndex()
        self._dirty = False  # a removal invalidated the union-find; rebuilt on the next query
        self._tables: _LookupTables | None = None  # resolved_mask's arrays, dropped on every edit

    # ------------------------------------------------------------------ editing
    def add(self, annotation_id: str | int, i: int, j: int, kind: ConstraintKind | str) -> Constraint:
        """Record one answer; an existing annotation id is replaced (and becomes the newest).

        Re-adding an identical constraint under the same id is a no-op (webhook retries are common).
        """
        constraint = Constraint(annotation_id, i, j, kind)  # validates every argument
        key = constraint.annotation_id
        old = self._constraints.get(key)
        if old is not None:
            if old == constraint:
                return old
            self.remove(key)
        self._constraints[key] = constraint
        self._pair_count[constraint.pair] = self._pair_count.get(constraint.pair, 0) + 1
        self._tables = None
        if not self._dirty:
            self._apply(constraint, self._index)
        return constraint

    def replace(self, annotation_id: str | int, i: int, j: int, kind: ConstraintKind | str) -> Constraint:
        """Alias of `add`, named for the webhook's "annotation updated" event."""
        return self.add(annotation_id, i, j, kind)

    def remove(self, annotation_id: str | int) -> bool:
        """Drop the constraint of one annotation; False when the id is unknown."""
        constraint = self._constraints.pop(_as_annotation_id(annotation_id), None)
        if constraint is None:
            return False
        count = self._pair_count[constraint.pair] - 1
        if count:
            self._pair_count[constraint.pair] = count
        else:
            del self._pair_count[constraint.pair]
        self._dirty = True
        self._tables = None
        return True

    def mark_asked(self, i: int, j: int) -> None:
        """A pair served to a human (pending, skipped or "unsure"): never propose it again."""
        pair = _as_pair(i, j)
        if pair not in self._asked:
            self._asked[pair] = None
            self._tables = None

    # ------------------------------------------------------------------ queries
    def get(self, annotation_id: str | int) -> Constraint | None:
        return self._constraints.get(_as_annotation_id(annotation_id))

    def __contains__(self, annotation_id: object) -> bool:
        try:
            return _as_annotation_id(annotation_id) in self._constraints
        except ValueError:
            return False

    def __len__(self) -> int:
        return len(self._constraints)

    def __iter__(self) -> Iterator[Constraint]:
        return iter(list(self._constraints.values()))

    def was_asked(self, i: int, j: int) -> bool:
        """Asked (served) or constrained."""
        pair = _as_pair(i, j)
        return pair in self._asked or pair in self._pair_count

    def asked_pairs(self) -> list[tuple[int, int]]:
        """Pairs passed to `mark_asked`, in order."""
        return list(self._asked)

    def relation(self, i: int, j: int) -> Relation:
        """Implied answer: SAME inside one ML component, DIFFERENT across a CL, else UNKNOWN.

        A CL inside one ML component (a contradiction) never yields DIFFERENT: the pair is SAME, as
        under the default `ml_wins` policy.
        """
        a, b = _as_pair(i, j)
        index = self._fresh_index()
        if index.same(a, b):
            return Relation.SAME
        if index.different(a, b):
            return Relation.DIFFERENT
        return Relation.UNKNOWN

    def is_resolved(self, i: int, j: int) -> bool:
        """What samplers must exclude: asked, constrained, or implied."""
        return self.was_asked(i, j) or self.relation(i, j) is not Relation.UNKNOWN

    def resolved_mask(self, pairs: np.ndarray | Iterable[tuple[int, int]]) -> np.ndarray:
        """Vectorised `is_resolved` over an (k, 2) array of pairs (any order within a pair).

        The lookup tables are built once per state of the graph and reused until the next edit, so
        a sampler can check a long candidate list chunk by chunk cheaply.
        """
        arr = _as_pair_array(pairs, "pairs")
        if arr.shape[0] == 0:
            return np.zeros(0, dtype=bool)
        if np.any(arr[:, 0] == arr[:, 1]):
            raise ValueError("pairs: a pair needs two distinct nodes (found i == j)")
        arr = np.sort(arr, axis=1)
        snap = self._lookup_tables()
        roots = _lookup(snap.node_keys, snap.node_roots, arr, default=arr)
        resolved = roots[:, 0] == roots[:, 1]
        handles = _lookup(snap.handle_keys, snap.handle_values, roots, default=np.full_like(roots, -1))
        has = (handles[:, 0] >= 0) & (handles[:, 1] >= 0)
        if snap.cannot_link_keys.size and has.any():
            query = _key_array(handles[has, 0], handles[has, 1])
            resolved[np.flatnonzero(has)[_contains(snap.cannot_link_keys, query)]] = True
        if snap.known_keys.size:
            resolved |= _contains(snap.known_keys, _key_array(arr[:, 0], arr[:, 1]))
        return resolved

    def component_labels(self, n: int) -> np.ndarray:
        """ML component id per row 0..n-1, numbered 0..k-1 in order of each component's first row."""
        n = _as_node(n, "n")
        ml = self._pairs(ConstraintKind.MUST_LINK)
        if ml.size and int(ml.max()) >= n:
            raise ValueError(f"n: constraints reference row {int(ml.max())} but n={n}")
        return must_link_components(ml, n)

    def must_links(self) -> list[Constraint]:
        return [c for c in self._constraints.values() if c.kind is ConstraintKind.MUST_LINK]

    def cannot_links(self) -> list[Constraint]:
        return [c for c in self._constraints.values() if c.kind is ConstraintKind.CANNOT_LINK]

    def max_node(self) -> int:
        """Largest row any constraint mentions (-1 when empty): callers check it against n."""
        return max((c.j for c in self._constraints.values()), default=-1)

    def contradictions(self) -> list[Contradiction]:
        """Every CL inside one ML component, with the ML annotations of a shortest path joining its ends."""
        index = self._fresh_index()
        bad = [c for c in self.cannot_links() if index.same(c.i, c.j)]
        if not bad:
            return []
        adjacency = _ml_adjacency(self.must_links())
        out = []
        for cl in bad:
            path = _bfs_path(adjacency, cl.i, cl.j)
            if path is None:  # pragma: no cover - the union-find and the adjacency disagree
                raise RuntimeError(f"internal error: no must-link path for {cl}")
            out.append(Contradiction(cl, tuple(adjacency[u][v][0] for u, v in path)))
        return out

    def effective(
        self,
        policy: str = CONTRADICTION_POLICY,
        similarity: Callable[[int, int], float] | None = None,
    ) -> EffectiveConstraints:
        """The ML and CL pairs refinement should enforce, made consistent by a contradiction policy.

        - ``ml_wins``: drop every cannot-link that falls inside an ML component;
        - ``cl_wins``: for each contradictory CL, cut the weakest ML edge on a path joining its ends
          (lowest ``similarity(i, j)``; without a similarity, the most recently added edge) until the
          ends are apart; every annotation on a cut edge is dropped;
        - ``latest_wins``: newest first, keep a constraint unless it conflicts with newer kept ones.
        """
        if policy not in CONTRADICTION_POLICIES:
            raise ValueError(
                f"policy: unknown contradiction policy {policy!r}; one of {CONTRADICTION_POLICIES}"
            )
        if similarity is not None and not callable(similarity):
            raise ValueError("similarity: must be a callable (i, j) -> float or None")
        contradictions = tuple(self.contradictions())
        if not contradictions:
            kept: list[Constraint] = list(self._constraints.values())
            dropped: list[Constraint] = []
        elif policy == "ml_wins":
            dropped_ids = {c.cannot_link.annotation_id for c in contradictions}
            kept = [c for c in self._constraints.values() if c.annotation_id not in dropped_ids]
            dropped = [c for c in self._constraints.values() if c.annotation_id in dropped_ids]
        elif policy == "cl_wins":
            kept, dropped = self._cl_wins(contradictions, similarity)
        else:
            kept, dropped = self._latest_wins()
        ml = _unique_pairs([c.pair for c in kept if c.kind is ConstraintKind.MUST_LINK])
        cl = _unique_pairs([c.pair for c in kept if c.kind is ConstraintKind.CANNOT_LINK])
        return EffectiveConstraints(ml, cl, tuple(dropped), contradictions)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> str:
        """Versioned, order-preserving serialisation (constraints oldest first, then asked pairs)."""
        doc = {
            "schema": JSON_SCHEMA,
            "version": JSON_VERSION,
            "constraints": [
                {"annotation_id": c.annotation_id, "i": c.i, "j": c.j, "kind": c.kind.value}
                for c in self._constraints.values()
            ],
            "asked": [list(p) for p in self._asked],
        }
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str | bytes) -> ConstraintGraph:
        try:
            doc = json.loads(s)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"s: not a JSON document ({exc})") from None
        if not isinstance(doc, dict) or doc.get("schema") != JSON_SCHEMA:
            raise ValueError(f"s: not a {JSON_SCHEMA} document")
        if doc.get("version") != JSON_VERSION:
            raise ValueError(
                f"s: unsupported {JSON_SCHEMA} version {doc.get('version')!r} (expected {JSON_VERSION})"
            )
        graph = cls()
        try:
            for item in doc["constraints"]:
                graph.add(item["annotation_id"], item["i"], item["j"], item["kind"])
            for i, j in doc["asked"]:
                graph.mark_asked(i, j)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"s: malformed {JSON_SCHEMA} document ({exc!r})") from None
        if len(graph) != len(doc["constraints"]):
            raise ValueError("s: duplicate annotation ids in constraints")
        return graph

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConstraintGraph):
            return NotImplemented
        return list(self._constraints.values()) == list(other._constraints.values()) and list(
            self._asked
        ) == list(other._asked)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        n_ml = sum(c.kind is ConstraintKind.MUST_LINK for c in self._constraints.values())
        n_cl, n_asked = len(self) - n_ml, len(self._asked)
        return f"ConstraintGraph(must_links={n_ml}, cannot_links={n_cl}, asked={n_asked})"

    # ------------------------------------------------------------------ internals
    def _lookup_tables(self) -> _LookupTables:
        if self._tables is None:
            index = self._fresh_index()
            node_keys = np.fromiter(index.parent.keys(), dtype=np.int64, count=len(index.parent))
            node_roots = np.fromiter(
                (index.find(int(k)) for k in node_keys), dtype=np.int64, count=len(node_keys)
            )
            handle_keys = np.fromiter(index.handle.keys(), dtype=np.int64, count=len(index.handle))
            handle_values = np.fromiter(index.handle.values(), dtype=np.int64, count=len(index.handle))
            cannot_link_keys = np.array(
                [_key(a, b) for a, nbrs in index.adj.items() for b in nbrs if a != b], dtype=np.int64
            )
            known = list(self._asked) + list(self._pair_count)
            known_keys = (
                _key_array(*np.asarray(known, dtype=np.int64).T) if known else np.zeros(0, dtype=np.int64)
            )
            o1, o2 = np.argsort(node_keys), np.argsort(handle_keys)
            self._tables = _LookupTables(
                node_keys[o1],
                node_roots[o1],
                handle_keys[o2],
                handle_values[o2],
                np.unique(cannot_link_keys),
                np.unique(known_keys),
            )
        return self._tables

    @staticmethod
    def _apply(constraint: Constraint, index: _LinkIndex) -> None:
        if constraint.kind is ConstraintKind.MUST_LINK:
            index.union(constraint.i, constraint.j)
        else:
            index.add_cannot_link(constraint.i, constraint.j)

    def _fresh_index(self) -> _LinkIndex:
        if self._dirty:
            index = _LinkIndex()
            for c in self._constraints.values():
                if c.kind is ConstraintKind.MUST_LINK:
                    index.union(c.i, c.j)
            for c in self._constraints.values():
                if c.kind is ConstraintKind.CANNOT_LINK:
                    index.add_cannot_link(c.i, c.j)
            self._index = index
            self._dirty = False
        return self._index

    def _pairs(self, kind: ConstraintKind) -> np.ndarray:
        pairs = [c.pair for c in self._constraints.values() if c.kind is kind]
        return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def _cl_wins(
        self, contradictions: tuple[Contradiction, ...], similarity: Callable[[int, int], float] | None
    ) -> tuple[list[Constraint], list[Constraint]]:
        age = {key: k for k, key in enumerate(self._constraints)}
        adjacency = _ml_adjacency(self.must_links())
        cut: set[tuple[int, int]] = set()
        for contradiction in contradictions:
            cl = contradiction.cannot_link
            while (path := _bfs_path(adjacency, cl.i, cl.j)) is not None:

                def newest(edge: tuple[int, int]) -> int:
                    return max(age[c.annotation_id] for c in adjacency[edge[0]][edge[1]])

                if similarity is None:
                    u, v = max(path, key=newest)
                else:
                    # weakest edge; ties go to the most recent one
                    u, v = min(path, key=lambda e: (float(similarity(*sorted(e))), -newest(e)))
                del adjacency[u][v]
                del adjacency[v][u]
                cut.add((min(u, v), max(u, v)))
        kept, dropped = [], []
        for c in self._constraints.values():
            (dropped if c.kind is ConstraintKind.MUST_LINK and c.pair in cut else kept).append(c)
        return kept, dropped

    def _latest_wins(self) -> tuple[list[Constraint], list[Constraint]]:
        index = _LinkIndex()
        keep_ids: set[str] = set()
        for c in reversed(self._constraints.values()):
            if c.kind is ConstraintKind.MUST_LINK:
                if index.different(c.i, c.j):
                    continue
                index.union(c.i, c.j)
            else:
                if index.same(c.i, c.j):
                    continue
                index.add_cannot_link(c.i, c.j)
            keep_ids.add(c.annotation_id)
        kept = [c for c in self._constraints.values() if c.annotation_id in keep_ids]
        dropped = [c for c in self._constraints.values() if c.annotation_id not in keep_ids]
        return kept, dropped


# ---------------------------------------------------------------------- helpers (module private)
def _key(a: int, b: int) -> int:
    return (a << 32) | b


def _key_array(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if (a.size and int(a.max()) >= 1 << 31) or (b.size and int(b.max()) >= 1 << 31):
        raise ValueError("pairs: node ids above 2**31 are not supported by the vectorised path")
    return (a << 32) | b


def _as_pair_array(pairs: np.ndarray | Iterable[tuple[int, int]], name: str) -> np.ndarray:
    arr = np.asarray(pairs if isinstance(pairs, np.ndarray) else list(pairs))
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name}: expected an array of shape (k, 2), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: node ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        raise ValueError(f"{name}: node ids must be non-negative")
    return arr


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray, default: np.ndarray) -> np.ndarray:
    """values[k] where keys[k] == query (keys sorted), else default."""
    out = default.copy()
    if keys.size == 0:
        return out
    pos = np.clip(np.searchsorted(keys, query), 0, keys.size - 1)
    found = keys[pos] == query
    out[found] = values[pos[found]]
    return out


def _contains(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    pos = np.clip(np.searchsorted(sorted_keys, query), 0, sorted_keys.size - 1)
    return sorted_keys[pos] == query


def must_link_components(pairs: np.ndarray, n: int) -> np.ndarray:
    """Connected-component id per row 0..n-1 of the graph whose edges are ``pairs`` (``(m, 2)`` row
    indices), numbered 0..k-1 in order of each component's first row; a row in no pair is its own one."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if pairs.size == 0:
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # renumber by first row so the ids do not depend on scipy's traversal order
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _unique_pairs(pairs: list[tuple[int, int]]) -> np.ndarray:
    return np.asarray(list(dict.fromkeys(pairs)), dtype=np.int64).reshape(-1, 2)


def _ml_adjacency(must_links: list[Constraint]) -> dict[int, dict[int, list[Constraint]]]:
    adjacency: dict[int, dict[int, list[Constraint]]] = {}
    for c in must_links:
        adjacency.setdefault(c.i, {}).setdefault(c.j, []).append(c)
        adjacency.setdefault(c.j, {}).setdefault(c.i, adjacency[c.i][c.j])
    return adjacency


def _bfs_path(
    adjacency: dict[int, dict[int, list[Constraint]]], start: int, goal: int
) -> list[tuple[int, int]] | None:
    """Edges of a shortest path start -> goal (ties: lowest-id neighbours first), None if apart."""
    previous: dict[int, int] = {start: start}
    queue = deque([start])
    while queue:
        u = queue.popleft()
        if u == goal:
            break
        for v in sorted(adjacency.get(u, {})):
            if v not in previous:
                previous[v] = u
                queue.append(v)
    if goal not in previous:
        return None
    path = []
    v = goal
    while v != start:
        u = previous[v]
        path.append((u, v))
        v = u
    path.reverse()
    return path
