"""The validation gate's split and scores: what decides whether a model version is served."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.gate import ValidationGate


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _pool(n_ids: int = 40, views: int = 3, distractors: int = 200, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Verified identities (must-link triples) plus unverified distractors close to them."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_ids, 16)))
    ids = np.repeat(np.arange(n_ids), views)
    verified = _unit(centres[ids] + 0.15 * rng.normal(size=(ids.size, 16)))
    near = rng.integers(n_ids, size=distractors)
    others = _unit(centres[near] + 0.35 * rng.normal(size=(distractors, 16)))
    x = np.vstack([verified, others])
    must = np.array([(k * views + a, k * views + b) for k in range(n_ids) for a in range(views)
                     for b in range(a + 1, views)], dtype=np.int64)
    cannot = np.array([(k * views, ((k + 1) % n_ids) * views) for k in range(n_ids)], dtype=np.int64)
    return x, must, cannot, ids


def test_held_out_components_are_kept_out_of_training_and_stable() -> None:
    x, must, cannot, _ = _pool()
    gate = ValidationGate(folds=4)
    a = gate.split(x.shape[0], must, cannot)
    b = gate.split(x.shape[0], must[::-1], cannot)
    assert np.array_equal(a.images, b.images) and a.images.any()
    held = a.images
    for pairs in (a.train_must_link, a.train_cannot_link):
        assert not (held[pairs[:, 0]] | held[pairs[:, 1]]).any()
    assert all(held[i] and held[j] for i, j in a.positives)


def test_pool_distractors_tell_models_apart_where_verified_images_alone_saturate() -> None:
    """Two models that both separate the verified identities perfectly score the same against a
    verified-only gallery; the one that also keeps the unverified pool away scores higher."""
    x, must, cannot, ids = _pool()
    n_verified = ids.size
    gate = ValidationGate(folds=4, min_positives=2, min_negatives=1)
    holdout = gate.split(x.shape[0], must, cannot)
    tight = x.copy()
    # "collapsed": the distractors sit exactly on their nearest identity's images
    collapsed = x.copy()
    nearest = np.argmax(x[n_verified:] @ x[:n_verified].T, axis=1)
    collapsed[n_verified:] = x[nearest]
    good, bad = gate.score(tight, holdout), gate.score(collapsed, holdout)
    assert good["map"] > bad["map"] + 0.05
    verified_only = ValidationGate(folds=4, min_positives=2, min_negatives=1)
    sub = verified_only.split(n_verified, must, cannot)
    assert gate.score(tight[:n_verified], sub)["map"] == pytest.approx(
        gate.score(collapsed[:n_verified], sub)["map"])


def test_gallery_is_bounded_and_still_holds_every_verified_image() -> None:
    x, must, cannot, ids = _pool(distractors=500)
    holdout = ValidationGate(folds=4).split(x.shape[0], must, cannot)
    from trainer.gate import _verified_map

    small = _verified_map(x, holdout, max_gallery=ids.size)  # verified images only
    full = _verified_map(x, holdout, max_gallery=10**6)
    assert 0.0 < full <= small <= 1.0


def test_candidate_must_beat_frozen_and_keep_up_with_the_model_in_service() -> None:
    x, must, cannot, _ = _pool()
    gate = ValidationGate(folds=4, min_positives=2, min_negatives=1)
    holdout = gate.split(x.shape[0], must, cannot)
    rng = np.random.default_rng(1)
    noisy = _unit(x + 0.6 * rng.normal(size=x.shape))
    assert gate.decide(holdout, {"candidate": x, "frozen": noisy}, "frozen").served == "candidate"
    assert gate.decide(holdout, {"candidate": noisy, "frozen": x}, "frozen").served == "frozen"
    stays = gate.decide(holdout, {"candidate": noisy, "frozen": noisy, "previous": x}, "previous")
    assert stays.served == "previous" and "previous" in stays.scores
    falls = gate.decide(holdout, {"candidate": noisy, "frozen": x, "previous": noisy}, "previous")
    assert falls.served == "frozen"


def test_an_identity_the_model_in_service_learned_from_is_not_scored_on_any_view() -> None:
    x, must, cannot, ids = _pool()
    gate = ValidationGate(folds=4)
    everything = gate.split(x.shape[0], must, cannot)
    held_ids = np.unique(ids[everything.images[: ids.size]])
    learned, untouched = held_ids[0], held_ids[1]
    unseen = np.ones(x.shape[0], dtype=bool)
    unseen[np.flatnonzero(ids == learned)[0]] = False  # one view of it was trained on, earlier
    split = gate.split(x.shape[0], must, cannot, unseen=unseen)
    learned_rows = np.flatnonzero(ids == learned)
    assert split.images[learned_rows].all() and not split.scored[learned_rows].any()
    assert split.scored[np.flatnonzero(ids == untouched)].all()
    for pairs in (split.positives, split.negatives):
        assert not np.isin(pairs, learned_rows).any()
    assert split.positives.shape[0] == everything.positives.shape[0] - 3
    assert np.isin(everything.negatives, learned_rows).any()


def test_too_few_held_out_answers_keep_the_model_in_service() -> None:
    x, must, cannot, _ = _pool(n_ids=3)
    gate = ValidationGate(folds=2, min_positives=50)
    holdout = gate.split(x.shape[0], must, cannot)
    decision = gate.decide(holdout, {"candidate": x, "frozen": x}, "frozen")
    assert decision.served == "frozen" and "too few" in decision.reason


def test_a_second_fold_is_held_out_only_while_the_first_has_too_few_matches() -> None:
    x, must, cannot, _ = _pool(n_ids=30)
    n = x.shape[0]
    one = ValidationGate(folds=5).split(n, must, cannot)
    assert one.held_folds == 1  # the default holds out one fold whatever it holds
    enough = one.positives.shape[0]
    assert enough > 0
    assert ValidationGate(folds=5, min_positives=enough + 1).split(n, must, cannot).held_folds == 1
    # fold 0 suffices: nothing more is held out
    same = ValidationGate(folds=5, min_positives=enough, max_held_folds=2).split(n, must, cannot)
    assert same.held_folds == 1 and np.array_equal(same.images, one.images)
    # fold 0 falls short: folds 0 and 1, a superset, and training sees none of their answers
    more = ValidationGate(folds=5, min_positives=enough + 1, max_held_folds=2).split(n, must, cannot)
    assert more.held_folds == 2 and more.positives.shape[0] > enough
    assert (more.images >= one.images).all() and more.images.sum() > one.images.sum()
    for pairs in (more.train_must_link, more.train_cannot_link):
        assert not (more.images[pairs[:, 0]] | more.images[pairs[:, 1]]).any()
    decision = ValidationGate(folds=5, min_positives=enough + 1, max_held_folds=2).decide(
        more, {"candidate": x, "frozen": x}, "frozen")
    assert decision.held_out_folds == 2
    # no number of folds suffices: the one-fold split, and no candidate can be judged
    never = ValidationGate(folds=5, min_positives=10**6, max_held_folds=3)
    held = never.split(n, must, cannot)
    assert held.held_folds == 1 and not never.can_validate(held)


def test_split_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="max_held_folds"):
        ValidationGate(max_held_folds=0).split(4, np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="folds"):
        ValidationGate(folds=1).split(4, np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="unseen"):
        ValidationGate().split(4, np.zeros((0, 2)), np.zeros((0, 2)), unseen=np.ones(3, dtype=bool))


def test_cross_validation_holds_out_every_fold_once() -> None:
    x, must, cannot, _ = _pool(n_ids=30)
    n = x.shape[0]
    gate = ValidationGate(folds=5)
    folds = gate.split_folds(n, must, cannot)
    assert len(folds) == 5 and [h.fold_ids for h in folds] == [(f,) for f in range(5)]
    assert np.array_equal(folds[0].images, gate.split(n, must, cannot).images)  # fold 0 is split()'s
    held = np.stack([h.images for h in folds])
    assert (held.sum(axis=0) <= 1).all()  # disjoint
    assert np.array_equal(held.any(axis=0), np.arange(n) < 90)  # together: every verified image
    for h in folds:
        for pairs in (h.train_must_link, h.train_cannot_link):
            assert not (h.images[pairs[:, 0]] | h.images[pairs[:, 1]]).any()
    assert sum(h.positives.shape[0] for h in folds) == must.shape[0]


def _fold_scores(gate: ValidationGate, folds, candidate: float, frozen: float, previous: float | None = None):
    """Every fold scored with the same per-model score."""
    out = []
    for h in folds:
        scores = {"candidate": {"score": candidate, "map": candidate},
                  "frozen": {"score": frozen, "map": frozen}}
        if previous is not None:
            scores["previous"] = {"score": previous, "map": previous}
        out.append((h, scores))
    return out


def test_pooled_decision_weighs_folds_by_their_matches_and_keeps_the_rule() -> None:
    x, must, cannot, _ = _pool(n_ids=30)
    gate = ValidationGate(folds=5, min_positives=10)
    folds = gate.split_folds(x.shape[0], must, cannot)
    assert not gate.can_validate(folds[0]) or folds[0].positives.shape[0] >= 10
    wins = gate.decide_pooled(_fold_scores(gate, folds, 0.8, 0.7), "frozen")
    assert wins.served == "candidate" and "pooled over 5 folds" in wins.reason
    assert wins.pooled_folds == 5 and wins.held_out_positives == must.shape[0]
    behind = gate.decide_pooled(_fold_scores(gate, folds, 0.8, 0.7, previous=0.9), "previous")
    assert behind.served == "previous"
    worse = gate.decide_pooled(_fold_scores(gate, folds, 0.6, 0.7, previous=0.65), "previous")
    assert worse.served == "frozen"
    # a fold with many matches outweighs one with few: 0.8 on the big one wins over 0.6 on the small
    ranked = sorted(folds, key=lambda h: -h.positives.shape[0])
    big, small = ranked[0], ranked[-1]
    assert big.positives.shape[0] > small.positives.shape[0] > 0
    mixed = [(big, {"candidate": {"score": 0.8}, "frozen": {"score": 0.7}}),
             (small, {"candidate": {"score": 0.6}, "frozen": {"score": 0.75}})]
    decision = ValidationGate(folds=5, min_positives=1).decide_pooled(mixed, "frozen")
    expected = np.average([0.8, 0.6], weights=[big.positives.shape[0], small.positives.shape[0]])
    assert decision.scores["candidate"]["score"] == pytest.approx(expected)
    assert decision.served == ("candidate" if expected > np.average(
        [0.7, 0.75], weights=[big.positives.shape[0], small.positives.shape[0]]) else "frozen")


def test_pooled_decision_needs_enough_matches_and_the_served_candidates_own_fold() -> None:
    x, must, cannot, _ = _pool(n_ids=30)
    gate = ValidationGate(folds=5, min_positives=10**6)
    folds = gate.split_folds(x.shape[0], must, cannot)
    assert not gate.can_validate_pooled(folds)
    few = gate.decide_pooled(_fold_scores(gate, folds, 0.9, 0.1), "frozen")
    assert few.served == "frozen" and "too few" in few.reason
    ok = ValidationGate(folds=5, min_positives=1)
    scored = _fold_scores(ok, folds, 0.9, 0.1)
    scored[0] = (folds[0], {"candidate": {"score": float("nan")}, "frozen": {"score": 0.1}})
    unscored = ok.decide_pooled(scored, "frozen")
    assert unscored.served == "frozen" and "own held-out fold" in unscored.reason
