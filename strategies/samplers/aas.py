# Long on purpose: AAS's pure steps (regions, U_os, U_us, eq. 6) sit beside the sampler that wires them.
"""Ambiguity-Aware Sampling (seed 001 §3.1 A-D, Alg. 1; ALGORITHMS.md §5).

Two clusterings, A = DBSCAN on the Jaccard distance and B = a FINCH level, both refined by NP3 with the
constraints so far, disagree where the embedding is ambiguous. Their partial overlaps (0 < IoU < 1)
chain into regions of uncertainty S_1..S_M. Pairs across regions (medoid pairs, U_os) probe
over-segmentation; the closest cross pair of two clusters of one method that the other method joins
(U_us) probes under-segmentation. The pool is sampled without replacement from the mixture
P(Y) = ε P(Y|U_os) + (1 - ε) P(Y|U_us) (eq. 4-6), or taken whole when it is smaller than the budget.

Every step is a pure function over label arrays (testable with hand-made labels); ``AASSampler`` wires
them to the kNN graph, the k-reciprocal Jaccard similarity, DBSCAN, FINCH and NP3 modules.

No region of uncertainty means the two views agree everywhere: the result is empty with
``shortfall == budget`` ("rely on base training this cycle"), not ``PoolExhaustedError`` (which means
candidates existed but every one is already asked or implied).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from strategies.clustering import FinchResult, select_finch_level
from strategies.constraints import CONTRADICTION_POLICIES
from strategies.defaults import (
    AAS_BUDGET_FRACTION,
    AAS_EPSILON,
    AAS_EXACT_MEDOID_MAX,
    AAS_K_MAX,
    AAS_S_MIN,
    AAS_SIMILARITY,
    CONTRADICTION_POLICY,
    K1,
    K2,
)
from strategies.jaccard import jaccard_similarity_pairs
from strategies.knn import KnnGraph, build_knn
from strategies.samplers.base import PairSampler, SamplingResult, register_sampler
from strategies.samplers.numeric import BLOCK_ELEMENTS, unresolved_mask
from strategies.samplers.pool import PairPool, PoolExhaustedError
from strategies.validation import check_random_state

if TYPE_CHECKING:
    from strategies.constraints import ConstraintGraph
    from strategies.view import ClusteringView

log = logging.getLogger(__name__)

__all__ = [
    "AAS_SIMILARITIES",
    "POOL_NAMES",
    "AASPool",
    "AASSampler",
    "aas_budget",
    "aas_finch_level",
    "aas_pool",
    "aas_probabilities",
    "efraimidis_spirakis",
    "nearest_medoids",
    "outlier_status",
    "overseg_pairs",
    "region_medoids",
    "singletonize",
    "uncertainty_regions",
    "underseg_pairs",
]

# pool codes: 0 = U_os, 1..3 = U_us by DBSCAN status of the two ends (β1 inlier-inlier, β2 inlier-outlier,
# β3 outlier-outlier)
POOL_NAMES = ("U_os", "U_us:beta1", "U_us:beta2", "U_us:beta3")
AAS_SIMILARITIES = ("jaccard", "cosine")


@dataclass
class AASPool:
    """The sampling pool U = U_os ∪ U_us as parallel arrays (one entry per pair, i < j).

    ``code`` indexes POOL_NAMES; ``region`` is the region of a U_us pair (for U_os: the region of the
    medoid ``i``); ``sim`` is the eq. 4 similarity of a U_os pair (0 for U_us); ``joined_by`` is, for a
    U_us pair, 0 when A (DBSCAN) co-clusters it and 1 when B (FINCH) does. ``inconsistent_counts`` is
    (M, 3): |Ĩ_k| per region and pair type (β1..β3), the ρ weights' input.
    """

    i: np.ndarray
    j: np.ndarray
    code: np.ndarray
    region: np.ndarray
    sim: np.ndarray
    joined_by: np.ndarray
    regions: np.ndarray
    n_regions: int
    medoids: np.ndarray
    inconsistent_counts: np.ndarray

    def __len__(self) -> int:
        return int(self.i.size)

    def subset(self, mask: np.ndarray) -> AASPool:
        return AASPool(
            self.i[mask],
            self.j[mask],
            self.code[mask],
            self.region[mask],
            self.sim[mask],
            self.joined_by[mask],
            self.regions,
            self.n_regions,
            self.medoids,
            self.inconsistent_counts,
        )

    def sizes(self) -> dict[str, int]:
        out = {name: int((self.code == c).sum()) for c, name in enumerate(POOL_NAMES)}
        out["U"] = len(self)
        out["regions"] = self.n_regions
        return out


# --------------------------------------------------------------------------------------------------
# A. regions of uncertainty
# --------------------------------------------------------------------------------------------------


def singletonize(labels: np.ndarray) -> np.ndarray:
    """Dense cluster ids 0..c-1 where every -1 (outlier) becomes its own singleton cluster."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    lab = lab.astype(np.int64)
    out = np.empty_like(lab)
    neg = lab < 0
    _, dense = np.unique(lab[~neg], return_inverse=True)
    out[~neg] = dense
    base = int(dense.max()) + 1 if dense.size else 0
    out[neg] = base + np.arange(int(neg.sum()), dtype=np.int64)
    return out


def uncertainty_regions(labels_a: np.ndarray, labels_b: np.ndarray) -> tuple[np.ndarray, int]:
    """Region id per point (-1 outside every region) and the number of regions M.

    Nodes are the clusters of A and B (each -1 its own singleton), edges the cluster pairs with
    0 < IoU < 1; a region is a connected component with at least one edge. Regions are numbered in
    order of their smallest point.
    """
    a = singletonize(labels_a)
    b = singletonize(labels_b)
    if a.shape != b.shape:
        raise ValueError(f"labels_a and labels_b must have the same shape, got {a.shape} and {b.shape}")
    n = a.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    na = int(a.max()) + 1
    nb = int(b.max()) + 1
    cells, counts = np.unique(a * nb + b, return_counts=True)
    ca, cb = cells // nb, cells % nb
    size_a = np.bincount(a, minlength=na)
    size_b = np.bincount(b, minlength=nb)
    partial = ~((counts == size_a[ca]) & (counts == size_b[cb]))  # counts > 0 always, so IoU > 0
    ea, eb = ca[partial], cb[partial] + na
    graph = coo_matrix((np.ones(ea.size), (ea, eb)), shape=(na + nb, na + nb))
    _, comp = connected_components(graph, directed=False)
    has_edge = np.zeros(comp.max() + 1, dtype=bool)
    has_edge[comp[ea]] = True
    point_comp = comp[a]
    inside = has_edge[point_comp]
    regions = np.full(n, -1, dtype=np.int64)
    if inside.any():
        # renumber by first point so that region ids do not depend on label values
        first = np.full(comp.max() + 1, n, dtype=np.int64)
        np.minimum.at(first, point_comp[inside], np.flatnonzero(inside))
        used = np.flatnonzero(first < n)
        rank = np.empty(comp.max() + 1, dtype=np.int64)
        rank[used[np.argsort(first[used], kind="stable")]] = np.arange(used.size)
        regions[inside] = rank[point_comp[inside]]
        return regions, int(used.size)
    return regions, 0


def outlier_status(dbscan_labels: np.ndarray, refined_a: np.ndarray) -> np.ndarray:
    """DBSCAN outlier mask after refinement: -1 in the refined labels, or a DBSCAN outlier that NP3
    left alone as a singleton (an outlier that an ML merged into a cluster is an inlier now)."""
    raw = np.asarray(dbscan_labels)
    ref = np.asarray(refined_a)
    dense = singletonize(ref)
    size = np.bincount(dense)[dense]
    return (ref < 0) | ((raw < 0) & (size == 1))


def aas_finch_level(dbscan_labels: np.ndarray, finch: FinchResult) -> int:
    """The FINCH level B that AAS compares with DBSCAN: its group count is closest to DBSCAN's with every
    outlier counted as its own group (ties -> finer; ALGORITHMS.md §2).

    Regions treat each outlier as a singleton cluster, so the level must match that granularity; matching
    the non-outlier clusters alone picks a far coarser level when DBSCAN leaves many outliers, and the
    regions then collapse into a few giant blobs full of outlier-outlier pairs.
    """
    labels = np.asarray(dbscan_labels)
    n_groups = int(np.unique(labels[labels >= 0]).size + (labels < 0).sum())
    return select_finch_level(finch, n_groups)


# --------------------------------------------------------------------------------------------------
# B. U_os: medoid pairs across regions
# --------------------------------------------------------------------------------------------------


def _sq_norms(features: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", features, features, dtype=np.float64)


def region_medoids(
    features: np.ndarray, regions: np.ndarray, n_regions: int, *, exact_max: int = AAS_EXACT_MEDOID_MAX
) -> np.ndarray:
    """Medoid row per region: least total Euclidean distance to the region (ties: lowest row); for a
    region larger than ``exact_max``, the point nearest the region mean (O(m) instead of O(m²))."""
    medoids = np.full(n_regions, -1, dtype=np.int64)
    if n_regions == 0:
        return medoids
    order = np.argsort(regions, kind="stable")
    starts = np.searchsorted(regions[order], np.arange(n_regions))
    ends = np.searchsorted(regions[order], np.arange(n_regions), side="right")
    # the points inside regions only, in region order: each region is then a contiguous slice
    inside = order[starts[0] :]
    x = np.asarray(np.asarray(features)[inside], dtype=np.float64)
    sq_all = _sq_norms(x)
    for r in range(n_regions):
        lo, hi = starts[r] - starts[0], ends[r] - starts[0]
        members = inside[lo:hi]
        xm = x[lo:hi]
        if members.size <= exact_max:
            sq = sq_all[lo:hi]
            d2 = sq[:, None] + sq[None, :] - 2.0 * (xm @ xm.T)
            total = np.sqrt(np.maximum(d2, 0.0)).sum(axis=1)
            medoids[r] = members[int(np.argmin(total))]
        else:
            centre = xm.mean(axis=0)
            medoids[r] = members[int(np.argmin(((xm - centre) ** 2).sum(axis=1)))]
    return medoids


def nearest_medoids(
    features: np.ndarray, medoids: np.ndarray, k_max: int = AAS_K_MAX
) -> tuple[np.ndarray, np.ndarray]:
    """U_os candidates: each medoid's ``k_max`` nearest other medoids by cosine (ties -> lower position).

    Returns (pos_a, pos_b), positions into ``medoids`` with pos_a < pos_b, each unordered pair once, sorted.
    Blocked m x m products: the medoids are few (one per region), so no index is needed.
    """
    m = medoids.size
    k = min(int(k_max), m - 1)
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if k < 1:
        return empty
    mx = np.asarray(features)[medoids]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    step = max(1, BLOCK_ELEMENTS // m)
    for start in range(0, m, step):
        cos = mx[start : start + step] @ mx.T
        rr = np.arange(cos.shape[0])
        cos[rr, start + rr] = -np.inf
        # the k-th largest cosine per row: everything at or above it, unless a tie at it overflows k;
        # then the tied ones by lowest position
        kth = -np.partition(-cos, k - 1, axis=1)[:, k - 1 : k]
        keep = cos >= kth
        over = np.flatnonzero(keep.sum(axis=1) > k)
        if over.size:
            tied = cos[over] == kth[over]
            need = k - (cos[over] > kth[over]).sum(axis=1, keepdims=True)
            keep[over] = (cos[over] > kth[over]) | (tied & (np.cumsum(tied, axis=1) <= need))
        r, c = np.nonzero(keep)
        rows.append(start + r)
        cols.append(c)
    r = np.concatenate(rows).astype(np.int64)
    c = np.concatenate(cols).astype(np.int64)
    keys = np.unique(np.minimum(r, c) * m + np.maximum(r, c))
    return keys // m, keys % m


def overseg_pairs(
    features: np.ndarray,
    medoids: np.ndarray,
    *,
    knn: KnnGraph | None = None,
    k1: int = K1,
    k2: int = K2,
    k_max: int = AAS_K_MAX,
    s_min: float = AAS_S_MIN,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U_os: each medoid's k_max nearest other medoids (by cosine), kept when sim >= s_min.

    With ``knn`` (the pool's kNN graph), sim is the k-reciprocal Jaccard similarity computed from the two
    medoids' V rows (``k1``/``k2`` as for the pool's Jaccard distance): medoids of different regions are
    rarely kNN edges of each other, so a similarity read off the kNN graph would be 0 for almost every
    candidate. Without ``knn``, sim is cosine. Returns (pos_a, pos_b, sim), positions into ``medoids``,
    pos_a < pos_b, each unordered pair once.
    """
    a, b = nearest_medoids(features, medoids, k_max)
    if a.size == 0:
        return a, b, np.zeros(0)
    x = np.asarray(features)
    if knn is not None:
        if knn.n != x.shape[0]:
            raise ValueError(f"knn has {knn.n} rows but features has {x.shape[0]}")
        sim = jaccard_similarity_pairs(x, medoids[a], medoids[b], k1=k1, k2=k2, knn=knn, check_input=False)
    else:
        sim = np.einsum("ij,ij->i", x[medoids[a]], x[medoids[b]]).astype(np.float64)
    keep = sim >= s_min
    return a[keep], b[keep], sim[keep]


# --------------------------------------------------------------------------------------------------
# C. U_us: closest cross pairs of clusters that the other method joins
# --------------------------------------------------------------------------------------------------


def _closest_cross_pairs(
    x: np.ndarray,
    sq: np.ndarray,
    members: list[np.ndarray],
    sizes: np.ndarray,
    first: np.ndarray,
    c1: np.ndarray,
    c2: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """argmin Euclidean distance over members[c1[t]] x members[c2[t]] for each t (eq. 2), in blocks
    (``sizes`` and ``first`` as ``_cluster_members`` gives them). Ties: the first row of the larger
    cluster, then the first column."""
    u = np.empty(c1.size, dtype=np.int64)
    v = np.empty(c1.size, dtype=np.int64)
    single = (sizes[c1] == 1) & (sizes[c2] == 1)
    if single.any():
        u[single] = first[c1[single]]
        v[single] = first[c2[single]]
    rest = np.flatnonzero(~single)
    if rest.size == 0:
        return u, v
    # orient each cluster pair so that the big side is the row side, then group by it
    big = np.where(sizes[c1[rest]] >= sizes[c2[rest]], c1[rest], c2[rest])
    small = np.where(sizes[c1[rest]] >= sizes[c2[rest]], c2[rest], c1[rest])
    swapped = sizes[c1[rest]] < sizes[c2[rest]]
    order = np.lexsort((small, big))
    rest, big, small, swapped = rest[order], big[order], small[order], swapped[order]
    bounds = np.flatnonzero(np.diff(big)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, rest.size], strict=True):
        grp = np.arange(lo, hi)
        rows = members[big[lo]]
        partner_members = [members[s] for s in small[grp]]
        seg_len = np.array([p.size for p in partner_members], dtype=np.int64)
        cols = np.concatenate(partner_members)
        seg = np.repeat(np.arange(grp.size), seg_len)
        best_d = np.full(cols.size, np.inf)
        best_r = np.zeros(cols.size, dtype=np.int64)
        row_step = max(1, BLOCK_ELEMENTS // max(1, cols.size))
        col_step = max(1, BLOCK_ELEMENTS // max(1, min(rows.size, row_step)))
        for rs in range(0, rows.size, row_step):
            rblock = rows[rs : rs + row_step]
            for cs in range(0, cols.size, col_step):
                cblock = cols[cs : cs + col_step]
                d2 = sq[rblock][:, None] + sq[cblock][None, :] - 2.0 * (x[rblock] @ x[cblock].T)
                arg = np.argmin(d2, axis=0)
                val = d2[arg, np.arange(cblock.size)]
                better = val < best_d[cs : cs + cblock.size]
                best_d[cs : cs + cblock.size][better] = val[better]
                best_r[cs : cs + cblock.size][better] = rows[rs + arg[better]]
        # per partner segment: the column with the least distance (first on ties)
        pick = np.lexsort((np.arange(cols.size), best_d, seg))
        first = pick[np.searchsorted(seg[pick], np.arange(grp.size))]
        uu, vv = best_r[first], cols[first]
        sw = swapped[grp]
        u[rest[grp]] = np.where(sw, vv, uu)
        v[rest[grp]] = np.where(sw, uu, vv)
    return u, v


@functools.lru_cache(maxsize=256)
def _upper_pairs(size: int) -> tuple[np.ndarray, np.ndarray]:
    """np.triu_indices(size, 1), kept per size: underseg_pairs asks for the same few sizes thousands of
    times (read-only arrays, so sharing them is safe)."""
    t1, t2 = np.triu_indices(size, 1)
    t1.flags.writeable = False
    t2.flags.writeable = False
    return t1, t2


def _cluster_members(labels: np.ndarray, n_clusters: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Members of each cluster 0..n_clusters-1 (ascending rows), their sizes and first rows (-1 if empty)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
    sizes = np.diff(bounds)
    first = np.where(sizes > 0, order[np.minimum(bounds[:-1], max(order.size - 1, 0))], -1)
    return [order[bounds[c] : bounds[c + 1]] for c in range(n_clusters)], sizes, first


def _type_counts(groups: np.ndarray, outlier: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, 3) co-clustered pairs per type in each group: β1 C(in,2), β2 in·out, β3 C(out,2)."""
    n_out = np.bincount(groups, weights=outlier.astype(np.float64), minlength=n_groups)
    n_all = np.bincount(groups, minlength=n_groups).astype(np.float64)
    n_in = n_all - n_out
    return np.stack([n_in * (n_in - 1) / 2, n_in * n_out, n_out * (n_out - 1) / 2], axis=1)


def underseg_pairs(
    features: np.ndarray,
    labels_a: np.ndarray,
    labels_b: np.ndarray,
    regions: np.ndarray,
    n_regions: int,
    outlier: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """U_us = ∪_k Ĩ_k ∩ P_k (eq. 1-3).

    For each method ζ and each cluster g of the other method η, every two ζ-clusters meeting g give a
    candidate; its closest cross pair is in Ĩ_k exactly when η co-clusters its two ends (ζ never does).
    Cluster pairs that share no η-cluster cannot contribute, so they are never enumerated.
    Returns (i, j, region, type 0..2, joined_by 0=A/1=B, |Ĩ_k| counts (M, 3)).
    """
    x = np.asarray(features, dtype=np.float64)
    sq = _sq_norms(x)
    a = singletonize(labels_a)
    b = singletonize(labels_b)
    outlier = np.asarray(outlier, dtype=bool)
    inside = regions >= 0
    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    out_by: list[np.ndarray] = []
    for by, (zeta, eta) in enumerate(((a, b), (b, a))):
        # the pair's ends are split by ζ and joined by η; "joined_by" names η (0 = A, 1 = B)
        joined = 1 - by
        nz = int(zeta.max()) + 1
        cells = np.unique(eta[inside] * nz + zeta[inside])
        ge, cz = cells // nz, cells % nz
        bounds = np.flatnonzero(np.diff(ge)) + 1
        pa: list[np.ndarray] = []
        pb: list[np.ndarray] = []
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, cells.size], strict=True):
            if hi - lo < 2:
                continue
            grp = np.arange(lo, hi)
            t1, t2 = _upper_pairs(int(hi - lo))
            pa.append(cz[grp][t1])
            pb.append(cz[grp][t2])
        if not pa:
            continue
        keys = np.unique(np.concatenate(pa) * nz + np.concatenate(pb))
        c1, c2 = keys // nz, keys % nz
        u, v = _closest_cross_pairs(x, sq, *_cluster_members(zeta, nz), c1, c2)
        keep = eta[u] == eta[v]
        out_i.append(np.minimum(u[keep], v[keep]))
        out_j.append(np.maximum(u[keep], v[keep]))
        out_by.append(np.full(int(keep.sum()), joined, dtype=np.int64))
    counts = np.zeros((n_regions, 3))
    if n_regions:
        # |Ĩ_k| per type = |A+| + |B+| - 2 |A+ ∩ B+|, all counted in closed form per cluster / cell
        ra = np.zeros(int(a.max()) + 1, dtype=np.int64)
        ra[a] = regions
        rb = np.zeros(int(b.max()) + 1, dtype=np.int64)
        rb[b] = regions
        na = int(a.max()) + 1
        cell_ids, cell_of = np.unique(a * (int(b.max()) + 1) + b, return_inverse=True)
        rc = np.zeros(cell_ids.size, dtype=np.int64)
        rc[cell_of] = regions
        for groups, reg, size in ((a, ra, na), (b, rb, rb.size), (cell_of, rc, cell_ids.size)):
            tc = _type_counts(groups, outlier, size)
            ok = reg >= 0
            sign = -2.0 if groups is cell_of else 1.0
            np.add.at(counts, reg[ok], sign * tc[ok])
        counts = np.rint(counts)
    if not out_i:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, z, z, counts
    i = np.concatenate(out_i)
    j = np.concatenate(out_j)
    by = np.concatenate(out_by)
    n = x.shape[0]
    _, first = np.unique(i * n + j, return_index=True)
    first = np.sort(first)
    i, j, by = i[first], j[first], by[first]
    kind = outlier[i].astype(np.int64) + outlier[j].astype(np.int64)
    return i, j, regions[i], kind, by, counts


# --------------------------------------------------------------------------------------------------
# the pool and its distribution
# --------------------------------------------------------------------------------------------------


def aas_pool(
    features: np.ndarray,
    labels_a: np.ndarray,
    labels_b: np.ndarray,
    *,
    outlier: np.ndarray | None = None,
    knn: KnnGraph | None = None,
    k1: int = K1,
    k2: int = K2,
    k_max: int = AAS_K_MAX,
    s_min: float = AAS_S_MIN,
    exact_medoid_max: int = AAS_EXACT_MEDOID_MAX,
) -> AASPool:
    """Regions, U_os and U_us from two label arrays (A = DBSCAN with -1 outliers, B = FINCH).

    ``outlier`` defaults to ``labels_a == -1``. ``features`` may be any real vectors (the worked
    example of ALGORITHMS.md uses 1-D points); distances are Euclidean, which on unit vectors ranks
    pairs exactly as cosine does. ``knn`` (with ``k1``/``k2``) makes U_os's sim the k-reciprocal
    Jaccard similarity; without it, sim is cosine (see ``overseg_pairs``).
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {x.shape}")
    la = np.asarray(labels_a)
    lb = np.asarray(labels_b)
    if la.shape != (x.shape[0],) or lb.shape != (x.shape[0],):
        raise ValueError(
            f"labels_a and labels_b must have shape ({x.shape[0]},), got {la.shape} and {lb.shape}"
        )
    outlier = (la < 0) if outlier is None else np.asarray(outlier, dtype=bool)
    if outlier.shape != la.shape:
        raise ValueError(f"outlier must have shape {la.shape}, got {outlier.shape}")
    regions, m = uncertainty_regions(la, lb)
    medoids = region_medoids(x, regions, m, exact_max=exact_medoid_max)
    pa, pb, sim = overseg_pairs(x, medoids, knn=knn, k1=k1, k2=k2, k_max=k_max, s_min=s_min)
    os_i = np.minimum(medoids[pa], medoids[pb])
    os_j = np.maximum(medoids[pa], medoids[pb])
    us_i, us_j, us_reg, us_kind, us_by, counts = underseg_pairs(x, la, lb, regions, m, outlier)
    n_os = os_i.size
    return AASPool(
        i=np.concatenate([os_i, us_i]).astype(np.int64),
        j=np.concatenate([os_j, us_j]).astype(np.int64),
        code=np.concatenate([np.zeros(n_os, dtype=np.int64), us_kind + 1]),
        region=np.concatenate([regions[os_i] if n_os else np.zeros(0, dtype=np.int64), us_reg]),
        sim=np.concatenate([sim, np.zeros(us_i.size)]),
        joined_by=np.concatenate([np.full(n_os, -1, dtype=np.int64), us_by]),
        regions=regions,
        n_regions=m,
        medoids=medoids,
        inconsistent_counts=counts,
    )


def aas_probabilities(pool: AASPool, epsilon: float = AAS_EPSILON) -> np.ndarray:
    """P(Y) of eq. 6 over the pool's pairs.

    P(Y|U_os) = sim / Σ sim (eq. 4; uniform if every sim is 0). P(Y|U_us) = π_type ρ_region|type
    ω_pair (eq. 5) with π uniform over the types present, ρ ∝ log(1 + |Ĩ_k of the type|) over the
    regions that have such pairs, ω uniform. If one pool is empty all mass goes to the other.
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    p = np.zeros(len(pool))
    is_os = pool.code == 0
    if is_os.any():
        w = np.maximum(pool.sim[is_os], 0.0)
        p_os = w / w.sum() if w.sum() > 0 else np.full(w.size, 1.0 / w.size)
    else:
        p_os = np.zeros(0)
    p_us = np.zeros(len(pool))
    types = [t for t in (1, 2, 3) if (pool.code == t).any()]
    for t in types:
        sel = np.flatnonzero(pool.code == t)
        regs, n_pairs = np.unique(pool.region[sel], return_counts=True)
        rho = np.log1p(np.maximum(pool.inconsistent_counts[regs, t - 1], 1.0))
        rho = rho / rho.sum()
        pos = np.searchsorted(regs, pool.region[sel])
        p_us[sel] = (1.0 / len(types)) * rho[pos] / n_pairs[pos]
    has_os, has_us = bool(is_os.any()), bool(types)
    eps = epsilon if (has_os and has_us) else (1.0 if has_os else 0.0)
    p[is_os] = eps * p_os
    p[~is_os] = (1.0 - eps) * p_us[~is_os]
    return p


def efraimidis_spirakis(weights: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``m`` draws without replacement with probability ∝ weights (keys u^(1/w)), best key
    first; zero weights only fill in after every positive weight."""
    w = np.asarray(weights, dtype=np.float64)
    u = rng.random(w.size)
    with np.errstate(divide="ignore"):
        keys = np.where(w > 0, np.log(np.maximum(u, 1e-300)) / np.where(w > 0, w, 1.0), -np.inf)
    order = np.lexsort((np.arange(w.size), -keys))
    return order[:m]


def aas_budget(n_items: int, fraction: float = AAS_BUDGET_FRACTION) -> int:
    """The paper's per-cycle budget: ``fraction`` (0.02%) of all n(n-1)/2 pairs, at least 1."""
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 2:
        raise ValueError(f"n_items must be an int >= 2, got {n_items!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, round(fraction * n_items * (n_items - 1) / 2))


# --------------------------------------------------------------------------------------------------
# the sampler
# --------------------------------------------------------------------------------------------------


@register_sampler
@dataclass(eq=False, repr=False)
class AASSampler(PairSampler):
    """AAS with the paper's symbols: ``epsilon`` (ε, eq. 6), ``k_max`` and ``s_min`` (U_os).

    ``exact_medoid_max``: regions above this size use the point nearest the mean as medoid;
    ``contradiction_policy``: NP3's policy; ``refine``: apply NP3 to both clusterings (the paper does);
    ``similarity``: sim of U_os and eq. 4, "jaccard" (k-reciprocal, SpCL's, our default; computed for each
    candidate medoid pair from its V rows) or "cosine". An empty U_os or U_us is logged as a warning.
    """

    name: ClassVar[str] = "aas"

    epsilon: float = AAS_EPSILON
    k_max: int = AAS_K_MAX
    s_min: float = AAS_S_MIN
    exact_medoid_max: int = AAS_EXACT_MEDOID_MAX
    contradiction_policy: str = CONTRADICTION_POLICY
    refine: bool = True
    similarity: str = AAS_SIMILARITY
    random_state: int | None = 0

    def _check_params(self) -> None:
        if not 0.0 <= float(self.epsilon) <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if isinstance(self.k_max, bool) or not isinstance(self.k_max, int) or self.k_max < 1:
            raise ValueError(f"k_max must be a positive int, got {self.k_max!r}")
        if not -1.0 <= float(self.s_min) <= 1.0:
            raise ValueError(f"s_min must be in [-1, 1], got {self.s_min}")
        if self.exact_medoid_max < 1:
            raise ValueError(f"exact_medoid_max must be >= 1, got {self.exact_medoid_max}")
        if self.similarity not in AAS_SIMILARITIES:
            raise ValueError(f"similarity must be one of {AAS_SIMILARITIES}, got {self.similarity!r}")
        if self.contradiction_policy not in CONTRADICTION_POLICIES:
            raise ValueError(
                f"contradiction_policy must be one of {CONTRADICTION_POLICIES}, "
                f"got {self.contradiction_policy!r}"
            )

    def clusterings(
        self, features: np.ndarray, constraints: ConstraintGraph, view: ClusteringView
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(A, B, outlier mask): DBSCAN and the matching FINCH level (``aas_finch_level``), each refined
        by NP3."""
        dbscan = np.asarray(view.dbscan_labels)
        finch = np.asarray(view.finch.partitions[aas_finch_level(dbscan, view.finch)])
        a, b = dbscan, finch
        if self.refine and len(constraints) > 0:
            from strategies.np3 import NP3

            seed = 0 if self.random_state is None else self.random_state
            np3 = NP3(contradiction_policy=self.contradiction_policy, random_state=seed)
            a = np.asarray(np3.refine(dbscan, features, constraints).labels)
            b = np.asarray(np3.refine(finch, features, constraints).labels)
        return a, b, outlier_status(dbscan, a)

    def _propose(self, pool: PairPool, budget: int) -> SamplingResult:
        self._check_params()
        rng = check_random_state(self.random_state)
        features, constraints = pool.features, pool.constraints
        a, b, outlier = self.clusterings(features, constraints, pool.view)
        candidates = aas_pool(
            features,
            a,
            b,
            outlier=outlier,
            knn=_jaccard_knn(pool.view) if self.similarity == "jaccard" else None,
            k1=pool.view.k1,
            k2=pool.view.k2,
            k_max=self.k_max,
            s_min=self.s_min,
            exact_medoid_max=self.exact_medoid_max,
        )
        sizes = candidates.sizes()
        if candidates.n_regions == 0 or len(candidates) == 0:
            # the two views agree (or disagree only where no pair is informative): rely on base training
            return SamplingResult(proposals=[], shortfall=budget, pool_sizes=sizes)
        open_pool = candidates.subset(unresolved_mask(constraints, candidates.i, candidates.j))
        sizes["U_open"] = len(open_pool)
        if len(open_pool) == 0:
            raise PoolExhaustedError(
                f"aas: all {len(candidates)} pairs of the pool are already asked or implied "
                f"(pool sizes {sizes})"
            )
        _warn_empty_pools(open_pool, candidates, self.similarity, self.s_min)
        prob = aas_probabilities(open_pool, self.epsilon)
        if len(open_pool) <= budget:
            chosen = np.arange(len(open_pool))
        else:
            chosen = efraimidis_spirakis(prob, budget, rng)
        # priority: rank of P(Y) in the whole open pool, normalised to (0, 1]; best = 1
        order = np.lexsort((open_pool.j, open_pool.i, -prob))
        rank = np.empty(len(open_pool), dtype=np.int64)
        rank[order] = np.arange(len(open_pool))
        priority = 1.0 - rank / len(open_pool)
        pairs = list(zip(open_pool.i[chosen].tolist(), open_pool.j[chosen].tolist(), strict=True))
        pools = [POOL_NAMES[c] for c in open_pool.code[chosen]]
        reasons = [_reason(open_pool, t, prob[t]) for t in chosen]
        proposals = self._proposals(pool, pairs, priority[chosen], pools, reasons)
        return SamplingResult(
            proposals=proposals, shortfall=max(0, budget - len(proposals)), pool_sizes=sizes
        )


def _jaccard_knn(view: ClusteringView) -> KnnGraph:
    """The view's kNN graph when it is wide enough for its k1 (as the view's Jaccard distance needs),
    else a graph of the default width."""
    if view.knn.k >= view.k1:
        return view.knn
    width = min(view.n, max(view.k1, view.knn_k))
    return build_knn(view.features, width, random_state=view.random_state, check_input=False)


def _warn_empty_pools(open_pool: AASPool, candidates: AASPool, similarity: str, s_min: float) -> None:
    """Say why all of P(Y) goes to one pool (eq. 6 with the other pool empty); the counts are also in
    ``SamplingResult.pool_sizes``."""
    n_os = int((open_pool.code == 0).sum())
    n_us = len(open_pool) - n_os
    if n_os == 0:
        found = int((candidates.code == 0).sum())
        if found:
            why = f"all {found} medoid pairs are already asked or implied"
        elif candidates.n_regions < 2:
            why = "fewer than two regions"
        else:
            why = f"no pair of nearest region medoids reaches s_min={s_min} ({similarity} similarity)"
        log.warning(
            "aas: U_os is empty (%s; %d regions); all of P(Y) goes to U_us (%d pairs)",
            why,
            candidates.n_regions,
            n_us,
        )
    if n_us == 0:
        found = len(candidates) - int((candidates.code == 0).sum())
        why = f"all {found} pairs are already asked or implied" if found else "no inconsistent closest pair"
        log.warning(
            "aas: U_us is empty (%s; %d regions); all of P(Y) goes to U_os (%d pairs)",
            why,
            candidates.n_regions,
            n_os,
        )


def _reason(pool: AASPool, t: int, p: float) -> str:
    code = int(pool.code[t])
    if code == 0:
        return (
            f"over-segmentation: medoids of two uncertain regions, similarity {pool.sim[t]:.3f}, P(Y)={p:.2e}"
        )
    joined, split = ("DBSCAN", "FINCH") if pool.joined_by[t] == 0 else ("FINCH", "DBSCAN")
    kind = ("inlier-inlier", "inlier-outlier", "outlier-outlier")[code - 1]
    return (
        f"under-segmentation in region {int(pool.region[t])}: {joined} joins, {split} splits "
        f"({kind}, closest cross pair), P(Y)={p:.2e}"
    )
