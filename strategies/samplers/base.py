"""The one interface every pair sampler implements, and the registry that picks one by name.

A sampler turns a PairPool (embeddings + the constraint graph + side information, checked once) into
ranked pair proposals. The contract (docs/architecture.md) is the same for every strategy so the
backend can switch by name:

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from strategies.samplers.numeric import pair_similarity, predict_p_same
from strategies.samplers.pool import EmptyPoolError, PairPool, PoolExhaustedError
from strategies.validation import InvalidParameterError

if TYPE_CHECKING:
    from strategies.view import ClusteringView

__all__ = [
    "EmptyPoolError",
    "PairProposal",
    "PairSampler",
    "PoolExhaustedError",
    "SamplingResult",
    "available_samplers",
    "make_sampler",
    "register_sampler",
]


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
    """Base class: ``select`` checks the inputs once (PairPool.build); subclasses implement ``_propose``."""

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
        constraints: Any,
        budget: int,
        *,
        cameras: np.ndarray | None = None,
        tracklets: np.ndarray | None = None,
        text_embeddings: np.ndarray | None = None,
        timestamps: np.ndarray | None = None,
        view: ClusteringView | None = None,
    ) -> SamplingResult:
        """Return up to ``budget`` ranked proposals (best first).

        ``view``: the clustering of ``embeddings`` under these ``constraints``, already computed by the
        caller (the retraining cycle passes its own); without one, the sampler builds what it needs,
        seeded with its random_state.
        ``timestamps`` (per image, seconds) feed the uncertainty sampler's (camera, time segment) cap.
        """
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
            raise InvalidParameterError(f"budget must be an int, got {type(budget).__name__}")
        if budget < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        pool = PairPool.build(
            embeddings,
            constraints,
            cameras=cameras,
            tracklets=tracklets,
            text_embeddings=text_embeddings,
            timestamps=timestamps,
            view=view,
            random_state=getattr(self, "random_state", 0),
        )
        return self._propose(pool, int(budget))

    @abstractmethod
    def _propose(self, pool: PairPool, budget: int) -> SamplingResult:
        """Strategy-specific work on a checked pool."""

    # ------------------------------------------------------------------ building the result
    def _proposals(
        self,
        pool: PairPool,
        pairs: list[tuple[int, int]],
        priorities: np.ndarray,
        pools: list[str],
        reasons: list[str],
        *,
        p_same: np.ndarray | None = None,
    ) -> list[PairProposal]:
        """Proposals ranked by priority (desc), ties in the given order, with calibrated P(same)."""
        if not pairs:
            return []
        ii = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        jj = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))
        if p_same is None:
            p_same = predict_p_same(pool.view.calibrator, pair_similarity(pool.features, ii, jj))
        pr = np.clip(np.asarray(priorities, dtype=np.float64), 0.0, 1.0)
        order = np.argsort(-pr, kind="stable")  # equal priority: the caller's order (e.g. identity rank)
        return [
            PairProposal(
                i=int(ii[t]),
                j=int(jj[t]),
                priority=float(pr[t]),
                p_same=float(p_same[t]),
                strategy=self.name,
                pool=pools[t],
                reason=reasons[t],
            )
            for t in order
        ]

    def _result(
        self, proposals: list[PairProposal], budget: int, pool_sizes: dict[str, int]
    ) -> SamplingResult:
        """The result; zero proposals from a non-empty candidate set is exhaustion."""
        if not proposals:
            raise PoolExhaustedError(
                f"{self.name}: every candidate pair is already asked or implied by the constraints "
                f"(pool sizes {pool_sizes})"
            )
        return SamplingResult(
            proposals=proposals, shortfall=max(0, budget - len(proposals)), pool_sizes=pool_sizes
        )
