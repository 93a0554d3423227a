"""The sampler interface: proposals, registry, input validation, numeric helpers."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.constraints import ConstraintGraph
from strategies.samplers import (
    EmptyPoolError,
    PairProposal,
    PairSampler,
    available_samplers,
    make_sampler,
    register_sampler,
)
from strategies.samplers.numeric import labelled_items, take_unresolved, unique_pairs, unresolved_mask
from strategies.validation import check_features
from strategies.view import ClusteringView


def _x(n: int, d: int = 4, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_registry_lists_the_strategies() -> None:
    assert available_samplers() == [
        "aas", "coreset", "hybrid", "margin", "match_first", "random", "uncertainty"
    ]
    for name in available_samplers():
        s = make_sampler(name, random_state=5)
        assert isinstance(s, PairSampler)
        assert s.name == name
        assert s.get_params()["random_state"] == 5


def test_unknown_sampler_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown sampler name 'lbas'.*aas"):
        make_sampler("lbas")


def test_register_rejects_a_nameless_or_clashing_class() -> None:
    class Nameless(PairSampler):
        def _propose(self, *args, **kwargs):  # type: ignore[override]
            raise AssertionError

    with pytest.raises(TypeError, match="name"):
        register_sampler(Nameless)

    class Clash(Nameless):
        name = "random"

    with pytest.raises(ValueError, match="already registered"):
        register_sampler(Clash)


def test_pair_proposal_validates_its_fields() -> None:
    PairProposal(1, 2, 0.5, 0.5, "random", "random", "ok")
    with pytest.raises(ValueError, match="i < j"):
        PairProposal(2, 1, 0.5, 0.5, "random", "random", "bad")
    with pytest.raises(ValueError, match="i < j"):
        PairProposal(3, 3, 0.5, 0.5, "random", "random", "bad")
    with pytest.raises(ValueError, match="priority"):
        PairProposal(1, 2, 1.5, 0.5, "random", "random", "bad")
    with pytest.raises(ValueError, match="p_same"):
        PairProposal(1, 2, 0.5, -0.1, "random", "random", "bad")


@pytest.mark.parametrize("name", ["aas", "coreset", "margin", "random", "uncertainty"])
def test_every_strategy_rejects_an_empty_pool(name: str) -> None:
    s = make_sampler(name)
    with pytest.raises(EmptyPoolError, match="at least 2"):
        s.select(_x(1), ConstraintGraph(), 3)
    with pytest.raises(EmptyPoolError):
        s.select(np.zeros((0, 4), dtype=np.float32), ConstraintGraph(), 3)
    with pytest.raises(EmptyPoolError):
        s.select(None, ConstraintGraph(), 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"budget": 0}, ValueError, "budget"),
        ({"budget": 2.5}, TypeError, "budget"),
        ({"budget": True}, TypeError, "budget"),
        ({"embeddings": np.ones(8)}, ValueError, "embeddings must be a 2-D"),
        ({"embeddings": np.full((4, 2), np.nan)}, ValueError, "NaN"),
        ({"embeddings": np.zeros((4, 2))}, ValueError, "all-zero rows"),
        ({"embeddings": np.array([["a", "b"], ["c", "d"]])}, ValueError, "numeric"),
        ({"constraints": [(0, 1)]}, TypeError, "constraints must be a ConstraintGraph"),
        ({"cameras": np.zeros(3)}, ValueError, "cameras"),
        ({"tracklets": np.zeros((6, 1))}, ValueError, "tracklets"),
        ({"timestamps": np.zeros(2)}, ValueError, "timestamps"),
        ({"timestamps": np.array(["x"] * 6)}, ValueError, "timestamps must be numbers"),
        ({"timestamps": np.full(6, np.nan)}, ValueError, "timestamps contains NaN"),
        ({"text_embeddings": np.ones((3, 2))}, ValueError, "text_embeddings"),
        ({"view": {"knn": None}}, TypeError, "view"),
        ({"view": ClusteringView(_x(5))}, ValueError, "view covers 5 rows"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs: dict, exc: type, match: str) -> None:
    args = {"embeddings": _x(6), "constraints": ConstraintGraph(), "budget": 2}
    args.update(kwargs)
    embeddings, constraints, budget = args.pop("embeddings"), args.pop("constraints"), args.pop("budget")
    for name in available_samplers():
        with pytest.raises(exc, match=match):
            make_sampler(name).select(embeddings, constraints, budget, **args)


def test_constraints_beyond_the_embeddings_are_rejected() -> None:
    g = ConstraintGraph()
    g.add("a", 0, 9, "must_link")
    with pytest.raises(ValueError, match="row 9"):
        make_sampler("random").select(_x(5), g, 1)


def test_embeddings_are_renormalised_and_copied() -> None:
    raw = np.array([[3.0, 4.0], [0.0, 2.0]])
    out = check_features(raw, unit_norm="normalise")
    assert out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert raw[0, 0] == 3.0


def test_unique_pairs_normalises_and_drops_self_and_duplicates() -> None:
    i, j, first = unique_pairs(np.array([3, 1, 2, 2, 0]), np.array([1, 3, 2, 0, 2]), 4)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(1, 3), (0, 2)]
    assert first.tolist() == [0, 3]


def test_unresolved_mask_and_lazy_take() -> None:
    g = ConstraintGraph()
    g.add("m", 0, 1, "must_link")
    g.add("m2", 1, 2, "must_link")
    g.mark_asked(3, 4)
    i = np.array([0, 0, 3, 4, 5])
    j = np.array([2, 0, 4, 5, 6])
    assert unresolved_mask(g, i, j).tolist() == [False, False, False, True, True]
    assert take_unresolved(i, j, g, 1).tolist() == [3]
    assert take_unresolved(i, j, g, 5, chunk=2).tolist() == [3, 4]


def test_labelled_items_marks_constraint_ends_only() -> None:
    g = ConstraintGraph()
    g.add("m", 0, 4, "must_link")
    g.add("c", 2, 4, "cannot_link")
    g.mark_asked(1, 3)  # asked, not answered: not labelled
    assert labelled_items(g, 6).tolist() == [True, False, True, False, True, False]
