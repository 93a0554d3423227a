"""What a sampler reads about the items, checked once: the pool of candidate pairs (small-text's Dataset).

``PairPool.build`` is the samplers' public boundary: every array is validated there, so a sampler's
``_propose(pool, budget)`` works on trusted data and never restates the list of per-item inputs. A new
per-item input is one more field here; a new derived piece (computed once per embedding) belongs on
the pool's ``view`` (strategies.view.ClusteringView).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from strategies.constraints import ConstraintGraph
from strategies.validation import check_features, check_per_item
from strategies.view import ClusteringView

__all__ = ["EmptyPoolError", "PairPool", "PoolExhaustedError"]

_GRAPH_METHODS = ("is_resolved", "component_labels", "must_links", "cannot_links")


class EmptyPoolError(ValueError):
    """The input cannot form a single pair (no embeddings, or fewer than 2 items)."""


class PoolExhaustedError(RuntimeError):
    """Every candidate pair of the strategy is already asked or implied by the constraints."""


@dataclass(frozen=True, eq=False)
class PairPool:
    """The items: ``features`` (n, d) float32 unit rows, the ``constraints`` so far, optional per-item
    ``cameras``, ``tracklets``, ``text`` (caption embeddings; zero rows = no caption) and ``timestamps``
    (seconds), and the clustering ``view`` of the features."""

    features: np.ndarray
    constraints: ConstraintGraph
    view: ClusteringView
    cameras: np.ndarray | None = None
    tracklets: np.ndarray | None = None
    text: np.ndarray | None = None
    timestamps: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @classmethod
    def build(
        cls,
        embeddings: Any,
        constraints: Any,
        *,
        cameras: Any = None,
        tracklets: Any = None,
        text_embeddings: Any = None,
        timestamps: Any = None,
        view: ClusteringView | None = None,
        random_state: int | None = 0,
    ) -> PairPool:
        """Validate the inputs (rows that are not unit length are normalised into a new array) and
        bind them to ``view``, or to a fresh view seeded with ``random_state`` when none is given."""
        if embeddings is None:
            raise EmptyPoolError("embeddings is None")
        raw = np.asarray(embeddings)
        if raw.ndim == 2 and raw.shape[0] < 2:
            raise EmptyPoolError(f"embeddings has {raw.shape[0]} rows; a pair needs at least 2 items")
        features = check_features(raw, "embeddings", unit_norm="normalise")
        n = features.shape[0]
        missing = [m for m in _GRAPH_METHODS if not hasattr(constraints, m)]
        if missing:
            raise TypeError(
                f"constraints must be a ConstraintGraph (missing {missing}), got {type(constraints).__name__}"
            )
        if hasattr(constraints, "max_node") and constraints.max_node() >= n:
            raise ValueError(
                f"constraints reference row {constraints.max_node()} but embeddings has only {n} rows"
            )
        if timestamps is not None:
            timestamps = check_per_item(timestamps, n, "timestamps")
            try:
                timestamps = np.asarray(timestamps, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError("timestamps must be numbers (seconds), one per embedding") from None
            if not np.isfinite(timestamps).all():
                raise ValueError("timestamps contains NaN or infinite values")
        if text_embeddings is not None:
            text_embeddings = check_features(
                text_embeddings, "text_embeddings", unit_norm="normalise", rows=n, allow_zero_rows=True
            )
        if view is None:
            seed = 0 if random_state is None else random_state
            view = ClusteringView(features, constraints, random_state=seed)
        elif not isinstance(view, ClusteringView):
            raise TypeError(f"view must be a ClusteringView or None, got {type(view).__name__}")
        elif view.n != n:
            raise ValueError(f"view covers {view.n} rows but embeddings has {n}")
        return cls(
            features=features,
            constraints=constraints,
            view=view,
            cameras=check_per_item(cameras, n, "cameras"),
            tracklets=check_per_item(tracklets, n, "tracklets"),
            text=text_embeddings,
            timestamps=timestamps,
        )
