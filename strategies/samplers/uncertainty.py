# Long on purpose: units, u_i, the greedy batch and the pair choice are one algorithm (ALGORITHMS.md §6).
"""Uncertainty + diversity batch sampler (seed 000 §2.3-2.4; ALGORITHMS.md §6).

Units are tracklets (renormalised mean of their frames) when given, else images. For an unlabelled
unit i, S_i(c) = max cosine to the labelled members of identity c (ML components of the labelled
images); u_i = normalised entropy of softmax_c(S_i(c)/τ) (or margin / spread). Coverage
d_i = (1 - max cosine to labelled ∪ batch) / 2 is updated after every pick, which is the redundancy
control; the greedy batch takes the best a_i = λ_u u_i + λ_d d_i, skipping near-duplicates of a batch
member and, optionally, a second pick from one (camera, time segment). With nothing labelled it is
k-centre greedy from a seeded random start. Each picked unit becomes pairs with the most similar
labelled representative of each of its top identities: the answers that decide its identity. At cold
start there is no identity yet, so a pick is paired with its nearest units (likely "same": must-links),
never with other k-centre picks, which are far apart by construction (only easy "different" answers).

Memory: O(n) per-unit arrays plus one (block x L) similarity block; n x n is never formed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from strategies.defaults import (
    UNC_LAMBDA_D,
    UNC_LAMBDA_TEXT,
    UNC_LAMBDA_U,
    UNC_NEAR_DUPLICATE,
    UNC_PROVISIONAL_IDENTITIES,
    UNC_SEGMENT_SECONDS,
    UNC_TAU,
    UNC_TOP_IDENTITIES,
    UNC_UNCERTAINTY,
)
from strategies.samplers.base import PairSampler, SamplingResult, register_sampler
from strategies.samplers.numeric import block_rows, labelled_items, matvec, take_unresolved
from strategies.samplers.pool import PairPool
from strategies.validation import check_int, check_random_state

if TYPE_CHECKING:
    from strategies.constraints import ConstraintGraph

__all__ = [
    "UNCERTAINTY_MEASURES",
    "UncertaintySampler",
    "UnitSelection",
    "identity_uncertainty",
    "make_units",
]

UNCERTAINTY_MEASURES = ("entropy", "margin", "spread")


@dataclass
class Units:
    """Selection units: ``of_item`` maps each image to its unit; ``features`` are unit unit-vectors;
    ``rep`` is the image that stands for the unit in a pair (the frame nearest the unit mean)."""

    of_item: np.ndarray
    features: np.ndarray
    rep: np.ndarray
    members: list[np.ndarray]


@dataclass
class UnitSelection:
    """Units in pick order with their acquisition score a_i (d_i alone at cold start), uncertainty u_i
    and coverage d_i at pick time, plus what was skipped and why."""

    units: np.ndarray
    scores: np.ndarray
    uncertainty: np.ndarray
    coverage: np.ndarray
    rep: np.ndarray
    skipped_near_duplicate: int
    skipped_segment: int
    skipped_no_pair: int
    cold_start: bool


def make_units(features: np.ndarray, tracklets: np.ndarray | None) -> Units:
    """One unit per tracklet (ids < 0, None or "" mean "no tracklet": the image is its own unit)."""
    n = features.shape[0]
    if tracklets is None:
        idx = np.arange(n, dtype=np.int64)
        return Units(idx, features, idx.copy(), [idx[t : t + 1] for t in range(n)])
    keys = np.asarray(tracklets, dtype=object)
    none = np.array([k is None or k == "" or (isinstance(k, (int, np.integer)) and k < 0) for k in keys])
    str_keys = np.array([f"t:{k}" for k in keys], dtype=object)
    str_keys[none] = [f"i:{t}" for t in np.flatnonzero(none)]
    _, first, of_item = np.unique(str_keys, return_index=True, return_inverse=True)
    # number units by first image so that unit order follows image order
    order = np.argsort(first, kind="stable")
    remap = np.empty(order.size, dtype=np.int64)
    remap[order] = np.arange(order.size)
    of_item = remap[of_item.reshape(-1)]
    n_units = order.size
    sums = np.zeros((n_units, features.shape[1]), dtype=np.float64)
    np.add.at(sums, of_item, features)
    norms = np.linalg.norm(sums, axis=1)
    norms[norms == 0] = 1.0
    unit_features = (sums / norms[:, None]).astype(np.float32)
    sort = np.argsort(of_item, kind="stable")
    bounds = np.searchsorted(of_item[sort], np.arange(n_units + 1))
    members = [sort[bounds[u] : bounds[u + 1]] for u in range(n_units)]
    # representative frame: the member most similar to the unit mean (ties: lowest row)
    closeness = np.einsum("ij,ij->i", features, unit_features[of_item])
    best = np.lexsort((np.arange(n), -closeness, of_item))
    rep = best[np.searchsorted(of_item[best], np.arange(n_units))]
    return Units(of_item, unit_features, rep.astype(np.int64), members)


def identity_uncertainty(
    identity_sims: np.ndarray, *, tau: float = UNC_TAU, measure: str = UNC_UNCERTAINTY
) -> np.ndarray:
    """u in [0, 1] per row of S (rows = units, columns = identities).

    entropy: H(softmax(S/τ)) / log C; margin: 1 - (p_1 - p_2) of that softmax; spread:
    1 - (max_c S - mean_c S) / 2, i.e. how little the best identity stands out. With fewer than two
    identities nothing is ambiguous: u = 0.
    """
    if measure not in UNCERTAINTY_MEASURES:
        raise ValueError(f"measure must be one of {UNCERTAINTY_MEASURES}, got {measure!r}")
    s = np.asarray(identity_sims)
    if s.ndim != 2:
        raise ValueError(f"identity_sims must be 2-D (units, identities), got shape {s.shape}")
    if s.shape[1] < 2:
        return np.zeros(s.shape[0])
    if measure == "spread":
        s64 = s.astype(np.float64)
        return np.clip(1.0 - (s64.max(axis=1) - s64.mean(axis=1)) / 2.0, 0.0, 1.0)
    # z = (S - max S) / τ <= 0, e = exp(z) in (0, 1], Z = Σ e >= 1: softmax p = e / Z without forming
    # it, and H = log Z - Σ e z / Z (no log of tiny p). float32 element-wise, float64 sums.
    z = (s.astype(np.float32) - s.max(axis=1, keepdims=True).astype(np.float32)) * np.float32(1.0 / tau)
    e = np.exp(z)
    total = e.sum(axis=1, dtype=np.float64)
    if measure == "entropy":
        h = np.log(total) - np.einsum("ij,ij->i", e, z, dtype=np.float64) / total
        return np.clip(h / np.log(s.shape[1]), 0.0, 1.0)
    top2 = -np.partition(-e, 1, axis=1)[:, :2].astype(np.float64)
    return np.clip(1.0 - (top2[:, 0] - top2[:, 1]) / total, 0.0, 1.0)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@register_sampler
@dataclass(eq=False, repr=False)
class UncertaintySampler(PairSampler):
    """Greedy batch by a_i = λ_u u_i + λ_d d_i with near-duplicate and (camera, time segment) control.

    Parameters keep the paper-facing names: ``tau`` (τ), ``lambda_u``, ``lambda_d``, ``near_duplicate``
    (cosine at which two picks count as the same view), ``top_identities`` (pairs per unit),
    ``uncertainty`` ("entropy" | "margin" | "spread"), ``lambda_text`` (weight of the image/text
    ranking disagreement added to u_i when ``text_embeddings`` are given), ``one_per_segment`` with
    ``segment_seconds`` (cap of one pick per (camera, time segment); needs ``cameras``; the segment is
    ``floor(timestamp / segment_seconds)`` when ``timestamps`` are given, else the camera alone),
    ``provisional_identities`` (up to this many of a pick's nearest unlabelled units compete with the
    labelled identities for its ``top_identities`` pairs, so a pick of an identity nobody labelled yet
    gets a likely-"same" pair instead of only obvious "different" ones; 0 = labelled identities only.
    At cold start, with no identity yet, all ``top_identities`` pairs go to the nearest units).
    """

    name: ClassVar[str] = "uncertainty"

    tau: float = UNC_TAU
    lambda_u: float = UNC_LAMBDA_U
    lambda_d: float = UNC_LAMBDA_D
    near_duplicate: float = UNC_NEAR_DUPLICATE
    top_identities: int = UNC_TOP_IDENTITIES
    uncertainty: str = UNC_UNCERTAINTY
    lambda_text: float = UNC_LAMBDA_TEXT
    one_per_segment: bool = False
    segment_seconds: float = UNC_SEGMENT_SECONDS
    random_state: int | None = 0
    provisional_identities: int = UNC_PROVISIONAL_IDENTITIES

    def _check_params(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.lambda_u < 0 or self.lambda_d < 0 or self.lambda_u + self.lambda_d <= 0:
            raise ValueError(
                f"lambda_u and lambda_d must be >= 0, sum > 0; got {self.lambda_u}, {self.lambda_d}"
            )
        if not -1.0 <= self.near_duplicate <= 1.0:
            raise ValueError(f"near_duplicate must be a cosine in [-1, 1], got {self.near_duplicate}")
        if (
            isinstance(self.top_identities, bool)
            or not isinstance(self.top_identities, int)
            or self.top_identities < 1
        ):
            raise ValueError(f"top_identities must be a positive int, got {self.top_identities!r}")
        if self.uncertainty not in UNCERTAINTY_MEASURES:
            raise ValueError(f"uncertainty must be one of {UNCERTAINTY_MEASURES}, got {self.uncertainty!r}")
        if self.lambda_text < 0:
            raise ValueError(f"lambda_text must be >= 0, got {self.lambda_text}")
        if not self.segment_seconds > 0:
            raise ValueError(f"segment_seconds must be > 0, got {self.segment_seconds}")
        if (
            isinstance(self.provisional_identities, bool)
            or not isinstance(self.provisional_identities, (int, np.integer))
            or self.provisional_identities < 0
        ):
            raise ValueError(
                f"provisional_identities must be an int >= 0, got {self.provisional_identities!r}"
            )
        check_random_state(self.random_state)

    # ------------------------------------------------------------------ public pieces
    def select_units(
        self, embeddings: np.ndarray, constraints: ConstraintGraph, n_units: int, **side_info: Any
    ) -> UnitSelection:
        """The greedy batch of up to ``n_units`` units alone (no pairs): what the pairs are built from.
        ``side_info``: ``cameras``, ``tracklets``, ``text_embeddings``, ``timestamps`` as for ``select``."""
        pool = PairPool.build(embeddings, constraints, random_state=self.random_state, **side_info)
        n_units = check_int(n_units, "n_units", 1)
        self._check_params()
        units = make_units(pool.features, pool.tracklets)
        return self._greedy(pool, units, n_units, pair_budget=None)[0]

    # ------------------------------------------------------------------ work
    def _propose(self, pool: PairPool, budget: int) -> SamplingResult:
        self._check_params()
        units = make_units(pool.features, pool.tracklets)
        selection, picked = self._greedy(pool, units, len(units.rep), pair_budget=budget)
        pairs: list[tuple[int, int]] = []
        priorities: list[float] = []
        reasons: list[str] = []
        total = 1.0 if selection.cold_start else self.lambda_u + self.lambda_d
        for t, unit_pairs in enumerate(picked):
            for pair, why in unit_pairs:
                if len(pairs) >= budget:
                    break
                pairs.append(pair)
                priorities.append(float(np.clip(selection.scores[t] / total, 0.0, 1.0)))
                reasons.append(
                    f"unit {int(selection.units[t])}: a={selection.scores[t]:.3f} "
                    f"(u={selection.uncertainty[t]:.3f}, d={selection.coverage[t]:.3f}); {why}"
                )
        labels = ["uncertainty"] * len(pairs)
        proposals = self._proposals(pool, pairs, np.asarray(priorities), labels, reasons)
        pool_sizes = {
            "units": len(units.rep),
            "selected_units": len(selection.units),
            "skipped_near_duplicate": selection.skipped_near_duplicate,
            "skipped_segment": selection.skipped_segment,
            "skipped_no_pair": selection.skipped_no_pair,
        }
        return self._result(proposals, budget, pool_sizes)

    def _greedy(
        self, pool: PairPool, units: Units, max_units: int, *, pair_budget: int | None
    ) -> tuple[UnitSelection, list[list[tuple[tuple[int, int], str]]]]:
        features, constraints, text = pool.features, pool.constraints, pool.text
        n = features.shape[0]
        uf = units.features
        n_units = uf.shape[0]
        labelled_img = labelled_items(constraints, n)
        unit_labelled = np.zeros(n_units, dtype=bool)
        unit_labelled[units.of_item[labelled_img]] = True
        lab_rows = np.flatnonzero(labelled_img)
        comp = constraints.component_labels(n)[lab_rows] if lab_rows.size else np.zeros(0, dtype=np.int64)
        # labelled images sorted by identity, so per-identity maxima are one reduceat per block
        order = np.lexsort((lab_rows, comp))
        lab_rows, comp = lab_rows[order], comp[order]
        id_start = np.flatnonzero(np.r_[True, comp[1:] != comp[:-1]]) if comp.size else np.zeros(0, np.int64)
        n_ids = id_start.size
        cold = n_ids == 0

        # u_i and the initial coverage max over the labelled images, in blocks of units
        u = np.zeros(n_units)
        cover = np.full(n_units, -np.inf)
        if not cold:
            lab_x = features[lab_rows]
            unit_text = None
            if text is not None and self.lambda_text > 0:
                unit_text = _unit_text(text, units)
                lab_t = text[lab_rows]
                lab_has_text = np.linalg.norm(lab_t, axis=1) > 0
            step = block_rows(lab_rows.size)
            for start in range(0, n_units, step):
                sims = uf[start : start + step] @ lab_x.T
                cover[start : start + step] = sims.max(axis=1)
                s_id = np.maximum.reduceat(sims, id_start, axis=1)
                ub = identity_uncertainty(s_id, tau=self.tau, measure=self.uncertainty)
                if unit_text is not None:
                    ub = self._add_text_term(
                        ub, s_id, unit_text[start : start + step], lab_t, lab_has_text, id_start
                    )
                u[start : start + step] = ub
        unit_cam, unit_seg = _unit_segments(units, pool.cameras, pool.timestamps, self.segment_seconds)
        used_segments: set[tuple[object, object]] = set()
        rng = check_random_state(self.random_state)
        # a_i = base_i - c * best_i with best_i = max cosine to labelled ∪ batch (d_i = (1 - best_i) / 2);
        # cold start: a_i = d_i. Unavailable units get base = -inf, so one subtraction + argmax per pick.
        lam_u, lam_d = (0.0, 1.0) if cold else (float(self.lambda_u), float(self.lambda_d))
        base = lam_u * u + lam_d / 2.0
        base[unit_labelled] = -np.inf
        c = lam_d / 2.0
        best = cover
        scratch = np.empty(n_units)
        left = int((~unit_labelled).sum())

        picks: list[int] = []
        scores: list[float] = []
        us: list[float] = []
        ds: list[float] = []
        picked_pairs: list[list[tuple[tuple[int, int], str]]] = []
        skipped = {"dup": 0, "seg": 0, "pair": 0}
        n_pairs = 0
        taken: set[tuple[int, int]] = set()  # pairs already in this batch (cold start can meet one twice)
        while left > 0 and len(picks) < max_units:
            if pair_budget is not None and n_pairs >= pair_budget:
                break
            if cold and not picks:
                cand = np.flatnonzero(np.isfinite(base))
                pick = int(cand[rng.integers(cand.size)])
                d_pick, score = 1.0, 1.0
            else:
                np.multiply(best, c, out=scratch)
                np.subtract(base, scratch, out=scratch)
                pick = int(np.argmax(scratch))
                score = float(scratch[pick])
                d_pick = float(np.clip((1.0 - best[pick]) / 2.0, 0.0, 1.0))
            base[pick] = -np.inf
            left -= 1
            if picks and float(np.max(matvec(uf[picks], uf[pick]))) >= self.near_duplicate:
                skipped["dup"] += 1
                continue
            if self.one_per_segment and unit_cam is not None:
                key = (unit_cam[pick], unit_seg[pick])
                if key in used_segments:
                    skipped["seg"] += 1
                    continue
            if pair_budget is not None:
                unit_pairs = self._pairs_for(
                    pick, features, units, constraints, lab_rows, id_start, taken, unit_labelled
                )
                unit_pairs = [pw for pw in unit_pairs if pw[0] not in taken]
                if not unit_pairs:
                    skipped["pair"] += 1
                    continue
                picked_pairs.append(unit_pairs)
                taken.update(pw[0] for pw in unit_pairs)
                n_pairs += len(unit_pairs)
            if self.one_per_segment and unit_cam is not None:
                used_segments.add((unit_cam[pick], unit_seg[pick]))
            picks.append(pick)
            scores.append(score)
            us.append(0.0 if cold else float(u[pick]))
            ds.append(d_pick)
            np.maximum(best, matvec(uf, uf[pick]), out=best)
        selection = UnitSelection(
            units=np.asarray(picks, dtype=np.int64),
            scores=np.asarray(scores),
            uncertainty=np.asarray(us),
            coverage=np.asarray(ds),
            rep=units.rep[np.asarray(picks, dtype=np.int64)],
            skipped_near_duplicate=skipped["dup"],
            skipped_segment=skipped["seg"],
            skipped_no_pair=skipped["pair"],
            cold_start=cold,
        )
        return selection, picked_pairs

    def _add_text_term(
        self,
        u: np.ndarray,
        s_id: np.ndarray,
        unit_text: np.ndarray,
        lab_t: np.ndarray,
        lab_has_text: np.ndarray,
        id_start: np.ndarray,
    ) -> np.ndarray:
        """u <- (u + λ_text v) / (1 + λ_text) for units with text, where v is the total-variation
        distance between softmax(S/τ) from images and softmax(T/τ) from texts over the identities
        that have text: 0 when both modalities rank identities alike, 1 when they disagree fully."""
        has = np.linalg.norm(unit_text, axis=1) > 0
        t_sims = unit_text @ lab_t.T
        t_sims[:, ~lab_has_text] = -np.inf
        t_id = np.maximum.reduceat(t_sims, id_start, axis=1)
        id_text = np.isfinite(t_id[0]) if t_id.shape[0] else np.zeros(0, dtype=bool)
        if id_text.sum() < 2 or not has.any():
            return u
        p = _softmax(s_id[:, id_text] / self.tau)
        q = _softmax(t_id[:, id_text] / self.tau)
        v = 0.5 * np.abs(p - q).sum(axis=1)
        out = u.copy()
        out[has] = (u[has] + self.lambda_text * v[has]) / (1.0 + self.lambda_text)
        return out

    def _pairs_for(
        self,
        unit: int,
        features: np.ndarray,
        units: Units,
        constraints: ConstraintGraph,
        lab_rows: np.ndarray,
        id_start: np.ndarray,
        taken: set[tuple[int, int]],
        unit_labelled: np.ndarray,
    ) -> list[tuple[tuple[int, int], str]]:
        """Pairs whose answers decide the unit's identity: its representative image with the most
        similar open member of each of its top identities. Up to ``provisional_identities`` nearest
        unlabelled units compete as provisional identities (all ``top_identities`` at cold start, when
        there is no identity yet): the ``top_identities`` most similar of both kinds are taken."""
        rep = int(units.rep[unit])
        x = units.features[unit]
        own = units.members[unit]
        want = self.top_identities
        scored: list[tuple[float, int, str]] = []  # (cosine, partner image, why)
        if lab_rows.size:
            sims = matvec(features[lab_rows], x)
            id_best = np.maximum.reduceat(sims, id_start)
            ranked_ids = np.lexsort((np.arange(id_best.size), -id_best))
            id_end = np.r_[id_start[1:], lab_rows.size]
            for c in ranked_ids:
                if len(scored) >= want:
                    break
                rows = lab_rows[id_start[c] : id_end[c]]
                rs = sims[id_start[c] : id_end[c]]
                order = np.lexsort((rows, -rs))
                cand, cs = rows[order], rs[order]
                keep = ~np.isin(cand, own) & np.array([_key(rep, int(j)) not in taken for j in cand], bool)
                cand, cs = cand[keep], cs[keep]
                ok = take_unresolved(np.full(cand.size, rep, dtype=np.int64), cand, constraints, 1)
                if ok.size:
                    j = int(cand[ok[0]])
                    scored.append((float(cs[ok[0]]), j, f"vs labelled identity (image {j})"))
        n_near = min(want, self.provisional_identities) if lab_rows.size else want
        if n_near:
            why = "vs nearest unlabelled unit" if lab_rows.size else "cold start: vs its nearest unit"
            scored += [
                (sim, j, why)
                for sim, j in self._neighbour_partners(unit, units, constraints, taken, unit_labelled, n_near)
            ]
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [
            (_key(rep, j), f"{why} #{k + 1}, cos {sim:.3f}") for k, (sim, j, why) in enumerate(scored[:want])
        ]

    def _neighbour_partners(
        self,
        unit: int,
        units: Units,
        constraints: ConstraintGraph,
        taken: set[tuple[int, int]],
        exclude: np.ndarray,
        want: int,
    ) -> list[tuple[float, int]]:
        """(cosine, representative) of the unit's ``want`` most similar other units outside
        ``exclude`` (the labelled units: they stand in the ranking as their identities) whose pair is
        still open (not asked, not implied, not already in this batch).

        A unit that no labelled identity claims is decided by its nearest neighbours, its provisional
        identity (likely "same"); pairing far-apart picks with each other, or a pick of an unseen
        identity with the labelled ones, only yields easy "different" answers and no must-link.
        O(n_units) per call: one similarity row and a partial sort.
        """
        rep = int(units.rep[unit])
        n_units = units.features.shape[0]
        sims = matvec(units.features, units.features[unit]).astype(np.float64)
        sims[unit] = -np.inf
        sims[exclude] = -np.inf
        head = min(n_units, 4 * want + 8)
        while True:
            top = np.argpartition(-sims, head - 1)[:head] if head < n_units else np.arange(n_units)
            top = top[np.lexsort((top, -sims[top]))]
            top = top[np.isfinite(sims[top])]
            cand = units.rep[top]
            open_ = np.array([_key(rep, int(j)) not in taken for j in cand], dtype=bool)
            cand, top = cand[open_], top[open_]
            ok = take_unresolved(np.full(cand.size, rep, dtype=np.int64), cand, constraints, want)
            if ok.size >= want or head >= n_units:
                break
            head = min(n_units, 4 * head)
        return [(float(sims[top[t]]), int(cand[t])) for t in ok]


def _key(i: int, j: int) -> tuple[int, int]:
    return (min(i, j), max(i, j))


def _unit_text(text: np.ndarray, units: Units) -> np.ndarray:
    """Renormalised mean text embedding per unit; zero rows (no text) stay zero."""
    sums = np.zeros((len(units.rep), text.shape[1]), dtype=np.float64)
    np.add.at(sums, units.of_item, text)
    norms = np.linalg.norm(sums, axis=1)
    out = np.zeros_like(sums)
    ok = norms > 0
    out[ok] = sums[ok] / norms[ok, None]
    return out.astype(np.float32)


def _unit_segments(
    units: Units, cameras: np.ndarray | None, timestamps: np.ndarray | None, segment_seconds: float
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(camera, time segment) of each unit's representative image; segment 0 when no timestamps."""
    if cameras is None:
        return None, None
    cam = np.asarray(cameras, dtype=object)[units.rep]
    if timestamps is None:
        return cam, np.zeros(cam.size, dtype=np.int64)
    return cam, np.floor(np.asarray(timestamps, dtype=np.float64)[units.rep] / segment_seconds).astype(
        np.int64
    )
