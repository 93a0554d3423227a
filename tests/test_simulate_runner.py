"""Simulator protocol, report aggregation, CLI, and a tiny end-to-end simulation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer.simulate import build_parser, main
from trainer.simulate.datasets import make_synthetic, save_npz, validate_dataset
from trainer.simulate.protocol import (
    clustering_scores,
    evaluate,
    open_set_auc,
    retrieval_scores,
    split_identities,
)
from trainer.simulate.report import (
    CURVE_FIELDS,
    aggregate_runs,
    markdown_summary,
    pairs_to_reach,
    plot_curves,
    summarise,
    value_at_pairs,
    write_json,
)
from trainer.simulate.runner import Simulation, SimulationConfig, run_simulation

TINY = {
    "n_identities": 40,
    "dim": 32,
    "identity_dim": 12,
    "nuisance_dim": 8,
    "min_images": 4,
    "max_images": 12,
    "random_state": 0,
}


# ------------------------------------------------------------------------------------------ protocol
def test_split_is_identity_disjoint_with_camera_queries() -> None:
    ds = make_synthetic(**TINY)
    split = split_identities(ds, test_fraction=0.5, random_state=1)
    pool_ids, test_ids = set(ds.labels[split.pool]), set(ds.labels[split.test])
    assert not pool_ids & test_ids and len(pool_ids) + len(test_ids) == 40 and len(test_ids) == 20
    every = np.sort(np.concatenate([split.pool, split.test, split.known]))
    assert np.array_equal(every, np.arange(ds.n))
    # open set: one image of a fifth of the pool identities (>= 3 images) kept out as a known query
    assert split.known.size == round(0.2 * 20) and set(ds.labels[split.known]) <= pool_ids
    assert len(set(ds.labels[split.known])) == split.known.size
    assert not set(split.known) & set(split.pool)
    assert not set(split.query) & set(split.gallery)
    assert set(split.query) | set(split.gallery) == set(split.test)
    # at most one query per (identity, camera), at least one per identity, each with a cross-camera mate
    keys = [(ds.labels[r], ds.cameras[r]) for r in split.query]
    assert len(keys) == len(set(keys)) and {k[0] for k in keys} == test_ids
    for q in split.query:
        mates = split.gallery[ds.labels[split.gallery] == ds.labels[q]]
        assert np.any(ds.cameras[mates] != ds.cameras[q])
    assert retrieval_scores(ds.features, ds, split)["n_skipped"] == 0
    assert split.group_kind == "camera"
    again = split_identities(ds, test_fraction=0.5, random_state=1)
    assert np.array_equal(again.query, split.query)


def test_split_without_cameras_is_leave_one_out() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 4)
    ds = validate_dataset(rng.standard_normal((40, 8)), labels)
    split = split_identities(ds, test_fraction=0.3, random_state=0)
    assert split.group_kind == "image"
    assert np.array_equal(split.query, split.test) and np.array_equal(split.gallery, split.test)
    assert np.unique(split.query_groups).size == split.query.size  # each image its own exclusion group
    # perfect features: every query finds its 3 mates first, never itself
    onehot = np.eye(10, dtype=np.float32)[labels]
    scores = retrieval_scores(onehot, ds, split)
    assert scores["mAP"] == pytest.approx(1.0) and scores["n_skipped"] == 0 and scores["n_queries"] == 12
    # known individuals find a mate in the pool (cosine 1), unknown ones none (cosine 0): AUC 1
    assert split.known.size == 1
    assert open_set_auc(onehot, split) == pytest.approx(1.0)
    assert open_set_auc(np.ones_like(onehot), split) == pytest.approx(0.5)  # a constant score: chance
    assert split_identities(ds, test_fraction=0.3, random_state=0, known_fraction=0.0).known.size == 0


def test_split_tracklets_exclude_near_duplicates() -> None:
    labels = np.repeat(np.arange(6), 4)
    tracklets = np.repeat(np.arange(12), 2)
    ds = validate_dataset(np.random.default_rng(1).standard_normal((24, 8)), labels, tracklets=tracklets)
    split = split_identities(ds, test_fraction=0.5, random_state=0)
    assert split.group_kind == "tracklet"
    np.testing.assert_array_equal(split.query_groups, tracklets[split.query])


def test_split_rejects_bad_fraction_and_unsplittable_data() -> None:
    ds = make_synthetic(**TINY)
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="test_fraction"):
            split_identities(ds, test_fraction=bad)
    tiny = validate_dataset(np.eye(4) + 0.1, np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="cannot split"):
        split_identities(tiny)


def test_evaluate_scores_truth_and_noise() -> None:
    ds = make_synthetic(**TINY)
    split = split_identities(ds)
    pool_truth = ds.labels[split.pool]
    perfect = evaluate(np.eye(40, dtype=np.float32)[ds.labels], pool_truth, ds, split)
    assert perfect["mAP"] == pytest.approx(1.0) and perfect["rank1"] == pytest.approx(1.0)
    assert perfect["pairwise_f1"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)
    assert perfect["open_set_auc"] == pytest.approx(1.0)
    raw = evaluate(ds.features, -np.ones_like(pool_truth), ds, split)
    assert 0.0 < raw["mAP"] < 1.0
    assert raw["pairwise_f1"] == 0.0 and raw["n_outliers"] == pool_truth.size
    with pytest.raises(ValueError, match="embeddings"):
        evaluate(ds.features[:10], pool_truth, ds, split)
    with pytest.raises(ValueError, match="pseudo_labels"):
        clustering_scores(pool_truth[:-1], pool_truth)


# ------------------------------------------------------------------------------------------ report
def _rec(cycle: int, pairs: int, m: float) -> dict[str, Any]:
    return {"cycle": cycle, "pairs_annotated": pairs, "mAP": m, "identities_touched": pairs // 2}


def test_aggregate_runs_mean_std_per_cycle() -> None:
    runs = [[_rec(0, 0, 0.4), _rec(1, 10, 0.6)], [_rec(0, 0, 0.6), _rec(1, 10, 0.8)]]
    curve = aggregate_runs(runs)
    assert curve[1]["mAP"]["mean"] == pytest.approx(0.7) and curve[1]["mAP"]["std"] == pytest.approx(0.1)
    assert curve[0]["n_seeds"] == 2
    with pytest.raises(ValueError, match="runs"):
        aggregate_runs([])


def test_pairs_to_reach_interpolates_and_counts_seeds() -> None:
    per_seed = [
        [_rec(0, 0, 0.5), _rec(1, 10, 0.7), _rec(2, 20, 0.9)],
        [_rec(0, 0, 0.5), _rec(1, 10, 0.5), _rec(2, 20, 0.7)],
    ]
    curve = aggregate_runs(per_seed)  # means 0.5, 0.6, 0.8
    r = pairs_to_reach(curve, per_seed, 0.7)
    assert r["reached"] and r["cycle"] == 2 and r["pairs_at_cycle"] == 20
    assert r["pairs_interpolated"] == pytest.approx(15.0)
    assert r["pairs_per_seed"] == [10, 20] and r["seeds_reached"] == 2
    never = pairs_to_reach(curve, per_seed, 0.95)
    assert not never["reached"] and never["pairs_at_cycle"] is None and never["seeds_reached"] == 0


def test_value_at_pairs_interpolates_and_clamps() -> None:
    curve = aggregate_runs([[_rec(0, 0, 0.2), _rec(1, 10, 0.4), _rec(2, 20, 0.8)]])
    assert value_at_pairs(curve, 15) == pytest.approx(0.6)
    assert value_at_pairs(curve, 100) == pytest.approx(0.8)
    assert value_at_pairs(curve, None) is None
    # a curve that never spends a pair (the "none" control): its latest value, not its first
    flat = aggregate_runs([[_rec(0, 0, 0.8), _rec(1, 0, 0.7), _rec(2, 0, 0.6)]])
    assert value_at_pairs(flat, 50) == pytest.approx(0.6)
    # a cycle that added nothing (shortfall): the later cycle's value at that pair count
    stall = aggregate_runs([[_rec(0, 0, 0.2), _rec(1, 10, 0.4), _rec(2, 10, 0.5), _rec(3, 20, 0.7)]])
    assert value_at_pairs(stall, 10) == pytest.approx(0.5)
    assert value_at_pairs(stall, 15) == pytest.approx(0.6)


def test_summarise_uses_aas_budget_actually_spent() -> None:
    strategies = {
        "aas": {"per_seed": [[_rec(0, 0, 0.5), _rec(1, 6, 0.8)]]},
        "random": {"per_seed": [[_rec(0, 0, 0.5), _rec(1, 10, 0.6), _rec(2, 20, 0.7)]]},
    }
    for block in strategies.values():
        block["curve"] = aggregate_runs(block["per_seed"])
    s = summarise(strategies, {"mAP": {"mean": 0.8, "std": 0.0}})
    assert s["target_mAP"] == pytest.approx(0.76)
    assert s["reference_pairs"] == 6
    assert s["mAP_at_reference_pairs"]["random"] == pytest.approx(0.56)
    assert s["reach_target"]["aas"]["reached"] and not s["reach_target"]["random"]["reached"]
    assert summarise(strategies, None)["target_mAP"] is None


def test_write_json_is_strict_and_atomic(tmp_path: Path) -> None:
    path = write_json({"a": np.float32(0.5), "b": np.arange(3), "c": np.int64(2)}, tmp_path / "x" / "r.json")
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": 2}
    with pytest.raises(ValueError):
        write_json({"a": float("nan")}, tmp_path / "nan.json")
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------------------------ config / CLI
def test_config_validation_names_the_field() -> None:
    cases = [
        ({"strategies": []}, "strategies"),
        ({"strategies": ["aas", "aas"]}, "strategies"),
        ({"seeds": []}, "seeds"),
        ({"n_cycles": 0}, "n_cycles"),
        ({"budget": 0}, "budget"),
        ({"budget": None, "budget_fraction": None}, "budget"),
        ({"budget_fraction": 2.0}, "budget_fraction"),
        ({"noise_rate": 1.2}, "noise_rate"),
        ({"unsure_rate": -1.0}, "unsure_rate"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            SimulationConfig(**kwargs).validate()


def test_budget_absolute_or_fraction_of_pool_pairs() -> None:
    assert SimulationConfig(budget=7).budget_for(1000) == 7
    assert SimulationConfig(budget_fraction=0.0002).budget_for(1000) == round(0.0002 * 499_500)
    assert SimulationConfig(budget_fraction=1e-9, min_budget=3).budget_for(100) == 3


def test_cli_parses_every_option() -> None:
    argv = "--dataset npz --path x.npz --strategies aas,random --seeds 1,2 --cycles 3 --budget 12 "
    argv += "--noise-rate 0.1 --unsure-rate 0.05 --strategy-param aas.epsilon=0.5 --train epochs=2 "
    argv += "--synthetic n_identities=50"
    args = build_parser().parse_args(argv.split())
    assert args.strategies == ["aas", "random"] and args.seeds == [1, 2] and args.budget == 12
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--budget", "3", "--budget-fraction", "0.1"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--seeds", "a,b"])


def test_cli_rejects_bad_input_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.ones((4, 2)))
    assert main(["--dataset", "npz", "--path", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "labels" in capsys.readouterr().err
    assert main(["--synthetic", "n_people=3", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "n_people" in capsys.readouterr().err
    assert main(["--cycles", "0", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    with pytest.raises(SystemExit):
        main(["--dataset", "folder"])  # no --path
    with pytest.raises(SystemExit):
        main(["--strategy-param", "epsilon=0.5"])  # no strategy prefix
    assert not (tmp_path / "o" / "results.json").exists()


# ------------------------------------------------------------------------------------------ end to end
FAST_TRAIN = {"epochs": 1, "hidden_dim": 32, "batch_size": 64, "max_steps_per_epoch": 4}
STRATEGIES = ("aas", "random")


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ds = make_synthetic(**TINY)
    config = SimulationConfig(
        strategies=STRATEGIES, seeds=(0, 1), n_cycles=2, budget=15, train_params=FAST_TRAIN
    )
    return run_simulation(ds, config, work_dir=tmp_path_factory.mktemp("work"), progress=True)  # tqdm bar


def test_tiny_simulation_has_every_field(tiny_results: dict[str, Any], tmp_path: Path) -> None:
    r = tiny_results
    assert set(r["strategies"]) == set(STRATEGIES)
    for block in r["strategies"].values():
        assert len(block["curve"]) == 3 and len(block["per_seed"]) == 2
        for row in block["curve"]:
            for f in CURVE_FIELDS:
                assert f in row and set(row[f]) == {"mean", "std"}, f
    for ref in ("baseline", "skyline"):
        for m in ("mAP", "rank1", "mINP", "pairwise_f1", "ari"):
            assert r[ref][m]["mean"] is not None
    s = r["summary"]
    assert s["skyline_mAP"] == pytest.approx(r["skyline"]["mAP"]["mean"])
    assert set(s["reach_target"]) == set(STRATEGIES) and set(s["mAP_at_reference_pairs"]) == set(STRATEGIES)
    assert s["reference_strategy"] == "aas" and s["reference_pairs"] is not None
    assert r["config"]["budget_per_cycle"] == 15 and r["wall_s"] > 0
    path = write_json(r, tmp_path / "results.json")
    assert json.loads(path.read_text())["config"]["strategies"] == list(STRATEGIES)
    pngs = plot_curves(r, tmp_path)
    assert pngs[0].stat().st_size > 10_000
    md = markdown_summary(r)
    for name in STRATEGIES:
        assert f"| {name} | 2 |" in md  # a row per strategy and cycle
    assert "| skyline (all pool labels) |" in md and "mAP at AAS's pairs" in md
    assert "code_version" in r


def test_tiny_simulation_honours_budget_and_counts(tiny_results: dict[str, Any]) -> None:
    n_pool = tiny_results["split"]["n_pool"]
    for block in tiny_results["strategies"].values():
        for seed_rows in block["per_seed"]:
            prev = 0
            for rec in seed_rows:
                new = rec["pairs_annotated"] - prev
                assert 0 <= new <= 15 and new + rec["shortfall"] == (15 if rec["cycle"] else 0)
                assert rec["pairs_annotated_pct"] == pytest.approx(
                    100 * rec["pairs_annotated"] / (n_pool * (n_pool - 1) / 2)
                )
                # perfect oracle, no unsure: every answer constrains a pair, a review one asked before
                assert rec["pairs_constrained"] == rec["pairs_annotated"] - rec["reviews_answered"]
                assert rec["contradictions"] == 0 and rec["answers_wrong"] == 0
                assert rec["answers_in_conflict"] == 0 and rec["identity_link_past_cannot_link"] == 1
                assert rec["identities_touched"] <= 2 * rec["pairs_annotated"]
                assert rec["pairs_by_transitivity"] >= 0
                prev = rec["pairs_annotated"]
            assert seed_rows[0]["pairs_annotated"] == 0 and seed_rows[-1]["pairs_annotated"] > 0


def test_noisy_oracle_contradictions_are_counted(tmp_path: Path) -> None:
    # few identities, many pairs, a very noisy annotator: must-link chains crossing a cannot-link
    ds = make_synthetic(**{**TINY, "n_identities": 12, "min_images": 6})
    config = SimulationConfig(
        strategies=("random",),
        seeds=(0,),
        n_cycles=2,
        budget=60,
        noise_rate=0.4,
        unsure_rate=0.1,
        train_params=FAST_TRAIN,
        skyline=False,
    )
    r = Simulation(config, work_dir=tmp_path).run(ds)
    last = r["strategies"]["random"]["per_seed"][0][-1]
    assert last["answers_wrong"] > 0 and last["answers_unsure"] > 0
    assert last["pairs_constrained"] <= last["pairs_annotated"] - last["answers_unsure"]
    assert last["contradictions"] > 0 and last["answers_in_conflict"] > 0
    assert last["reviews_answered"] > 0 and last["pairs_annotated"] <= 2 * 60  # reviews spend the budget
    assert r["skyline"] is None and r["summary"]["target_mAP"] is None


def test_reviews_are_asked_first_within_the_budget() -> None:
    from types import SimpleNamespace as P

    from trainer.simulate.runner import _to_ask

    reviews = [P(i=3, j=1), P(i=5, j=6)]
    proposals = [P(i=1, j=3), P(i=7, j=8), P(i=9, j=10)]
    assert _to_ask(reviews, proposals, 3) == [(1, 3), (5, 6), (7, 8)]
    assert _to_ask(reviews, proposals, 1) == [(1, 3)]
    assert _to_ask([], proposals, 5) == [(1, 3), (7, 8), (9, 10)]


def test_no_labels_control_annotates_nothing(tmp_path: Path) -> None:
    ds = make_synthetic(**{**TINY, "n_identities": 16})
    config = SimulationConfig(
        strategies=("none",), seeds=(0,), n_cycles=2, budget=10, train_params=FAST_TRAIN, skyline=False
    )
    results = Simulation(config, work_dir=tmp_path).run(ds)
    rows = results["strategies"]["none"]["per_seed"][0]
    assert [r["pairs_annotated"] for r in rows] == [0, 0, 0]
    assert all(r["pairs_constrained"] == 0 and r["shortfall"] == 0 for r in rows)
    assert plot_curves(results, tmp_path)[0].stat().st_size > 10_000  # drawn per cycle, not a vertical line


def test_torch_threads_restored_after_run(tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    ds = make_synthetic(**{**TINY, "n_identities": 12})
    config = SimulationConfig(
        strategies=("random",),
        seeds=(0,),
        n_cycles=1,
        budget=3,
        train_params=FAST_TRAIN,
        skyline=False,
        torch_threads=1,
    )
    Simulation(config, work_dir=tmp_path).run(ds)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="torch_threads"):
        SimulationConfig(torch_threads=0).validate()


def test_unknown_strategy_rejected(tmp_path: Path) -> None:
    ds = make_synthetic(**TINY)
    with pytest.raises(ValueError, match="strategies: unknown"):
        run_simulation(ds, SimulationConfig(strategies=("oracle-magic",), budget=5), work_dir=tmp_path)


def test_cli_end_to_end_writes_results_and_plot(tmp_path: Path) -> None:
    npz = save_npz(make_synthetic(**{**TINY, "n_identities": 16}), tmp_path / "d.npz")
    out = tmp_path / "out"
    argv = ["--dataset", "npz", "--path", str(npz), "--out", str(out)]
    argv += [
        "--strategies",
        "random",
        "--seeds",
        "0",
        "--cycles",
        "1",
        "--budget",
        "5",
        "--train",
        "epochs=1",
        "--train",
        "max_steps_per_epoch=2",
        "--no-skyline",
        "--no-progress",
    ]
    code = main(argv)
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("reid-al simulate --dataset npz")
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "results.md").read_text().startswith("`reid-al simulate --dataset npz")
