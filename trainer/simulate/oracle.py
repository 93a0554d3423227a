"""A simulated annotator that answers same/different/unsure from ground-truth identities.

The answer to a pair is a pure function of (random_state, i, j, attempt): asking in a different order
gives the same answers, so strategies are compared on the same "annotator". ``attempt`` counts the times
the pair was asked before: a review or a second opinion (attempt >= 1) is a fresh look with its own,
independent chance of a mistake, as a second annotator would be.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np


class Answer(str, Enum):
    SAME = "same"
    DIFFERENT = "different"
    UNSURE = "unsure"


@dataclass(frozen=True)
class OracleAnswer:
    i: int
    j: int
    answer: Answer
    truth_same: bool  # ground truth for the pair
    wrong: bool  # a same/different answer that contradicts the truth (noisy oracle)


class Oracle:
    """Ground-truth annotator with an optional error rate and an optional "unsure" rate.

    - `noise_rate`: fraction of same/different answers that are flipped (a careless annotator);
    - `unsure_rate`: fraction of pairs answered "unsure" (recorded as asked, no constraint), drawn
      before the flip so a wrong answer is always a confident one.
    """

    def __init__(
        self,
        labels: np.ndarray,
        *,
        noise_rate: float = 0.0,
        unsure_rate: float = 0.0,
        random_state: int | None = 0,
    ) -> None:
        self.labels = labels
        self.noise_rate = noise_rate
        self.unsure_rate = unsure_rate
        self.random_state = random_state

    def _checked_labels(self) -> np.ndarray:
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.size < 2:
            raise ValueError(
                f"labels: expected a 1-D array with at least 2 entries, got shape {labels.shape}"
            )
        if not 0.0 <= float(self.noise_rate) <= 1.0:
            raise ValueError(f"noise_rate: must be in [0, 1], got {self.noise_rate}")
        if not 0.0 <= float(self.unsure_rate) <= 1.0:
            raise ValueError(f"unsure_rate: must be in [0, 1], got {self.unsure_rate}")
        return labels

    def _draws(self, i: int, j: int, attempt: int) -> tuple[float, float]:
        seed = 0 if self.random_state is None else int(self.random_state)
        key = [seed & 0xFFFFFFFF, i, j] + ([attempt] if attempt else [])
        u = np.random.default_rng(key).random(2)
        return float(u[0]), float(u[1])

    def answer(self, i: int, j: int, attempt: int = 0) -> OracleAnswer:
        """Answer one pair; (i, j) and (j, i) get the same answer. ``attempt``: how many times the pair
        was asked before (0: the first look; each later one draws its own noise)."""
        labels = self._checked_labels()
        i, j = int(i), int(j)
        n = labels.size
        if not (0 <= i < n and 0 <= j < n):
            raise IndexError(f"pair: ({i}, {j}) out of range for {n} labelled rows")
        if i == j:
            raise ValueError(f"pair: i == j == {i}; a pair needs two different rows")
        if isinstance(attempt, bool) or not isinstance(attempt, int | np.integer) or attempt < 0:
            raise ValueError(f"attempt: must be an integer >= 0, got {attempt!r}")
        a, b = min(i, j), max(i, j)
        truth = bool(labels[a] == labels[b])
        u_unsure, u_flip = self._draws(a, b, int(attempt))
        if u_unsure < float(self.unsure_rate):
            return OracleAnswer(a, b, Answer.UNSURE, truth, False)
        wrong = u_flip < float(self.noise_rate)
        said_same = truth != wrong
        return OracleAnswer(a, b, Answer.SAME if said_same else Answer.DIFFERENT, truth, wrong)

    def answer_pairs(self, pairs: Iterable[tuple[int, int]]) -> list[OracleAnswer]:
        return [self.answer(i, j) for i, j in pairs]
