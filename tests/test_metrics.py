"""Re-ID metrics against hand-computed cases and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from strategies.metrics import RetrievalMetrics, adjusted_rand, pairwise_prf, retrieval_metrics


def at_angles(*degrees: float) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


# Gallery at 10..50 degrees: a query at 0 degrees ranks it 0,1,2,3,4; a query at 50 degrees 4,3,2,1,0.
GALLERY = at_angles(10, 20, 30, 40, 50)
GALLERY_IDS = np.array([1, 2, 1, 3, 1])
GALLERY_CAMS = np.array([0, 1, 1, 1, 1])
QUERIES = at_angles(0, 50, 0)
QUERY_IDS = np.array([1, 2, 9])  # id 9 has no gallery item: skipped
QUERY_CAMS = np.array([0, 0, 0])


def test_hand_computed_case_with_cameras() -> None:
    m = retrieval_metrics(QUERIES, GALLERY, QUERY_IDS, GALLERY_IDS, QUERY_CAMS, GALLERY_CAMS, ranks=(1, 2, 5))
    # q0 (id 1, cam 0): gallery 0 is same id + same camera -> dropped. Kept ranking: g1(id2) g2(id1)
    #   g3(id3) g4(id1): positives at ranks 2 and 4 -> AP = (1/2 + 2/4)/2 = 0.5, first hit 2, INP 2/4
    # q1 (id 2, cam 0): ranking g4 g3 g2 g1 g0, the only positive g1 (cam 1) at rank 4 -> AP 1/4, INP 1/4
    # q2 (id 9): no positive -> skipped
    assert isinstance(m, RetrievalMetrics)
    assert m.n_queries == 2 and m.n_skipped == 1
    assert m.mAP == pytest.approx((0.5 + 0.25) / 2)
    assert m.cmc == pytest.approx({1: 0.0, 2: 0.5, 5: 1.0})
    assert m.mINP == pytest.approx((0.5 + 0.25) / 2)


def test_hand_computed_case_without_cameras() -> None:
    m = retrieval_metrics(QUERIES, GALLERY, QUERY_IDS, GALLERY_IDS, ranks=(1, 5))
    # q0: positives at ranks 1, 3, 5 -> AP = (1 + 2/3 + 3/5)/3 = 34/45, INP = 3/5, first hit 1
    # q1: positive at rank 4 -> AP 1/4, INP 1/4
    assert m.n_queries == 2 and m.n_skipped == 1
    assert m.mAP == pytest.approx((34 / 45 + 0.25) / 2)
    assert m.cmc == pytest.approx({1: 0.5, 5: 1.0})
    assert m.mINP == pytest.approx((0.6 + 0.25) / 2)


def test_ties_keep_gallery_order() -> None:
    # identical gallery items: the stable sort keeps gallery order, so the positive is second
    gallery = at_angles(30, 30)
    m = retrieval_metrics(at_angles(0), gallery, [1], [5, 1], ranks=(1, 2))
    assert m.mAP == pytest.approx(0.5)
    assert m.cmc == {1: 0.0, 2: 1.0}
    m = retrieval_metrics(at_angles(0), gallery, [1], [1, 5], ranks=(1,))
    assert m.mAP == pytest.approx(1.0)


def test_query_whose_only_positive_is_same_camera_is_skipped() -> None:
    m = retrieval_metrics(at_angles(0, 0), at_angles(5, 10), [7, 8], [7, 8], [1, 1], [1, 2])
    assert m.n_queries == 1 and m.n_skipped == 1
    assert m.mAP == pytest.approx(0.5)  # query 8: gallery 0 (id 7) first, its positive second


def test_all_queries_skipped_gives_nan_scores() -> None:
    m = retrieval_metrics(at_angles(0), at_angles(5), [1], [2], ranks=(1,))
    assert m.n_queries == 0 and m.n_skipped == 1
    assert math.isnan(m.mAP) and math.isnan(m.mINP) and math.isnan(m.cmc[1])


def test_exclude_self_drops_each_query_from_its_own_ranking() -> None:
    feats = at_angles(0, 5, 90)
    ids = np.array([1, 1, 2])
    m = retrieval_metrics(feats, feats, ids, ids, exclude_self=True, ranks=(1,))
    assert m.n_queries == 2 and m.n_skipped == 1  # id 2 has no other member
    assert m.mAP == pytest.approx(1.0)
    with pytest.raises(ValueError, match="exclude_self"):
        retrieval_metrics(feats[:2], feats, ids[:2], ids, exclude_self=True)


def brute_force_metrics(q, g, qid, gid, qcam, gcam, ranks):
    aps, inps, firsts, skipped = [], [], [], 0
    for k in range(len(q)):
        dist = [
            (1.0 - float(np.dot(q[k].astype(np.float64), g[j].astype(np.float64))), j) for j in range(len(g))
        ]
        order = [j for _, j in sorted(dist)]  # ties by gallery index = stable
        if qcam is not None:
            order = [j for j in order if not (gid[j] == qid[k] and gcam[j] == qcam[k])]
        hits = [gid[j] == qid[k] for j in order]
        if not any(hits):
            skipped += 1
            continue
        ranks_pos = [r + 1 for r, h in enumerate(hits) if h]
        aps.append(np.mean([(i + 1) / r for i, r in enumerate(ranks_pos)]))
        inps.append(len(ranks_pos) / ranks_pos[-1])
        firsts.append(ranks_pos[0])
    n = len(aps)
    return np.mean(aps), {r: np.mean([f <= r for f in firsts]) for r in ranks}, np.mean(inps), n, skipped


@pytest.mark.parametrize("cameras", [False, True])
@pytest.mark.parametrize("chunk_elements", [1, 7, 10_000_000])
def test_matches_brute_force_on_random_data(cameras: bool, chunk_elements: int) -> None:
    rng = np.random.default_rng(11)
    q = rng.normal(size=(23, 5)).astype(np.float32)
    g = rng.normal(size=(31, 5)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    qid, gid = rng.integers(0, 8, 23), rng.integers(0, 8, 31)
    qcam, gcam = (rng.integers(0, 3, 23), rng.integers(0, 3, 31)) if cameras else (None, None)
    m = retrieval_metrics(q, g, qid, gid, qcam, gcam, ranks=(1, 3, 10), chunk_elements=chunk_elements)
    mAP, cmc, mINP, n, skipped = brute_force_metrics(q, g, qid, gid, qcam, gcam, (1, 3, 10))
    assert m.n_queries == n and m.n_skipped == skipped
    assert m.mAP == pytest.approx(mAP) and m.mINP == pytest.approx(mINP)
    assert m.cmc == pytest.approx(cmc)


@pytest.mark.parametrize("cameras", [False, True])
def test_matches_brute_force_with_many_exact_ties(cameras: bool) -> None:
    # the gallery repeats 4 distinct vectors: nearly every distance is tied, ranks follow gallery order
    rng = np.random.default_rng(5)
    base = rng.normal(size=(4, 3))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    g = base[rng.integers(0, 4, 40)].astype(np.float32)
    q = base[rng.integers(0, 4, 12)].astype(np.float32)
    qid, gid = rng.integers(0, 3, 12), rng.integers(0, 3, 40)
    qcam, gcam = (rng.integers(0, 2, 12), rng.integers(0, 2, 40)) if cameras else (None, None)
    m = retrieval_metrics(q, g, qid, gid, qcam, gcam, ranks=(1, 2, 7))
    mAP, cmc, mINP, n, skipped = brute_force_metrics(q, g, qid, gid, qcam, gcam, (1, 2, 7))
    assert (m.n_queries, m.n_skipped) == (n, skipped)
    assert m.mAP == pytest.approx(mAP) and m.mINP == pytest.approx(mINP)
    assert m.cmc == pytest.approx(cmc)


def test_retrieval_rejects_bad_input_naming_the_argument() -> None:
    q, g = at_angles(0, 10), at_angles(20, 30, 40)
    with pytest.raises(ValueError, match="query_ids"):
        retrieval_metrics(q, g, [1], [1, 2, 3])
    with pytest.raises(ValueError, match="gallery_ids"):
        retrieval_metrics(q, g, [1, 2], [1, 2])
    with pytest.raises(ValueError, match="gallery_features"):
        retrieval_metrics(q, np.ones((3, 5), dtype=np.float32), [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="query_features"):
        retrieval_metrics(np.zeros((0, 2)), g, [], [1, 2, 3])
    with pytest.raises(ValueError, match="query_features"):
        retrieval_metrics(np.array([[np.nan, 1.0]]), g, [1], [1, 2, 3])
    with pytest.raises(ValueError, match="cameras"):
        retrieval_metrics(q, g, [1, 2], [1, 2, 3], query_cameras=[0, 0])
    with pytest.raises(ValueError, match="gallery_cameras"):
        retrieval_metrics(q, g, [1, 2], [1, 2, 3], [0, 0], [0, 0])
    for bad in ((), (0,), (1, -5), (1.5,)):
        with pytest.raises(ValueError, match="ranks"):
            retrieval_metrics(q, g, [1, 2], [1, 2, 3], ranks=bad)
    with pytest.raises(ValueError, match="chunk_elements"):
        retrieval_metrics(q, g, [1, 2], [1, 2, 3], chunk_elements=0)


# ---------------------------------------------------------------------- clustering scores
def test_pairwise_prf_hand_computed() -> None:
    # pred pairs {(0,1), (2,3)}; true pairs {(0,1), (0,2), (1,2), (3,4)}; agreed {(0,1)}
    p, r, f = pairwise_prf([0, 0, 1, 1, -1], [0, 0, 0, 1, 1])
    assert (p, r) == pytest.approx((0.5, 0.25))
    assert f == pytest.approx(2 * 0.5 * 0.25 / 0.75)


def test_pairwise_prf_edge_conventions() -> None:
    assert pairwise_prf([-1, -1, -1], [0, 0, 1]) == (1.0, 0.0, 0.0)  # no predicted pair
    assert pairwise_prf([0, 0, 1], [0, 1, 2]) == (0.0, 1.0, 0.0)  # no true pair
    assert pairwise_prf([4, 4, 7], [1, 1, 2]) == (1.0, 1.0, 1.0)


def brute_prf(pred: list[int], truth: list[int]) -> tuple[float, float, float]:
    tp = fp = fn = 0
    for a, b in itertools.combinations(range(len(pred)), 2):
        same_pred = pred[a] == pred[b] and pred[a] != -1
        same_true = truth[a] == truth[b] and truth[a] != -1
        tp += same_pred and same_true
        fp += same_pred and not same_true
        fn += same_true and not same_pred
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


labels_pair = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-1, 5), min_size=n, max_size=n),
        st.lists(st.integers(-1, 5), min_size=n, max_size=n),
    )
)


@settings(max_examples=80, deadline=None)
@given(labels_pair)
def test_pairwise_prf_matches_brute_force(case: tuple[list[int], list[int]]) -> None:
    pred, truth = case
    assert pairwise_prf(pred, truth) == pytest.approx(brute_prf(pred, truth))


@settings(max_examples=80, deadline=None)
@given(labels_pair)
def test_adjusted_rand_reads_minus_one_as_singletons(case: tuple[list[int], list[int]]) -> None:
    pred, truth = case
    fresh = iter(range(100, 200))
    singleton = [lab if lab != -1 else next(fresh) for lab in pred]
    fresh_t = iter(range(300, 400))
    singleton_t = [lab if lab != -1 else next(fresh_t) for lab in truth]
    assert adjusted_rand(pred, truth) == pytest.approx(adjusted_rand_score(singleton_t, singleton))


def test_adjusted_rand_known_values() -> None:
    assert adjusted_rand([0, 0, 1, 1], [5, 5, 9, 9]) == pytest.approx(1.0)
    # all outliers vs. two true pairs: no agreement beyond chance
    assert adjusted_rand([-1, -1, -1, -1], [0, 0, 1, 1]) == pytest.approx(0.0)


def test_clustering_scores_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="truth"):
        pairwise_prf([0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="pred"):
        adjusted_rand([], [])
    with pytest.raises(ValueError, match="pred"):
        pairwise_prf([[0, 1]], [0, 1])
    with pytest.raises(ValueError, match="truth"):
        adjusted_rand([0, 1], [0.5, 1.0])
