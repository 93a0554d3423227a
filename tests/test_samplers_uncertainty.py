"""Uncertainty + diversity sampler (ALGORITHMS.md §6)."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from strategies.constraints import ConstraintGraph
from strategies.samplers import PoolExhaustedError, UncertaintySampler, make_sampler
from strategies.samplers.coreset import k_center_greedy
from strategies.samplers.uncertainty import identity_uncertainty, make_units


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _labelled_graph() -> ConstraintGraph:
    """Identities {0,1} and {2,3} (must-links), told apart by a cannot-link."""
    g = ConstraintGraph()
    g.add("m1", 0, 1, "must_link")
    g.add("m2", 2, 3, "must_link")
    g.add("c1", 1, 2, "cannot_link")
    return g


# ----------------------------------------------------------------------------- the math


def test_entropy_is_one_for_a_tie_and_near_zero_for_a_clear_winner() -> None:
    s = np.array([[0.8, 0.8, 0.8], [0.9, 0.1, 0.0]])
    u = identity_uncertainty(s, tau=0.05, measure="entropy")
    assert u[0] == pytest.approx(1.0)
    assert u[1] < 1e-5


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_entropy_and_margin_match_the_textbook_softmax(tau: float) -> None:
    s = np.random.default_rng(0).uniform(-1, 1, size=(50, 7))
    z = s / tau
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    entropy = -(p * np.log(p)).sum(axis=1) / np.log(7)
    top = -np.sort(-p, axis=1)
    assert np.allclose(identity_uncertainty(s, tau=tau, measure="entropy"), entropy, atol=1e-6)
    assert np.allclose(
        identity_uncertainty(s, tau=tau, measure="margin"), 1 - (top[:, 0] - top[:, 1]), atol=1e-6
    )


def test_margin_and_spread_measures() -> None:
    s = np.array([[0.5, 0.5], [1.0, -1.0]])
    assert identity_uncertainty(s, measure="margin").tolist() == pytest.approx([1.0, 0.0], abs=1e-9)
    assert identity_uncertainty(s, measure="spread").tolist() == pytest.approx([1.0, 0.5])


def test_uncertainty_is_zero_with_fewer_than_two_identities_and_checks_the_measure() -> None:
    assert identity_uncertainty(np.ones((3, 1))).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="measure"):
        identity_uncertainty(np.ones((2, 2)), measure="variance")


def test_units_are_renormalised_tracklet_means() -> None:
    x = _unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.2]]))
    units = make_units(x, np.array([7, 7, -1, 3]))
    assert units.of_item.tolist() == [0, 0, 1, 2]
    assert np.allclose(units.features[0], _unit(np.array([[1.0, 1.0]]))[0], atol=1e-6)
    assert np.allclose(np.linalg.norm(units.features, axis=1), 1.0)
    assert units.rep[1] == 2 and units.rep[2] == 3


# ----------------------------------------------------------------------------- selection behaviour


@pytest.mark.parametrize("seed", [0, 3])
def test_cold_start_equals_k_center_greedy(seed: int) -> None:
    x = _unit(np.random.default_rng(seed).normal(size=(40, 6)))  # no near-duplicates at d=6
    sel = UncertaintySampler(random_state=seed).select_units(x, ConstraintGraph(), 10)
    assert sel.cold_start
    expected = [p for p, _ in islice(k_center_greedy(x, random_state=seed), 10)]
    assert sel.units.tolist() == expected


def test_near_duplicates_are_never_both_selected() -> None:
    rng = np.random.default_rng(1)
    base = _unit(rng.normal(size=(10, 8)))
    dups = _unit(base + 0.01 * rng.normal(size=base.shape))  # cos >= 0.99 to their originals
    x = np.concatenate([base, dups])
    g = ConstraintGraph()
    g.add("c", 0, 1, "cannot_link")
    for lam_d in (0.0, 0.5):  # with lambda_d = 0 only the duplicate rule keeps them apart
        sel = UncertaintySampler(lambda_d=lam_d, lambda_u=1.0).select_units(x, g, 18)
        picked = x[sel.units]
        sims = picked @ picked.T
        np.fill_diagonal(sims, -1.0)
        assert sims.max() < 0.95
        assert sel.skipped_near_duplicate > 0


def test_warm_start_prefers_units_between_identities() -> None:
    # identity A around e1, identity B around e2; unit 4 lies halfway, unit 5 sits on A
    x = _unit(
        np.array(
            [
                [1.0, 0.0, 0.0],
                [0.99, 0.05, 0.0],
                [0.0, 1.0, 0.0],
                [0.05, 0.99, 0.0],
                [0.7, 0.7, 0.1],
                [0.98, 0.02, 0.1],
            ]
        )
    )
    sel = UncertaintySampler(lambda_u=1.0, lambda_d=0.0).select_units(x, _labelled_graph(), 1)
    assert sel.units.tolist() == [4]
    assert sel.uncertainty[0] > 0.9


def test_coverage_updates_as_the_batch_grows() -> None:
    rng = np.random.default_rng(2)
    x = _unit(rng.normal(size=(60, 5)))
    g = _labelled_graph()
    sel = UncertaintySampler(lambda_u=0.0, lambda_d=1.0).select_units(x, g, 6)
    # pure coverage with labelled centres = k-centre greedy from the labelled rows
    initial = np.zeros(60, dtype=bool)
    initial[[0, 1, 2, 3]] = True
    assert sel.units.tolist() == [p for p, _ in islice(k_center_greedy(x, initial), 6)]
    assert all(a >= b - 1e-9 for a, b in zip(sel.coverage, sel.coverage[1:], strict=False))


def test_pairs_target_the_top_identities_of_each_unit() -> None:
    x = _unit(
        np.array([[1.0, 0.0, 0.0], [0.99, 0.05, 0.0], [0.0, 1.0, 0.0], [0.05, 0.99, 0.0], [0.7, 0.7, 0.1]])
    )
    result = UncertaintySampler(top_identities=2).select(x, _labelled_graph(), 2)
    best_a = max((0, 1), key=lambda r: float(x[4] @ x[r]))
    best_b = max((2, 3), key=lambda r: float(x[4] @ x[r]))
    first = best_a if x[4] @ x[best_a] >= x[4] @ x[best_b] else best_b  # identity rank = similarity
    second = best_b if first == best_a else best_a
    assert result.pairs() == [(first, 4), (second, 4)]
    assert {p.pool for p in result.proposals} == {"uncertainty"}
    assert result.proposals[0].priority == result.proposals[1].priority


def test_one_pick_per_camera_segment() -> None:
    rng = np.random.default_rng(3)
    x = _unit(rng.normal(size=(30, 6)))
    cams = np.array(["c1", "c2"] * 15)
    times = np.repeat([0.0, 100.0, 200.0], 10)
    s = UncertaintySampler(one_per_segment=True, segment_seconds=60.0)
    sel = s.select_units(x, _labelled_graph(), 30, cameras=cams, timestamps=times)
    keys = [(cams[r], int(times[r] // 60)) for r in sel.rep]
    assert len(keys) == len(set(keys))
    assert len(keys) <= 6 and sel.skipped_segment > 0


def test_tracklets_are_selected_as_units_and_never_paired_with_themselves() -> None:
    rng = np.random.default_rng(4)
    x = _unit(rng.normal(size=(24, 6)))
    tracklets = np.repeat(np.arange(8), 3)
    g = ConstraintGraph()
    g.add("c", 0, 3, "cannot_link")  # tracklets 0 and 1 are labelled
    for provisional in (1, 0):
        result = UncertaintySampler(provisional_identities=provisional).select(x, g, 6, tracklets=tracklets)
        assert len(result.pairs()) == 6
        for i, j in result.pairs():
            assert tracklets[i] != tracklets[j]
            if not provisional:  # pairs only with the labelled identities (tracklets 0 and 1)
                assert tracklets[i] in (0, 1) or tracklets[j] in (0, 1)


def _clusters(
    n_clusters: int, size: int, dim: int, spread: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tight, well-separated identities: ``size`` images around each of ``n_clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_clusters, dim)))
    labels = np.repeat(np.arange(n_clusters), size)
    return _unit(centres[labels] + spread * rng.normal(size=(labels.size, dim))), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cold_start_pairs_each_pick_with_its_nearest_units(seed: int) -> None:
    # k-centre picks land in different identities; pairing them with each other (the old cold start)
    # gave only "different" answers. Each pick must be paired with its top_identities nearest images.
    x, labels = _clusters(12, 6, 16, 0.15, seed)
    result = UncertaintySampler(top_identities=3, random_state=seed).select(x, ConstraintGraph(), 15)
    picks = UncertaintySampler(random_state=seed).select_units(x, ConstraintGraph(), 5)
    assert len(result.pairs()) == 15
    same = np.mean([labels[i] == labels[j] for i, j in result.pairs()])
    assert same >= 0.8
    pairs = set(result.pairs())
    for p in picks.units.tolist():
        sims = x @ x[p]
        sims[p] = -np.inf
        nearest = np.argsort(-sims, kind="stable")[:3]
        assert {(min(p, int(j)), max(p, int(j))) for j in nearest} <= pairs
    assert all("nearest unit" in p.reason for p in result.proposals)


def test_warm_start_pick_of_an_unseen_identity_is_paired_with_its_neighbours() -> None:
    x, labels = _clusters(8, 5, 16, 0.15, 7)
    g = ConstraintGraph()
    for c in range(2):  # identities 0 and 1 are labelled; 2..7 are unseen
        rows = np.flatnonzero(labels == c)
        for k, r in enumerate(rows[1:]):
            g.add(f"m{c}-{k}", int(rows[0]), int(r), "must_link")
    g.add("c", 0, 5, "cannot_link")
    labelled = set(range(10))
    on = UncertaintySampler(top_identities=2, provisional_identities=2).select(x, g, 8)
    one = UncertaintySampler(top_identities=2).select(x, g, 8)  # default: at most one neighbour per pick
    off = UncertaintySampler(top_identities=2, provisional_identities=0).select(x, g, 8)
    assert len(on.pairs()) == len(one.pairs()) == len(off.pairs()) == 8
    # without provisional identities every pair involves a labelled image and is a "different" answer
    assert all(i in labelled or j in labelled for i, j in off.pairs())
    assert not any(labels[i] == labels[j] for i, j in off.pairs())
    # with them, picks of unseen identities are asked about their nearest (same-identity) neighbours
    assert np.mean([labels[i] == labels[j] for i, j in on.pairs()]) >= 0.75
    assert any("unlabelled unit" in p.reason for p in on.proposals)
    # the default asks each pick about at most one nearest unlabelled unit, and those pairs are "same"
    near = [p for p in one.proposals if "unlabelled unit" in p.reason]
    assert near and all(labels[p.i] == labels[p.j] for p in near)
    picks = [p.reason.split(":")[0] for p in near]
    assert len(picks) == len(set(picks))


def test_a_pick_near_a_labelled_identity_is_still_paired_with_it() -> None:
    # units 4 and 5 sit on either side of identity {0, 1}, closer to it (cos 0.95) than to each other
    # (cos 0.82): whichever is picked, the labelled identity outranks the unlabelled neighbour
    x = _unit(
        np.array(
            [
                [1.0, 0.0, 0.0],
                [0.99, 0.05, 0.0],
                [0.0, 1.0, 0.0],
                [0.05, 0.99, 0.0],
                [0.95, 0.0, 0.3],
                [0.95, 0.0, -0.3],
            ]
        )
    )
    result = UncertaintySampler(top_identities=1).select(x, _labelled_graph(), 1)
    ((i, j),) = result.pairs()
    assert {i, j} & {0, 1} and {i, j} & {4, 5}
    assert "labelled identity" in result.proposals[0].reason


def test_text_term_raises_uncertainty_where_modalities_disagree() -> None:
    x = _unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05], [1.0, -0.05]]))
    text = _unit(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))  # unit 2's text says B
    g = ConstraintGraph()
    g.add("c", 0, 1, "cannot_link")
    s = UncertaintySampler(lambda_u=1.0, lambda_d=0.0, lambda_text=1.0)
    with_text = s.select_units(x, g, 2, text_embeddings=text)
    assert with_text.units.tolist()[0] == 2
    assert with_text.uncertainty[0] > 0.4
    no_text = UncertaintySampler(lambda_u=1.0, lambda_d=0.0).select_units(x, g, 2)
    assert max(no_text.uncertainty) < 0.1


def test_determinism_and_exhaustion() -> None:
    x = _unit(np.random.default_rng(5).normal(size=(20, 4)))
    a = UncertaintySampler(random_state=1).select(x, ConstraintGraph(), 7)
    b = UncertaintySampler(random_state=1).select(x, ConstraintGraph(), 7)
    assert a.proposals == b.proposals
    assert len(a.proposals) == 7
    g = ConstraintGraph()
    for k in range(1, 4):
        g.add(f"m{k}", 0, k, "must_link")
    with pytest.raises(PoolExhaustedError, match="uncertainty"):
        UncertaintySampler().select(x[:4], g, 3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"tau": 0.0}, "tau"),
        ({"lambda_u": -1.0}, "lambda_u"),
        ({"near_duplicate": 2.0}, "near_duplicate"),
        ({"top_identities": 0}, "top_identities"),
        ({"uncertainty": "variance"}, "uncertainty"),
        ({"lambda_text": -0.1}, "lambda_text"),
        ({"segment_seconds": 0.0}, "segment_seconds"),
        ({"provisional_identities": "yes"}, "provisional_identities"),
        ({"provisional_identities": -1}, "provisional_identities"),
        ({"provisional_identities": True}, "provisional_identities"),
    ],
)
def test_parameter_validation_names_the_parameter(kwargs: dict, name: str) -> None:
    x = _unit(np.random.default_rng(6).normal(size=(6, 3)))
    with pytest.raises(ValueError, match=name):
        make_sampler("uncertainty", **kwargs).select(x, ConstraintGraph(), 2)


def test_select_units_rejects_a_bad_count() -> None:
    x = _unit(np.random.default_rng(6).normal(size=(6, 3)))
    with pytest.raises(ValueError, match="n_units"):
        UncertaintySampler().select_units(x, ConstraintGraph(), 0)
