"""The one interface every pair sampler implements, plus the helpers they share.

A sampler turns embeddings + the constraint graph into ranked pair proposals. The contract (see
docs/architecture.md) is the same for every strategy so the backend can switch by name:

* a proposal is never ``(i, i)``, never a duplicate, never a pair already asked and never a pair
  whose answer the constraints already imply (``ConstraintGraph.is_resolved``);
* never more proposals than ``budget``; fewer is reported as ``SamplingResult.shortfall``;
* ``EmptyPoolError`` means the input cannot hold a pair at all (fewer than 2 items);
  ``PoolExhaustedError`` means the strategy had candidates but every one is already asked or implied
  ("nothing left to ask"); an empty result without an exception (AAS with no region of uncertainty)
  means "nothing informative this cycle, rely on base training";
* candidate pairs come from the kNN graph or cluster structure, never from all n² pairs.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy.sparse import csr_matrix

from strategies import defaults

if TYPE_CHECKING:
    from strategies.calibration import PSameCalibrator
    from strategies.clustering import FinchResult
    from strategies.constraints import ConstraintGraph
    from strategies.knn import KnnGraph

__all__ = [
    "EmptyPoolError",
    "PairProposal",
    "PairSampler",
    "PoolExhaustedError",
    "SamplingContext",
    "SamplingResult",
    "available_samplers",
    "complete_context",
    "labelled_pairs",
    "make_sampler",
    "register_sampler",
]

# take_unresolved checks pair by pair (no vectorised query) when at most this many are wanted.
SCALAR_TAKE_MAX = 8

# Rows per block when a dense (block x m) similarity matrix is needed: keeps the transient memory of
# blocked products near BLOCK_ELEMENTS floats whatever n is.
BLOCK_ELEMENTS = 4_000_000


class EmptyPoolError(ValueError):
    """The input cannot form a single pair (no embeddings, or fewer than 2 items)."""


class PoolExhaustedError(RuntimeError):
    """Every candidate pair of the strategy is already asked or implied by the constraints."""


@dataclass(frozen=True)
class PairProposal:
    """One pair to show an annotator; ``priority`` in [0, 1], higher = more informative."""

    i: int
    j: int
    priority: float
    p_same: float
    strategy: str
    pool: str
    reason: str

    def __post_init__(self) -> None:
        if not self.i < self.j:
            raise ValueError(f"PairProposal needs i < j, got i={self.i}, j={self.j}")
        if not 0.0 <= self.priority <= 1.0:
            raise ValueError(f"PairProposal priority must be in [0, 1], got {self.priority}")
        if not 0.0 <= self.p_same <= 1.0:
            raise ValueError(f"PairProposal p_same must be in [0, 1], got {self.p_same}")


@dataclass
class SamplingResult:
    """Ranked proposals (best first), how many short of the budget, and the size of each pool."""

    proposals: list[PairProposal]
    shortfall: int
    pool_sizes: dict[str, int] = field(default_factory=dict)

    def pairs(self) -> list[tuple[int, int]]:
        return [(p.i, p.j) for p in self.proposals]


@dataclass
class SamplingContext:
    """Optional precomputed inputs so the backend and benchmarks compute them once per cycle."""

    knn: KnnGraph | None = None
    jaccard: csr_matrix | None = None
    dbscan_labels: np.ndarray | None = None
    finch: FinchResult | None = None
    calibrator: PSameCalibrator | None = None


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[PairSampler]] = {}


def register_sampler(cls: type[PairSampler]) -> type[PairSampler]:
    """Class decorator: make ``cls`` choosable by its ``name`` through ``make_sampler``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute 'name' to be registered")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"a sampler named {name!r} is already registered ({_REGISTRY[name].__name__})")
    _REGISTRY[name] = cls
    return cls


def available_samplers() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_REGISTRY)


def make_sampler(name: str, **params: Any) -> PairSampler:
    """Build the sampler registered as ``name`` with constructor ``params``."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown sampler name {name!r}; available: {available_samplers()}") from None
    return cls(**params)


# --------------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------------


class PairSampler(ABC):
    """Base class: validates inputs, builds the result; subclasses implement ``_propose``."""

    name: ClassVar[str]

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters, scikit-learn style (used by repr and by tests of determinism)."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def select(
        self,
        embeddings: np.ndarray,
        constraints: ConstraintGraph,
        budget: int,
        *,
        cameras: np.ndarray | None = None,
        tracklets: np.ndarray | None = None,
        text_embeddings: np.ndarray | None = None,
        context: SamplingContext | None = None,
        timestamps: np.ndarray | None = None,
    ) -> SamplingResult:
        """Return up to ``budget`` ranked proposals (best first).

        ``timestamps`` (per image, seconds) is an optional extension of the documented signature: only
        the uncertainty sampler uses it, for its one-pick-per-(camera, time segment) cap.
        """
        features = check_embeddings(embeddings)
        n = features.shape[0]
        budget = check_budget(budget)
        check_constraints(constraints, n)
        cameras = _check_per_item(cameras, n, "cameras")
        tracklets = _check_per_item(tracklets, n, "tracklets")
        timestamps = _check_per_item(timestamps, n, "timestamps")
        if timestamps is not None:
            try:
                timestamps = np.asarray(timestamps, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError("timestamps must be numbers (seconds), one per embedding") from None
            if not np.isfinite(timestamps).all():
                raise ValueError("timestamps contains NaN or infinite values")
        if text_embeddings is not None:
            text_embeddings = check_embeddings(text_embeddings, name="text_embeddings", allow_zero_rows=True)
            if text_embeddings.shape[0] != n:
                raise ValueError(
                    f"text_embeddings has {text_embeddings.shape[0]} rows but embeddings has {n}"
                )
        if context is not None and not isinstance(context, SamplingContext):
            raise TypeError(f"context must be a SamplingContext or None, got {type(context).__name__}")
        context = check_context(context, n)
        return self._propose(
            features,
            constraints,
            budget,
            cameras=cameras,
            tracklets=tracklets,
            text_embeddings=text_embeddings,
            timestamps=timestamps,
            context=context,
        )

    @abstractmethod
    def _propose(
        self,
        features: np.ndarray,
        constraints: ConstraintGraph,
        budget: int,
        *,
        cameras: np.ndarray | None,
        tracklets: np.ndarray | None,
        text_embeddings: np.ndarray | None,
        timestamps: np.ndarray | None,
        context: SamplingContext,
    ) -> SamplingResult:
        """Strategy-specific work on validated inputs."""


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------


def check_embeddings(
    embeddings: np.ndarray, *, name: str = "embeddings", allow_zero_rows: bool = False
) -> np.ndarray:
    """Validated float32 array with unit rows (the contract promises L2-normalised input; rows that are
    not are normalised into a new array, the caller's is never modified)."""
    if embeddings is None:
        raise EmptyPoolError(f"{name} is None")
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {x.shape}")
    if x.shape[0] < 2 and name == "embeddings":
        raise EmptyPoolError(f"{name} has {x.shape[0]} rows; a pair needs at least 2 items")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero columns")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)  # no copy when already float32: samplers never write it
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    zero = norms <= 1e-12
    if zero.any() and not allow_zero_rows:
        raise ValueError(f"{name} has {int(zero.sum())} all-zero rows; cannot L2-normalise them")
    norms[zero] = 1.0
    if not np.allclose(norms, 1.0, atol=1e-3):
        x = x / norms[:, None]
    return x


def check_budget(budget: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise TypeError(f"budget must be an int, got {type(budget).__name__}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    return int(budget)


def check_constraints(constraints: object, n: int | None = None) -> None:
    needed = ("is_resolved", "component_labels", "must_links", "cannot_links")
    missing = [m for m in needed if not hasattr(constraints, m)]
    if missing:
        raise TypeError(
            f"constraints must be a ConstraintGraph (missing {missing}), got {type(constraints).__name__}"
        )
    if n is not None and hasattr(constraints, "max_node") and constraints.max_node() >= n:
        raise ValueError(
            f"constraints reference row {constraints.max_node()} but embeddings has only {n} rows"
        )


def _check_per_item(values: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array with one entry per embedding ({n}), got {arr.shape}")
    return arr


def check_context(context: SamplingContext | None, n: int) -> SamplingContext:
    """Copy of ``context`` (never mutated) after checking each precomputed input matches ``n``."""
    ctx = SamplingContext() if context is None else replace(context)
    if ctx.knn is not None:
        idx = np.asarray(ctx.knn.indices)
        if idx.ndim != 2 or idx.shape[0] != n:
            raise ValueError(f"context.knn.indices must have shape ({n}, k), got {idx.shape}")
    if ctx.jaccard is not None and ctx.jaccard.shape != (n, n):
        raise ValueError(f"context.jaccard must have shape ({n}, {n}), got {ctx.jaccard.shape}")
    if ctx.dbscan_labels is not None:
        lab = np.asarray(ctx.dbscan_labels)
        if lab.shape != (n,):
            raise ValueError(f"context.dbscan_labels must have shape ({n},), got {lab.shape}")
    if ctx.finch is not None:
        for level, part in enumerate(ctx.finch.partitions):
            if np.asarray(part).shape != (n,):
                raise ValueError(f"context.finch.partitions[{level}] must have shape ({n},)")
    return ctx


# --------------------------------------------------------------------------------------------------
# context completion: compute what the caller did not precompute
# --------------------------------------------------------------------------------------------------


def complete_context(
    features: np.ndarray,
    constraints: ConstraintGraph,
    context: SamplingContext | None = None,
    *,
    need: Iterable[str] = ("knn", "jaccard", "dbscan_labels", "finch", "calibrator"),
    random_state: int | None = 0,
) -> SamplingContext:
    """Return a copy of ``context`` with every field in ``need`` filled (kNN, Jaccard, DBSCAN, FINCH,
    calibrator), computed with the defaults of strategies/defaults.py, so a caller can pass only
    embeddings and constraints, or precompute once and reuse across strategies."""
    n = features.shape[0]
    ctx = check_context(context, n)
    need = set(need)
    unknown = need - {"knn", "jaccard", "dbscan_labels", "finch", "calibrator"}
    if unknown:
        raise ValueError(f"need has unknown fields {sorted(unknown)}")
    seed = 0 if random_state is None else int(random_state)
    need_jaccard = ctx.jaccard is None and (
        "jaccard" in need or ("dbscan_labels" in need and ctx.dbscan_labels is None)
    )
    if ("knn" in need or need_jaccard) and ctx.knn is None:
        from strategies.knn import build_knn

        ctx.knn = build_knn(features, min(defaults.KNN_K, n), random_state=seed)
    if need_jaccard:
        from strategies.jaccard import jaccard_distance

        k1 = min(defaults.K1, n - 1)
        k2 = max(1, min(defaults.K2, k1))
        knn = ctx.knn if ctx.knn is not None and np.asarray(ctx.knn.indices).shape[1] >= k1 else None
        ctx.jaccard = jaccard_distance(features, k1=k1, k2=k2, knn=knn)
    if "dbscan_labels" in need and ctx.dbscan_labels is None:
        from strategies.clustering import DBSCANClusterer

        ctx.dbscan_labels = np.asarray(
            DBSCANClusterer(defaults.DBSCAN_EPS, defaults.DBSCAN_MIN_SAMPLES).fit_predict(ctx.jaccard)
        )
    if "finch" in need and ctx.finch is None:
        from strategies.clustering import FINCH

        knn = ctx.knn if ctx.knn is not None and np.asarray(ctx.knn.indices).shape[1] >= 2 else None
        ctx.finch = FINCH(random_state=seed).fit(features, knn=knn)
    if "calibrator" in need and ctx.calibrator is None:
        ctx.calibrator = fit_calibrator(features, constraints)
    return ctx


def labelled_pairs(constraints: ConstraintGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, same) arrays of every human answer in the graph (ML -> same=1, CL -> same=0)."""
    ii: list[int] = []
    jj: list[int] = []
    same: list[int] = []
    for flag, items in ((1, constraints.must_links()), (0, constraints.cannot_links())):
        for c in items:
            ii.append(int(c.i))
            jj.append(int(c.j))
            same.append(flag)
    return np.asarray(ii, dtype=np.int64), np.asarray(jj, dtype=np.int64), np.asarray(same, dtype=np.int64)


def labelled_items(constraints: ConstraintGraph, n: int) -> np.ndarray:
    """Boolean mask of the rows that appear in at least one human answer."""
    ii, jj, _ = labelled_pairs(constraints)
    mask = np.zeros(n, dtype=bool)
    ends = np.concatenate([ii, jj])
    ends = ends[(ends >= 0) & (ends < n)]
    mask[ends] = True
    return mask


def fit_calibrator(features: np.ndarray, constraints: ConstraintGraph) -> PSameCalibrator:
    """P(same) calibrator fit on the cosine similarities of the graph's labelled pairs."""
    from strategies.calibration import PSameCalibrator

    ii, jj, same = labelled_pairs(constraints)
    n = features.shape[0]
    ok = (ii < n) & (jj < n)
    ii, jj, same = ii[ok], jj[ok], same[ok]
    sims = pair_similarity(features, ii, jj).astype(np.float64)
    return PSameCalibrator(min_labels=defaults.CALIBRATION_MIN_LABELS).fit(sims, same)


# --------------------------------------------------------------------------------------------------
# numeric helpers
# --------------------------------------------------------------------------------------------------


def rng_from(random_state: int | None) -> np.random.Generator:
    if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, int)):
        raise TypeError(f"random_state must be an int or None, got {type(random_state).__name__}")
    return np.random.default_rng(random_state)


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


def make_proposals(
    pairs: list[tuple[int, int]],
    priorities: np.ndarray,
    pools: list[str],
    reasons: list[str],
    *,
    strategy: str,
    features: np.ndarray,
    calibrator: PSameCalibrator,
    p_same: np.ndarray | None = None,
) -> list[PairProposal]:
    """Proposals ranked by priority (desc), ties in the given order, with calibrated P(same)."""
    if not pairs:
        return []
    ii = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
    jj = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))
    if p_same is None:
        p_same = predict_p_same(calibrator, pair_similarity(features, ii, jj))
    pr = np.clip(np.asarray(priorities, dtype=np.float64), 0.0, 1.0)
    order = np.argsort(-pr, kind="stable")  # equal priority: the caller's order (e.g. identity rank)
    return [
        PairProposal(
            i=int(ii[t]),
            j=int(jj[t]),
            priority=float(pr[t]),
            p_same=float(p_same[t]),
            strategy=strategy,
            pool=pools[t],
            reason=reasons[t],
        )
        for t in order
    ]


def finish(
    proposals: list[PairProposal], budget: int, pool_sizes: dict[str, int], *, what: str
) -> SamplingResult:
    """Build the result; zero proposals from a non-empty candidate set is exhaustion."""
    if not proposals:
        raise PoolExhaustedError(
            f"{what}: every candidate pair is already asked or implied by the constraints "
            f"(pool sizes {pool_sizes})"
        )
    return SamplingResult(
        proposals=proposals, shortfall=max(0, budget - len(proposals)), pool_sizes=pool_sizes
    )
