"""The validation gate: a model version is served only if it beats the one in service and the frozen
encoder on human answers it did not train on (ALGORITHMS.md §11).

Held out: every must-link component (two or more images) whose smallest row falls in fold 0 of
``folds`` — a stable choice, so mostly the same identities stay held out from cycle to cycle. While
fold 0 holds fewer than ``min_positives`` "same" pairs, folds 1, 2, … join it, up to
``max_held_folds``: answers that hold few matches can then judge a candidate on as many pairs as any
other, at the cost of training on fewer; once fold 0 suffices, the other folds train again. With
``cross_validate``, while fold 0 holds too few, every fold is held out in turn instead, each with its own
candidate, and the decision is taken on the scores pooled over the folds (weighted by their "same"
pairs); the candidate that may be served is fold 0's, so it trains on as many answers as ever. Training
sees no answer that touches a held-out image and no pseudo-label of an identity holding one. Only the
held-out identities the model in service never trained on are scored (its version records what it saw):
an identity counts as seen when the model learned from any of its images, since components grow and
merge, so a model that learned an identity in an earlier cycle is not judged on its other views, which
it would retrieve unfairly well. Scores:

* ``auc``: how often a held-out "same" pair (every pair inside a held-out component) is more similar
  than a held-out "different" pair (every cannot-link with an end in one) — the hard cases annotators
  resolved, which is what a better re-ID model must get right (only with ``min_negatives`` of them);
* ``map``: retrieval mAP of each held-out image against the pool (positives: its own component;
  every other pool image a distractor), which also sees a model that pulls unrelated individuals
  together and does not saturate the way a verified-only gallery does.

A model's validation ``score`` is the mean of the two (``map`` alone without enough "different"
pairs). A candidate is served when its score beats the frozen encoder's by more than ``min_gain`` and
is no lower than the model in service's; otherwise the better of the model in service and the frozen
encoder stays (ties: the model in service). Too few held-out "same" answers to tell: no candidate is
trained and the model in service stays.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from strategies.constraints import must_link_components
from trainer.defaults import (
    GATE_CROSS_VALIDATE,
    GATE_FOLDS,
    GATE_MAX_GALLERY,
    GATE_MAX_HELD_FOLDS,
    GATE_MAX_QUERIES,
    GATE_MIN_GAIN,
    GATE_MIN_NEGATIVES,
    GATE_MIN_POSITIVES,
)

__all__ = ["GateDecision", "Holdout", "ValidationGate"]


@dataclass(frozen=True)
class Holdout:
    """Which images are held out, the answers training may use (none touches a held-out image), and
    the held-out answers the models are scored on (none touches an image the model in service saw)."""

    images: np.ndarray  # bool (n,): held out of training
    scored: np.ndarray  # bool (n,): held out and never seen by the model in service: the queries
    components: np.ndarray  # must-link component per row
    train_must_link: np.ndarray  # (m, 2)
    train_cannot_link: np.ndarray  # (k, 2)
    positives: np.ndarray  # (p, 2) held-out "same" pairs
    negatives: np.ndarray  # (q, 2) held-out "different" pairs
    fold_ids: tuple[int, ...] = (0,)  # the folds held out

    @property
    def held_folds(self) -> int:
        return len(self.fold_ids)


@dataclass
class GateDecision:
    """What is served (``candidate``, ``previous`` or ``frozen``), why, and every score behind it."""

    served: str
    reason: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    held_out_images: int = 0
    held_out_positives: int = 0
    held_out_negatives: int = 0
    held_out_folds: int = 1
    pooled_folds: int = 0  # folds whose scores were pooled (cross-validation); 0: one held-out split

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stable_fold(row: int, folds: int) -> int:
    return zlib.crc32(str(int(row)).encode()) % folds


@dataclass(kw_only=True, eq=False)
class ValidationGate:
    """Splits the answers once per cycle (:meth:`split`) and picks the model to serve (:meth:`decide`)."""

    folds: int = GATE_FOLDS
    min_gain: float = GATE_MIN_GAIN
    min_positives: int = GATE_MIN_POSITIVES
    min_negatives: int = GATE_MIN_NEGATIVES
    max_held_folds: int = GATE_MAX_HELD_FOLDS
    cross_validate: bool = GATE_CROSS_VALIDATE

    def split(self, n: int, must_link: np.ndarray, cannot_link: np.ndarray,
              unseen: np.ndarray | None = None) -> Holdout:
        """Hold out fold 0 of the verified components (more folds while it has too few "same" pairs);
        ``must_link``/``cannot_link`` are the answers the contradiction policy keeps
        (``ConstraintGraph.effective``). ``unseen``: the images the model in service never trained on
        (None: all); only identities none of whose images it trained on are scored, so no model is
        judged on an identity it learned."""
        if self.max_held_folds < 1:
            raise ValueError(f"max_held_folds: must be >= 1, got {self.max_held_folds!r}")
        first = self._split(n, must_link, cannot_link, unseen, (0,))
        holdout = first
        for held_folds in range(2, min(self.max_held_folds, self.folds - 1) + 1):
            if self.can_validate(holdout):
                break
            holdout = self._split(n, must_link, cannot_link, unseen, tuple(range(held_folds)))
        return holdout if self.can_validate(holdout) else first

    def split_folds(self, n: int, must_link: np.ndarray, cannot_link: np.ndarray,
                    unseen: np.ndarray | None = None) -> list[Holdout]:
        """Every fold held out on its own (:meth:`split`'s fold 0 first): the splits of cross-validation."""
        return [self._split(n, must_link, cannot_link, unseen, (f,)) for f in range(self.folds)]

    def _split(self, n: int, must_link: np.ndarray, cannot_link: np.ndarray,
               unseen: np.ndarray | None, fold_ids: tuple[int, ...]) -> Holdout:
        if self.folds < 2:
            raise ValueError(f"folds: must be >= 2, got {self.folds!r}")
        ml = np.asarray(must_link, dtype=np.int64).reshape(-1, 2)
        cl = np.asarray(cannot_link, dtype=np.int64).reshape(-1, 2)
        comp = must_link_components(ml, n)
        sizes = np.bincount(comp) if n else np.zeros(0, dtype=np.int64)
        first_row = np.full(sizes.size, n, dtype=np.int64)
        np.minimum.at(first_row, comp, np.arange(n))
        held_comp = np.array(
            [sizes[c] >= 2 and _stable_fold(first_row[c], self.folds) in fold_ids
             for c in range(sizes.size)],
            dtype=bool,
        )
        held = held_comp[comp] if n else np.zeros(0, dtype=bool)
        seen = np.zeros(n, dtype=bool) if unseen is None else ~np.asarray(unseen, dtype=bool)
        if seen.shape != (n,):
            raise ValueError(f"unseen: must be a boolean mask over the {n} rows, got shape {seen.shape}")
        seen_comp = np.zeros(sizes.size, dtype=bool)
        seen_comp[comp[seen]] = True
        fresh = ~seen_comp[comp] if n else np.zeros(0, dtype=bool)  # per identity, not per image
        scored = held & fresh

        def touches(pairs: np.ndarray) -> np.ndarray:
            return held[pairs[:, 0]] | held[pairs[:, 1]]

        def clean(pairs: np.ndarray) -> np.ndarray:
            """No end is a held-out image of an identity the model in service saw."""
            return ~((held & ~fresh)[pairs[:, 0]] | (held & ~fresh)[pairs[:, 1]])

        positives = []
        order = np.argsort(comp, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for c in np.flatnonzero(held_comp):
            if seen_comp[c]:
                continue
            rows = order[starts[c] : starts[c + 1]]
            positives.extend((int(a), int(b)) for k, a in enumerate(rows) for b in rows[k + 1 :])
        negatives = cl[touches(cl) & clean(cl)] if cl.size else cl
        return Holdout(
            images=held,
            scored=scored,
            components=comp,
            train_must_link=ml[~touches(ml)] if ml.size else ml,
            train_cannot_link=cl[~touches(cl)] if cl.size else cl,
            positives=np.asarray(positives, dtype=np.int64).reshape(-1, 2),
            negatives=negatives,
            fold_ids=tuple(fold_ids),
        )

    def can_validate(self, holdout: Holdout) -> bool:
        """Enough held-out "same" answers to tell models apart."""
        return int(holdout.positives.shape[0]) >= self.min_positives

    def score(self, embeddings: np.ndarray, holdout: Holdout) -> dict[str, float]:
        """``auc``, ``map`` and the ``score`` they make for one embedding (unit rows) on the held-out
        answers: their mean, or ``map`` alone while there are too few "different" answers for an AUC."""
        x = np.asarray(embeddings, dtype=np.float32)
        mean_ap = _verified_map(x, holdout)
        if holdout.negatives.shape[0] < self.min_negatives:
            return {"map": mean_ap, "score": mean_ap}
        pos = np.einsum("ij,ij->i", x[holdout.positives[:, 0]], x[holdout.positives[:, 1]])
        neg = np.einsum("ij,ij->i", x[holdout.negatives[:, 0]], x[holdout.negatives[:, 1]])
        auc = _auc(pos, neg)
        return {"auc": auc, "map": mean_ap, "score": (auc + mean_ap) / 2.0}

    def can_validate_pooled(self, holdouts: list[Holdout]) -> bool:
        """Enough held-out "same" answers over all the folds of cross-validation."""
        return sum(int(h.positives.shape[0]) for h in holdouts) >= self.min_positives

    def decide(self, holdout: Holdout, embeddings: dict[str, np.ndarray], incumbent: str) -> GateDecision:
        """Pick among ``embeddings`` (keys ``candidate``, ``frozen`` and possibly ``previous``);
        ``incumbent`` is the key of the model in service now."""
        base = self._counts([holdout])
        if not self.can_validate(holdout):
            return GateDecision(
                incumbent,
                f"too few held-out answers to validate ({base['held_out_positives']} same; need "
                f"{self.min_positives}): {incumbent} stays",
                **base,
            )
        scores = {name: self.score(emb, holdout) for name, emb in embeddings.items()}
        return self._pick(scores, incumbent, base)

    def decide_pooled(self, fold_scores: list[tuple[Holdout, dict[str, dict[str, float]]]],
                      incumbent: str) -> GateDecision:
        """Cross-validation's decision: ``fold_scores`` pairs each fold's holdout with every model's
        :meth:`score` on it (``candidate``: the one trained without that fold); the first fold's candidate
        is the one that may be served, so that fold must be scored. Folds where some model has no score
        are left out; the others are pooled, weighted by their held-out "same" pairs."""
        used = [(h, sc) for h, sc in fold_scores
                if h.positives.shape[0] and all(np.isfinite(v["score"]) for v in sc.values())]
        base = {**self._counts([h for h, _ in used]), "pooled_folds": len(used)}
        if not used or used[0][0] is not fold_scores[0][0]:
            return GateDecision(incumbent, f"the candidate's own held-out fold cannot be scored: {incumbent} "
                                "stays", **base)
        if not self.can_validate_pooled([h for h, _ in used]):
            return GateDecision(
                incumbent,
                f"too few held-out answers to validate over {len(used)} folds ("
                f"{base['held_out_positives']} same; need {self.min_positives}): {incumbent} stays",
                **base,
            )
        weights = np.array([h.positives.shape[0] for h, _ in used], dtype=np.float64)
        scores: dict[str, dict[str, float]] = {}
        for name in used[0][1]:
            parts = {key for _, sc in used for key in sc[name]}
            scores[name] = {key: float(np.average([sc[name][key] for _, sc in used], weights=weights))
                            for key in sorted(parts) if all(key in sc[name] for _, sc in used)}
        decision = self._pick(scores, incumbent, base)
        decision.reason += f" [pooled over {len(used)} folds]"
        return decision

    @staticmethod
    def _counts(holdouts: list[Holdout]) -> dict[str, int]:
        return {
            "held_out_images": int(sum(h.scored.sum() for h in holdouts)),
            "held_out_positives": int(sum(h.positives.shape[0] for h in holdouts)),
            "held_out_negatives": int(sum(h.negatives.shape[0] for h in holdouts)),
            "held_out_folds": int(sum(h.held_folds for h in holdouts)),
        }

    def _pick(self, scores: dict[str, dict[str, float]], incumbent: str,
              base: dict[str, int]) -> GateDecision:
        """The rule: a candidate beats the frozen encoder by more than ``min_gain`` and is no lower than
        the model in service; otherwise the better of the model in service and the frozen encoder."""
        score = {name: v["score"] for name, v in scores.items()}
        if "candidate" in score:
            c = score["candidate"]
            beats_frozen = "frozen" not in score or c > score["frozen"] + self.min_gain
            keeps_up = "previous" not in score or c >= score["previous"]
            if beats_frozen and keeps_up:
                return GateDecision(
                    "candidate",
                    f"candidate scores {c:.3f} on held-out answers ("
                    + ", ".join(f"{k} {v:.3f}" for k, v in score.items() if k != "candidate") + ")",
                    scores,
                    **base,
                )
        stay = incumbent
        if incumbent != "frozen" and "frozen" in score and score["frozen"] > score[incumbent]:
            stay = "frozen"
        return GateDecision(
            stay,
            "candidate does not beat the others on held-out answers ("
            + ", ".join(f"{k} {v:.3f}" for k, v in score.items()) + f"): {stay} served",
            scores,
            **base,
        )


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random held-out same pair is more similar than a random different pair); ties count 1/2."""
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    sorted_vals = both[order]
    # average ranks over ties
    _, start, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def _verified_map(x: np.ndarray, holdout: Holdout, max_queries: int = GATE_MAX_QUERIES,
                  max_gallery: int = GATE_MAX_GALLERY) -> float:
    """Mean AP of held-out images querying the pool, positives = own must-link component.

    The gallery is every verified image plus the unverified rest of the pool as distractors (evenly
    spaced beyond ``max_gallery``): against verified images alone the task saturates near 1.0 on a few
    hundred answers and cannot tell a better model from the frozen encoder; the pool is what a model
    must separate identities in. Unverified images of a query's own identity count as misses for
    every model alike. At most ``max_queries`` queries (evenly spaced), scored in blocks so memory
    stays bounded."""
    comp = holdout.components
    sizes = np.bincount(comp)
    verified = sizes[comp] >= 2
    gallery = np.flatnonzero(verified)
    rest = np.flatnonzero(~verified)
    room = max(0, max_gallery - gallery.size)
    if rest.size > room:
        rest = rest[np.linspace(0, rest.size - 1, room).astype(np.int64)] if room else rest[:0]
    gallery = np.sort(np.concatenate([gallery, rest]))
    queries = np.flatnonzero(holdout.scored)
    if queries.size == 0:
        return float("nan")
    if queries.size > max_queries:
        queries = queries[np.linspace(0, queries.size - 1, max_queries).astype(np.int64)]
    aps: list[float] = []
    block = max(1, 4_000_000 // max(1, gallery.size))
    for start in range(0, queries.size, block):
        chunk = queries[start : start + block]
        sims = x[chunk] @ x[gallery].T
        for t, q in enumerate(chunk):
            keep = gallery != q
            order = np.argsort(-sims[t, keep], kind="stable")
            hits = np.flatnonzero(comp[gallery[keep][order]] == comp[q])
            if hits.size:
                aps.append(float(np.mean((np.arange(hits.size) + 1) / (hits + 1))))
    return float(np.mean(aps)) if aps else float("nan")
