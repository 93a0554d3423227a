"""run_cycle end to end on synthetic pools: sampler invariants, identities, the validation gate, registry
versions, edge cases."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from strategies.constraints import ConstraintGraph, Relation
from trainer.adapter import Adapter, TrainConfig, apply_adapter
from trainer.cycle import CycleConfig, CycleResult, run_cycle
from trainer.gate import ValidationGate
from trainer.registry import ModelRegistry

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 32


@pytest.fixture(scope="module")
def pool() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cam_vectors = rng.normal(size=(3, D))
    cam_vectors /= np.linalg.norm(cam_vectors, axis=1, keepdims=True)
    centres = rng.normal(size=(30, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ids = np.repeat(np.arange(30), 10)
    cams = rng.integers(0, 3, size=ids.size)
    x = centres[ids] + cam_vectors[cams] + 0.5 * rng.normal(size=(ids.size, D)) / np.sqrt(D)
    return {"x": x.astype(np.float32), "ids": ids, "cams": cams}


def answered_graph(ids: np.ndarray, n_answers: int, seed: int = 0) -> ConstraintGraph:
    """Simulated annotator: some same-identity pairs (ML), some random pairs (mostly CL), a few asked."""
    rng = np.random.default_rng(seed)
    graph = ConstraintGraph()
    for k in range(n_answers):
        if k % 2 == 0:
            members = np.flatnonzero(ids == rng.integers(ids.max() + 1))
            i, j = rng.choice(members, size=2, replace=False)
        else:
            i, j = rng.choice(ids.size, size=2, replace=False)
        graph.add(f"a{k}", int(i), int(j), "must_link" if ids[i] == ids[j] else "cannot_link")
    graph.mark_asked(5, 6)
    graph.mark_asked(100, 250)
    return graph


def cycle_config(**overrides: object) -> CycleConfig:
    train = TrainConfig(epochs=2, batch_size=64, hidden_dim=32, device="cpu")
    gate = ValidationGate(min_positives=2, min_negatives=1)
    params: dict[str, object] = {"budget": 15, "train": train, "gate": gate}
    params.update(overrides)
    return CycleConfig(**params)  # type: ignore[arg-type]


def assert_sampler_invariants(result: CycleResult, graph: ConstraintGraph, budget: int) -> None:
    pairs = [(p.i, p.j) for p in result.proposals]
    assert len(pairs) <= budget
    assert len(set(pairs)) == len(pairs)
    for i, j in pairs:
        assert 0 <= i < j < result.embeddings.shape[0]
        assert not graph.was_asked(i, j)
        assert graph.relation(i, j) is Relation.UNKNOWN
    assert result.shortfall == budget - len(pairs)


def assert_labels_respect_constraints(labels: np.ndarray, graph: ConstraintGraph) -> None:
    for c in graph.must_links():
        assert labels[c.i] == labels[c.j] and labels[c.i] >= 0
    for c in graph.cannot_links():
        assert labels[c.i] != labels[c.j] or labels[c.i] < 0


STAGES = {"load", "embed", "review", "identify", "train", "validate", "recluster", "calibrate", "sample",
          "save", "total"}


@pytest.mark.parametrize("strategy", ["hybrid", "match_first", "aas", "uncertainty", "random", "coreset",
                                      "margin"])
def test_run_cycle_end_to_end_with_registry(
    pool: dict[str, np.ndarray], tmp_path: Path, strategy: str
) -> None:
    graph = answered_graph(pool["ids"], 60)
    registry = ModelRegistry(tmp_path, "proj")
    lines: list[str] = []
    result = run_cycle(
        pool["x"], graph, cycle_config(strategy=strategy), registry=registry, cameras=pool["cams"],
        log=lines.append,
    )
    assert result.reviewed is not None
    trusted = result.reviewed.graph
    assert_sampler_invariants(result, trusted, 15)
    assert len(result.proposals) > 0
    assert all(p.strategy == strategy for p in result.proposals)
    assert_labels_respect_constraints(result.pseudo_labels, trusted)
    m = result.metrics
    assert m["trained"] == 1 and m["exhausted"] == 0 and m["served"] in ("candidate", "frozen")
    assert m["n_constraints"] == 60 and m["pairs_proposed"] == len(result.proposals)
    assert m["identities"] == result.identities.n_identities >= 2
    assert m["gate_held_out_positives"] >= 2 and m["gate_held_out_negatives"] >= 1
    assert {"gate_candidate_auc", "gate_frozen_map", "gate_candidate_score"} <= set(m)
    assert {"loss_first", "loss_last", "loss_cluster", "loss_pair"} <= set(m)
    assert set(result.timings) == STAGES and all(v >= 0 for v in result.timings.values())
    assert result.calibrator.to_dict()["mode"] in ("prior", "logistic")
    assert any("saved version" in line for line in lines) and any("gate:" in line for line in lines)

    assert result.version is not None and registry.latest() == result.version
    saved = registry.load(result.version)
    np.testing.assert_allclose(np.asarray(saved.embeddings), result.embeddings, atol=1e-6)
    np.testing.assert_allclose(apply_adapter(saved.adapter_state, pool["x"]), result.embeddings, atol=1e-5)
    assert (saved.adapter_state is None) == (m["served"] == "frozen")
    np.testing.assert_array_equal(np.load(io.BytesIO(saved.extra["pseudo_labels.npy"])), result.pseudo_labels)
    ids = np.load(io.BytesIO(saved.extra["identities.npz"]))
    np.testing.assert_array_equal(ids["labels"], result.identities.labels)
    np.testing.assert_array_equal(ids["verified"], result.identities.verified)
    assert json.loads(saved.extra["gate.json"])["served"] == m["served"]
    assert json.loads(saved.extra["calibrator.json"]) == result.calibrator.to_dict()
    assert [(p["i"], p["j"]) for p in json.loads(saved.extra["proposals.json"])] == [
        (p.i, p.j) for p in result.proposals
    ]
    assert saved.metrics["pairs_proposed"] == len(result.proposals)
    assert saved.config["strategy"] == strategy and saved.config["train"]["epochs"] == 2


def test_no_answers_keeps_the_frozen_encoder(pool: dict[str, np.ndarray], tmp_path: Path) -> None:
    result = run_cycle(pool["x"], None, cycle_config(), registry=ModelRegistry(tmp_path, "cold"))
    m = result.metrics
    assert m["trained"] == 0 and m["skipped_unvalidated"] == 1 and m["served"] == "frozen"
    normalised = pool["x"] / np.linalg.norm(pool["x"], axis=1, keepdims=True)
    np.testing.assert_allclose(result.embeddings, normalised, atol=1e-6)
    assert result.train_result is None and result.gate is None and len(result.proposals) > 0
    assert ModelRegistry(tmp_path, "cold").load().adapter_state is None
    assert result.metrics["images_verified"] == 0 and result.identities.n_identities >= 2


def test_the_gate_never_serves_a_model_that_validates_worse(
    pool: dict[str, np.ndarray], tmp_path: Path
) -> None:
    graph = answered_graph(pool["ids"], 60)
    # a learning rate that wrecks the embedding: the candidate must lose to the frozen encoder
    wild = cycle_config(train=TrainConfig(epochs=3, batch_size=64, hidden_dim=32, lr=50.0, device="cpu"))
    result = run_cycle(pool["x"], graph, wild, registry=ModelRegistry(tmp_path, "wild"), cameras=pool["cams"])
    gate = result.gate
    assert gate is not None and result.metrics["trained"] == 1
    assert gate.scores["candidate"]["score"] < gate.scores["frozen"]["score"]
    assert gate.served == "frozen" and result.metrics["served"] == "frozen"
    normalised = pool["x"] / np.linalg.norm(pool["x"], axis=1, keepdims=True)
    np.testing.assert_allclose(result.embeddings, normalised, atol=1e-6)
    assert ModelRegistry(tmp_path, "wild").load().adapter_state is None


def test_the_served_model_is_the_next_incumbent_and_same_answers_do_not_drift(
    pool: dict[str, np.ndarray], tmp_path: Path
) -> None:
    graph = answered_graph(pool["ids"], 60)
    registry = ModelRegistry(tmp_path, "proj")
    config = cycle_config(train=TrainConfig(epochs=4, batch_size=64, hidden_dim=32, device="cpu"))
    first = run_cycle(pool["x"], graph, config, registry=registry, cameras=pool["cams"])
    second = run_cycle(pool["x"], graph, config, registry=registry, cameras=pool["cams"])
    assert second.previous_version == first.version and second.version != first.version
    # no new answer: nothing is trained and the model in service does not move
    assert second.metrics["trained"] == 0 and second.metrics["skipped_no_new_answers"] == 1
    np.testing.assert_allclose(second.embeddings, first.embeddings, atol=1e-5)
    np.testing.assert_array_equal(second.pseudo_labels, first.pseudo_labels)
    # a new answer: a new candidate, judged against the model in service
    ids = pool["ids"]
    i, j = (int(r) for r in np.flatnonzero(ids == 7)[:2])
    graph.add("new", i, j, "must_link")
    third = run_cycle(pool["x"], graph, config, registry=registry, cameras=pool["cams"])
    assert third.metrics["trained"] == 1 and third.gate is not None
    assert ("previous" in third.gate.scores) == (first.metrics["served"] != "frozen")
    # training off: the cycle serves the saved adapter again
    fourth = run_cycle(pool["x"], graph, cycle_config(train_when_fewer_than=10), registry=registry)
    assert fourth.metrics["trained"] == 0 and fourth.metrics["skipped_no_new_answers"] == 1
    np.testing.assert_allclose(fourth.embeddings, third.embeddings, atol=1e-5)
    assert registry.latest() == fourth.version and len(registry.list()) == 4


def test_fewer_than_two_training_identities_skips_training(tmp_path: Path) -> None:
    # two verified individuals; the one whose first row is 12 is held out (fold 0 of 5), leaving one
    rng = np.random.default_rng(1)
    centres = np.eye(D)[:2]
    rows = np.array([0] * 12 + [1] * 8)
    x = (centres[rows] + 0.01 * rng.normal(size=(20, D))).astype(np.float32)
    graph = ConstraintGraph()
    for k in range(19):
        if rows[k] == rows[k + 1]:
            graph.add(f"m{k}", k, k + 1, "must_link")
    graph.add("c", 0, 12, "cannot_link")
    result = run_cycle(x, graph, cycle_config(strategy="random", budget=5),
                       registry=ModelRegistry(tmp_path, "two"))
    assert result.metrics["trained"] == 0 and result.metrics["skipped_few_clusters"] == 1
    assert result.version is not None and result.metrics["served"] == "frozen"
    assert ModelRegistry(tmp_path, "two").load().adapter_state is None


def test_exhausted_pool_returns_no_proposals(tmp_path: Path) -> None:
    x = np.random.default_rng(2).normal(size=(5, D)).astype(np.float32)
    graph = ConstraintGraph()
    for i in range(5):
        for j in range(i + 1, 5):
            graph.mark_asked(i, j)
    registry = ModelRegistry(tmp_path, "tiny")
    result = run_cycle(x, graph, cycle_config(strategy="random", budget=3), registry=registry)
    assert result.proposals == [] and result.shortfall == 3
    assert result.metrics["exhausted"] == 1 and result.metrics["pairs_proposed"] == 0
    assert result.version == registry.latest()


def test_cycle_is_deterministic_and_accepts_constraint_json(pool: dict[str, np.ndarray]) -> None:
    graph = answered_graph(pool["ids"], 16, seed=3)
    a = run_cycle(pool["x"], graph, cycle_config(), cameras=pool["cams"])
    b = run_cycle(pool["x"], graph.to_json(), cycle_config(), cameras=pool["cams"])
    assert [(p.i, p.j) for p in a.proposals] == [(p.i, p.j) for p in b.proposals]
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.pseudo_labels, b.pseudo_labels)


def test_a_contradiction_is_split_and_reviewed_not_fatal(pool: dict[str, np.ndarray]) -> None:
    graph = ConstraintGraph()
    graph.add("m1", 0, 1, "must_link")
    graph.add("m2", 1, 2, "must_link")
    graph.add("c1", 0, 2, "cannot_link")  # contradicts the ML path 0-1-2
    config = cycle_config(strategy="random", redundancy_k=1)  # the model doubts these random pairs
    result = run_cycle(pool["x"], graph, config)
    assert result.metrics["contradictions"] == 1 and result.metrics["contradictions_open"] == 1
    # under review: the group is split at its weakest link and the suspect pair is asked first
    labels = result.pseudo_labels
    assert labels[0] != labels[2]
    assert [r.kind for r in result.reviews] == ["contradiction"]
    assert result.reviews[0].pair in {(0, 1), (1, 2), (0, 2)}
    assert result.metrics["reviews_open"] == 1
    graph.add("m2-again", 1, 2, "must_link")
    graph.add("c1-again", 0, 2, "must_link")  # the reviews side with the must-links
    settled = run_cycle(pool["x"], graph, config)
    assert settled.metrics["contradictions_open"] == 0
    assert [(r.pair, r.kind) for r in settled.reviews] == [((0, 2), "disagreement")]  # one to one on (0, 2)
    assert settled.pseudo_labels[0] == settled.pseudo_labels[1] == settled.pseudo_labels[2]


def test_a_doubted_same_waits_for_a_second_opinion(pool: dict[str, np.ndarray]) -> None:
    x = pool["x"]
    sims = x @ x.T
    i, j = np.unravel_index(np.argmin(sims), sims.shape)  # the least alike pair of the pool
    graph = ConstraintGraph()
    graph.add("m1", int(i), int(j), "must_link")
    result = run_cycle(x, graph, cycle_config(strategy="random"))
    assert [(r.pair, r.kind) for r in result.reviews] == [((min(i, j), max(i, j)), "second_opinion")]
    assert result.metrics["merges_held"] == 1 and result.pseudo_labels[i] != result.pseudo_labels[j]
    assert all((p.i, p.j) != (min(i, j), max(i, j)) for p in result.proposals)
    graph.add("m1-again", int(i), int(j), "must_link")
    merged = run_cycle(x, graph, cycle_config(strategy="random"))
    assert merged.reviews == () and merged.pseudo_labels[i] == merged.pseudo_labels[j]
    with pytest.raises(ValueError, match="redundancy_k"):
        cycle_config(redundancy_k=0)


def test_run_cycle_rejects_bad_input(pool: dict[str, np.ndarray], tmp_path: Path) -> None:
    x = pool["x"]
    with pytest.raises(ValueError, match="at least 2 rows"):
        run_cycle(x[:1], None, cycle_config())
    with pytest.raises(ValueError, match="features"):
        run_cycle(x[0], None, cycle_config())
    far = ConstraintGraph()
    far.add("x", 0, 10_000, "must_link")
    with pytest.raises(ValueError, match="constraints"):
        run_cycle(x, far, cycle_config())
    with pytest.raises(TypeError, match="constraints"):
        run_cycle(x, [(0, 1)], cycle_config())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cameras"):
        run_cycle(x, None, cycle_config(), cameras=np.zeros(3))
    with pytest.raises(ValueError, match="text_features"):
        run_cycle(x, None, cycle_config(), text_features=np.zeros(x.shape[0]))
    with pytest.raises(TypeError, match="config"):
        run_cycle(x, None, {"budget": 3})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="log"):
        run_cycle(x, None, cycle_config(), log=42)  # type: ignore[arg-type]
    registry = ModelRegistry(tmp_path, "dims")
    registry.save(embeddings=x, adapter_state=Adapter(x.shape[1]).to_state(), config={}, metrics={})
    with pytest.raises(ValueError, match="registry version"):
        run_cycle(np.hstack([x, x]), None, cycle_config(), registry=registry)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("strategy", "oracle"),
        ("budget", 0),
        ("contradiction_policy", "coin_flip"),
        ("k1", 0),
        ("eps", 0.0),
        ("min_samples", 0),
        ("train_when_fewer_than", 0),
        ("min_p_same", 1.0),
        ("gate", {"folds": 3}),
        ("train", {"epochs": 1}),
        ("strategy_params", [1, 2]),
    ],
)
def test_cycle_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        CycleConfig(**{field: value})  # type: ignore[arg-type]


def test_text_features_and_tracklets_reach_the_sampler(pool: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(5)
    text = rng.normal(size=(pool["x"].shape[0], 16)).astype(np.float32)
    tracklets = np.arange(pool["x"].shape[0]) // 2  # pairs of frames
    graph = answered_graph(pool["ids"], 10, seed=4)
    config = cycle_config(strategy="uncertainty", train_when_fewer_than=10)
    result = run_cycle(pool["x"], graph, config, text_features=text, tracklets=tracklets)
    assert_sampler_invariants(result, graph, 15)
    assert len(result.proposals) > 0
    with pytest.raises(ValueError, match="tracklets"):
        run_cycle(pool["x"], graph, config, tracklets=tracklets[:-1])


def test_training_labels_keep_only_links_the_calibrator_trusts(pool: dict[str, np.ndarray]) -> None:
    """A stricter ``train_min_p_same`` only cuts inferred links: every training identity is inside one
    identity of the looser assignment, and every answered must-link still shares a label."""
    from trainer.cycle import _label_source

    x = apply_adapter(None, pool["x"])
    graph = answered_graph(pool["ids"], 120)
    loose_config = cycle_config(train_min_p_same=0.0)
    view = loose_config.view(x, graph)
    loose = _label_source(loose_config, x, graph, view, None).labels
    strict = _label_source(cycle_config(train_min_p_same=0.9), x, graph, view, None).labels
    assert len(np.unique(strict)) > len(np.unique(loose))
    for label in np.unique(strict):
        assert len(np.unique(loose[strict == label])) == 1
    for c in graph.must_links():
        assert strict[c.i] == strict[c.j]
    with pytest.raises(ValueError, match="train_min_p_same"):
        cycle_config(train_min_p_same=1.0)


def test_cross_validation_trains_when_only_the_pooled_folds_hold_enough_matches(
    pool: dict[str, np.ndarray], tmp_path: Path
) -> None:
    graph = answered_graph(pool["ids"], 80)
    effective = graph.effective()
    folds = ValidationGate().split_folds(pool["x"].shape[0], effective.must_link, effective.cannot_link)
    first = folds[0].positives.shape[0]
    pooled = sum(h.positives.shape[0] for h in folds)
    assert 0 < first < pooled
    gate = {"min_positives": first + 1, "min_negatives": 1}
    plain = run_cycle(pool["x"], graph, cycle_config(gate=ValidationGate(**gate), redundancy_k=1),
                      registry=ModelRegistry(tmp_path, "one-fold"))
    assert plain.metrics["trained"] == 0 and plain.metrics["skipped_unvalidated"] == 1
    crossed = run_cycle(pool["x"], graph,
                        cycle_config(gate=ValidationGate(cross_validate=True, **gate), redundancy_k=1),
                        registry=ModelRegistry(tmp_path, "crossed"))
    m = crossed.metrics
    assert m["trained"] == 1 and m["skipped_unvalidated"] == 0
    assert m["gate_pooled_folds"] >= 2 and "pooled over" in m["gate_reason"]
    assert m["gate_held_out_positives"] > first
    assert crossed.gate is not None and crossed.gate.pooled_folds == m["gate_pooled_folds"]
    # pooled folds that still hold too few: nothing is trained
    never = run_cycle(pool["x"], graph,
                      cycle_config(gate=ValidationGate(cross_validate=True, min_positives=pooled + 1,
                                                       min_negatives=1), redundancy_k=1),
                      registry=ModelRegistry(tmp_path, "never"))
    assert never.metrics["trained"] == 0 and never.metrics["skipped_unvalidated"] == 1


def test_auto_link_rule_follows_the_answers(pool: dict[str, np.ndarray], tmp_path: Path) -> None:
    graph = answered_graph(pool["ids"], 30)
    clean = run_cycle(pool["x"], graph, cycle_config())  # "auto" is the default
    assert clean.metrics["answers_in_conflict"] == 0 and clean.metrics["identity_link_past_cannot_link"] == 1
    c = next(iter(graph.must_links()))
    graph.add("wrong", c.i, c.j, "cannot_link")  # the same pair answered both ways: someone erred
    erring = run_cycle(pool["x"], graph, cycle_config(link_past_cannot_link="auto"))
    assert erring.metrics["answers_in_conflict"] >= 1
    assert erring.metrics["identity_link_past_cannot_link"] == 0
    fixed = run_cycle(pool["x"], graph, cycle_config(link_past_cannot_link=True))
    assert fixed.metrics["identity_link_past_cannot_link"] == 1  # a fixed rule ignores conflicts
    with pytest.raises(ValueError, match="link_past_cannot_link"):
        cycle_config(link_past_cannot_link="sometimes")
