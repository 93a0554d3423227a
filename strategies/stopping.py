"""When to stop asking: recent answers no longer change the identities (WBIA's refresh criterion).

Why this rule: the team's goal is every image with its individual, so an answer is worth its cost
only when it changes the identity assignment. Replaying the answers in arrival order says which ones
did (``label_changing``): a "same" that joins images the assignment in service had apart, or a
"different" that separates images it had put together (or contradicts a must-link path); a "same"
that confirms what the assignment inferred verifies it without changing it, and a "same" inside one
component or a "different" across a known cannot-link was already implied.
``RefreshCriterion`` keeps an exponentially weighted rate ``mu`` of label-changing answers (starting
at 1, so it needs a run of useless answers to fall) and models the next ``patience`` answers as
independent draws: P(any changes something) = 1 - (1 - mu)^patience. Below ``threshold`` the project
is done, unless someone decides to keep asking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strategies.constraints import ConstraintGraph, ConstraintKind, Relation
from strategies.defaults import STOP_PATIENCE, STOP_THRESHOLD, STOP_WINDOW
from strategies.validation import check_counts, check_unit_interval

__all__ = ["RefreshCriterion", "StoppingEstimate", "label_changing"]


def label_changing(pairs: Any, same: Any, inferred_same: Any = None) -> np.ndarray:
    """Per answer in arrival order: did it change the identity assignment?

    ``pairs``: (k, 2) image rows; ``same``: (k,) bool, True for "same"; ``inferred_same``: (k,) bool,
    whether the assignment in service when the answer arrived had the two images in one identity
    (None: nothing inferred, identities are the must-link components). A "same" changes something when
    the pair is neither in one component nor inferred the same (or a cannot-link separates it: a
    contradiction); a "different" when the pair is in one component (a contradiction to resolve) or
    was inferred the same and no cannot-link separated it yet.
    """
    arr = np.asarray(pairs)
    if arr.size == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"pairs: expected shape (k, 2), got {arr.shape}")
    if arr.shape[0] and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"pairs: expected integer rows, got dtype {arr.dtype}")
    k = arr.shape[0]
    same_arr = _flags(same, k, "same")
    inferred = np.zeros(k, dtype=bool) if inferred_same is None else _flags(inferred_same, k, "inferred_same")
    if k and (arr < 0).any():
        raise ValueError("pairs: rows must be non-negative")
    if k and (arr[:, 0] == arr[:, 1]).any():
        raise ValueError("pairs: a pair needs two different images")
    graph = ConstraintGraph()
    out = np.zeros(k, dtype=bool)
    for t in range(k):
        i, j = int(arr[t, 0]), int(arr[t, 1])
        relation = graph.relation(i, j)
        if same_arr[t]:
            news = relation is Relation.UNKNOWN and not bool(inferred[t])
            out[t] = news or relation is Relation.DIFFERENT
            graph.add(t, i, j, ConstraintKind.MUST_LINK)
        else:
            out[t] = relation is Relation.SAME or (relation is Relation.UNKNOWN and bool(inferred[t]))
            graph.add(t, i, j, ConstraintKind.CANNOT_LINK)
    return out


def _flags(values: Any, k: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (k,):
        raise ValueError(f"{name}: expected shape ({k},), got {arr.shape}")
    if arr.size and arr.dtype != bool:
        raise ValueError(f"{name}: expected booleans, got dtype {arr.dtype}")
    return arr.astype(bool)


@dataclass(frozen=True)
class StoppingEstimate:
    """Where the rule stands after ``answers`` answers: the rate ``rate`` of label-changing answers,
    ``p_any_change`` (that any of the next ``patience`` answers changes something) and whether it is
    below ``threshold`` (``reached``). ``rate_trace``/``p_trace``: the same after each answer."""

    answers: int
    label_changing: int
    rate: float
    p_any_change: float
    reached: bool
    window: int
    patience: int
    threshold: float
    rate_trace: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    p_trace: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the traces."""
        return {
            "answers": self.answers,
            "label_changing": self.label_changing,
            "rate": float(self.rate),
            "p_any_change": float(self.p_any_change),
            "reached": bool(self.reached),
            "window": self.window,
            "patience": self.patience,
            "threshold": float(self.threshold),
        }


@dataclass(kw_only=True, eq=False)
class RefreshCriterion:
    """Stop when P(any of the next ``patience`` answers changes the identities) < ``threshold``.

    ``window``: the span of the exponentially weighted rate (alpha = 2 / (window + 1)).
    """

    window: int = STOP_WINDOW
    patience: int = STOP_PATIENCE
    threshold: float = STOP_THRESHOLD

    def estimate(self, changing: Any) -> StoppingEstimate:
        """The rule's state after the answers whose effects are ``changing`` (bool per answer, in
        arrival order; see ``label_changing``)."""
        check_counts(self, "window", "patience")
        check_unit_interval(self.threshold, "threshold", "(0, 1)")
        flags = np.asarray(changing)
        if flags.ndim != 1 or (flags.size and flags.dtype != bool):
            raise ValueError(
                f"changing: expected a 1-d boolean array, got shape {flags.shape} dtype {flags.dtype}"
            )
        alpha = 2.0 / (int(self.window) + 1.0)
        rates = np.empty(flags.size, dtype=np.float64)
        mu = 1.0
        for t, flag in enumerate(flags.tolist()):
            mu = alpha * float(flag) + (1.0 - alpha) * mu
            rates[t] = mu
        p_trace = self.p_any(rates)
        p = float(self.p_any(np.array([mu]))[0])
        return StoppingEstimate(
            answers=int(flags.size),
            label_changing=int(flags.sum()),
            rate=mu,
            p_any_change=p,
            reached=p < float(self.threshold),
            window=int(self.window),
            patience=int(self.patience),
            threshold=float(self.threshold),
            rate_trace=rates,
            p_trace=p_trace,
        )

    def p_any(self, rate: np.ndarray) -> np.ndarray:
        """1 - (1 - rate)^patience: the binomial model of WBIA's criterion."""
        r = np.clip(np.asarray(rate, dtype=np.float64), 0.0, 1.0)
        return 1.0 - (1.0 - r) ** int(self.patience)
