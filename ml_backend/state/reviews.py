"""The pairs under review: what the last cycle asked to be looked at again, and how many were resolved.

Why kept here and not only in the model version: /status and /metrics list the open reviews without
loading a version, and a review that is open at one cycle and gone at the next was resolved by the
answers in between (counted once, when the cycle that sees it gone replaces the set).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ml_backend.state.base import KeyFamily, json_hash, register

REVIEW_FIELDS = ("pair_id", "image_a", "image_b", "kind", "reason", "p_same", "weight", "annotation_ids")


class ReviewRecords(KeyFamily):
    """``reviews`` (pair id -> the open review), ``review_meta`` (the contradictions open at the last cycle)
    and the ``reviews_resolved`` counter of ``counters``."""

    def replace(self, reviews: Iterable[Mapping[str, Any]], *, contradictions_open: int = 0) -> list[str]:
        """Make ``reviews`` the open set; returns the pair ids that were open and are not any more (the
        resolved ones, also added to the ``reviews_resolved`` counter). ``contradictions_open``: how many
        contradictions those reviews are about (one may suspect several pairs)."""
        new: dict[str, str] = {}
        for review in reviews:
            missing = [f for f in REVIEW_FIELDS if f not in review]
            if missing:
                raise ValueError(f"reviews: a review lacks {', '.join(missing)}")
            new[str(review["pair_id"])] = json.dumps({f: review[f] for f in REVIEW_FIELDS}, sort_keys=True)
        old = set(self.open_ids())
        resolved = sorted(old - set(new))
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key("reviews"))
        pipe.hset(self.key("review_meta"), "contradictions_open", int(contradictions_open))
        if new:
            pipe.hset(self.key("reviews"), mapping=new)
        if resolved:
            pipe.hincrby(self.key("counters"), "reviews_resolved", len(resolved))
        register(pipe, self.project)
        pipe.execute()
        return resolved

    def contradictions_open(self) -> int:
        value = self.redis.hget(self.key("review_meta"), "contradictions_open")
        return int(value) if value is not None else 0

    def open_ids(self) -> list[str]:
        return sorted(json_hash(self.redis.hgetall(self.key("reviews"))))

    def open(self) -> list[dict[str, Any]]:
        """The open reviews, most urgent kind first (contradiction, disagreement, second opinion)."""
        from strategies.review import REVIEW_KINDS

        reviews = list(json_hash(self.redis.hgetall(self.key("reviews"))).values())
        return sorted(reviews, key=lambda r: (REVIEW_KINDS.index(r["kind"]) if r["kind"] in REVIEW_KINDS
                                              else len(REVIEW_KINDS), r["weight"], r["pair_id"]))

    def counts(self) -> dict[str, int]:
        """Open reviews by kind."""
        from strategies.review import REVIEW_KINDS

        out = dict.fromkeys(REVIEW_KINDS, 0)
        for review in self.open():
            out[review["kind"]] = out.get(review["kind"], 0) + 1
        return out
