"""The offline active-learning loop: strategies × seeds × cycles on one dataset, then the report.

One run (strategy, seed) on the pool (rows of the split's pool, renumbered 0..n_pool-1):

    cycle 0: run_cycle with no constraints (the frozen encoder, its identities, the first proposals)
             -> evaluate
    cycle c: the oracle answers the previous cycle's reviews (contradictions, disagreements, second
             opinions: strategies.review), then its proposals, `budget` answers in all
             -> constraints -> run_cycle (reviewed answers, identities, a candidate adapter, the
             validation gate, next reviews and proposals) -> evaluate

A review costs an answer from the budget like any pair, and the oracle answers it with fresh noise
(Oracle's ``attempt``), so what redundancy and contradiction review cost is counted honestly.

Every cycle's version is saved to a throw-away `ModelRegistry`, as in production: the model the gate
serves is the next cycle's incumbent, and it is what is applied to the held-out test features for
retrieval. The pool's clustering scores are those of the identity assignment (what a team exports).

"Pairs answered by transitivity" (per cycle, cumulative): the number of unordered pool pairs whose
answer the constraint graph implies (SAME inside one must-link component, DIFFERENT across two
components joined by a cannot-link) minus the pairs that carry a human answer themselves. Computed from
component sizes (Σ C(s, 2) + Σ over cannot-linked component pairs s_a·s_b), never O(n²); a cannot-link
inside a component (a contradiction) implies nothing. `pairs_by_transitivity_new` is its increase in
that cycle.

The strategy name "none" is a control: every cycle runs, nobody answers (0 pairs annotated).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strategies import defaults
from trainer.defaults import SIMULATION_CYCLES, SIMULATION_SEEDS, SIMULATION_STRATEGIES
from trainer.simulate.datasets import SimulationDataset
from trainer.simulate.oracle import Answer, Oracle
from trainer.simulate.protocol import Split, evaluate, split_identities
from trainer.simulate.report import aggregate_reference, aggregate_runs, summarise

log = logging.getLogger(__name__)

# Control "strategy": the same cycles with nobody answering, so the curves separate what the labels
# bring from what the cycles would do on their own.
NO_LABELS = "none"


@dataclass
class SimulationConfig:
    """Everything a simulation needs besides the dataset; defaults reproduce the AAS schedule."""

    strategies: Sequence[str] = SIMULATION_STRATEGIES
    seeds: Sequence[int] = SIMULATION_SEEDS
    n_cycles: int = SIMULATION_CYCLES
    budget: int | None = None  # absolute pairs per cycle; None -> budget_fraction
    budget_fraction: float | None = defaults.AAS_BUDGET_FRACTION  # of all n_pool(n_pool-1)/2 pairs
    min_budget: int = 1
    noise_rate: float = 0.0
    unsure_rate: float = 0.0
    test_fraction: float = 0.5
    split_seed: int = 0
    strategy_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_params: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    cycle_params: dict[str, Any] = field(default_factory=dict)  # CycleConfig overrides
    skyline: bool = True
    # Threads for torch during the run (restored afterwards). The simulator trains many small adapters:
    # at this size intra-op parallelism costs more than it gives, and on a shared, loaded machine two
    # spinning threads made a cycle's training 10-15x slower than one (measured, see simulate.md).
    torch_threads: int | None = 1

    def validate(self) -> None:
        if not self.strategies:
            raise ValueError("strategies: need at least one strategy")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies: duplicates in {list(self.strategies)}")
        if not self.seeds:
            raise ValueError("seeds: need at least one seed")
        if int(self.n_cycles) < 1:
            raise ValueError(f"n_cycles: need at least 1, got {self.n_cycles}")
        if self.budget is None and self.budget_fraction is None:
            raise ValueError("budget: give an absolute budget or a budget_fraction")
        if self.budget is not None and int(self.budget) < 1:
            raise ValueError(f"budget: must be >= 1 pair per cycle, got {self.budget}")
        if self.budget_fraction is not None and not 0.0 < float(self.budget_fraction) <= 1.0:
            raise ValueError(f"budget_fraction: must be in (0, 1], got {self.budget_fraction}")
        for name in ("noise_rate", "unsure_rate"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.torch_threads is not None and int(self.torch_threads) < 1:
            raise ValueError(f"torch_threads: must be >= 1 or None, got {self.torch_threads}")

    def budget_for(self, n_pool: int) -> int:
        """Pairs per cycle: the absolute budget, or the fraction of all pool pairs (at least min_budget)."""
        if self.budget is not None:
            return int(self.budget)
        total = n_pool * (n_pool - 1) // 2
        return max(int(self.min_budget), round(float(self.budget_fraction or 0.0) * total))


def transitivity_counts(graph: Any, n: int) -> dict[str, int]:
    """Implied pairs from component sizes (see module docstring); `graph` is a ConstraintGraph."""
    comp = graph.component_labels(n)
    sizes = np.bincount(comp)
    implied_same = int(np.sum(sizes * (sizes - 1) // 2))
    cl_components: set[tuple[int, int]] = set()
    for c in graph.cannot_links():
        a, b = int(comp[c.i]), int(comp[c.j])
        if a != b:
            cl_components.add((min(a, b), max(a, b)))
    implied_diff = int(sum(int(sizes[a]) * int(sizes[b]) for a, b in cl_components))
    direct = {c.pair for c in graph}
    direct_resolved = sum(
        1
        for i, j in direct
        if comp[i] == comp[j] or (min(comp[i], comp[j]), max(comp[i], comp[j])) in cl_components
    )
    return {
        "implied_same": implied_same,
        "implied_different": implied_diff,
        "pairs_constrained": len(direct),
        "pairs_by_transitivity": implied_same + implied_diff - direct_resolved,
    }


@dataclass
class _Pool:
    features: np.ndarray
    labels: np.ndarray
    cameras: np.ndarray | None
    tracklets: np.ndarray | None
    text_features: np.ndarray | None = None


def _pool_of(dataset: SimulationDataset, split: Split) -> _Pool:
    rows = split.pool
    return _Pool(
        features=np.ascontiguousarray(dataset.features[rows]),
        labels=dataset.labels[rows],
        cameras=None if dataset.cameras is None else dataset.cameras[rows],
        tracklets=None if dataset.tracklets is None else dataset.tracklets[rows],
        text_features=None if dataset.text_features is None
        else np.ascontiguousarray(dataset.text_features[rows]),
    )


class Simulation:
    """Runs the loop for every (strategy, seed) and returns the results dict written to results.json."""

    def __init__(self, config: SimulationConfig | None = None, *, work_dir: str | Path | None = None) -> None:
        self.config = config
        self.work_dir = work_dir

    # ------------------------------------------------------------------ helpers
    def _train_config(self, seed: int) -> Any:
        from trainer.adapter import TrainConfig

        params = dict(self._cfg.train_params)
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"train_params: unknown TrainConfig field(s) {unknown}; known: {sorted(names)}")
        if "seed" in names and "seed" not in params:
            params["seed"] = seed
        return TrainConfig(**params)

    def _cycle_config(self, strategy: str, budget: int, seed: int, cycle: int) -> Any:
        from trainer.cycle import CycleConfig
        from trainer.gate import ValidationGate

        params = dict(self._cfg.cycle_params)
        gate = {k.split(".", 1)[1]: params.pop(k) for k in list(params) if k.startswith("gate.")}
        names = {f.name for f in dataclasses.fields(CycleConfig)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"cycle_params: unknown CycleConfig field(s) {unknown}; known: {sorted(names)}")
        if gate:
            try:
                params["gate"] = ValidationGate(**gate)
            except TypeError as exc:
                raise ValueError(f"cycle_params: gate.* names no ValidationGate parameter ({exc})") from None
        if strategy == NO_LABELS:  # the control runs a cheap sampler whose proposals nobody answers
            strategy, budget = "random", 1
        return CycleConfig(
            strategy=strategy,
            budget=budget,
            strategy_params=dict(self._cfg.strategy_params.get(strategy, {})),
            train=self._train_config(seed),
            random_state=int(seed) * 1000 + cycle,
            **params,
        )

    @staticmethod
    def _embed_all(registry: Any, version: str | None, features: np.ndarray) -> np.ndarray:
        """The current adapter applied to every row (pool and test); frozen features when none exists."""
        from trainer.adapter import apply_adapter

        if registry is None or version is None:
            return features
        state = registry.load(version).adapter_state
        if state is None:
            return features
        return np.asarray(apply_adapter(state, features), dtype=np.float32)

    # ------------------------------------------------------------------ references
    def _baseline(self, dataset: SimulationDataset, split: Split, pool: _Pool) -> dict[str, Any]:
        """Frozen encoder, no labels: retrieval on raw features; on the pool, the identity assignment
        with no answer (first-neighbour links) and, for reference, DBSCAN's clusters."""
        from strategies.view import ClusteringView
        from trainer.simulate.protocol import clustering_scores

        view = ClusteringView(np.asarray(pool.features, dtype=np.float32))
        out = evaluate(dataset.features, view.identities.labels, dataset, split)
        dbscan = clustering_scores(view.dbscan_labels, pool.labels)
        out["dbscan_pairwise_f1"] = dbscan["pairwise_f1"]
        return out

    def _skyline(self, dataset: SimulationDataset, split: Split, pool: _Pool, seed: int) -> dict[str, Any]:
        """Adapter trained with every pool label, as a cycle trains (from the identity, one run):
        pseudo-labels = truth, a must-link spanning chain per identity and a cannot-link from each
        identity to its nearest other identity."""
        from trainer.adapter import apply_adapter, train_adapter

        t0 = time.perf_counter()
        labels = pool.labels
        ml: list[tuple[int, int]] = []
        reps: list[int] = []
        ids = np.unique(labels)
        for ident in ids:
            rows = np.flatnonzero(labels == ident)
            reps.append(int(rows[0]))
            ml.extend((int(a), int(b)) for a, b in itertools.pairwise(rows))
        centroids = np.vstack([pool.features[labels == ident].mean(axis=0) for ident in ids])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        sims = centroids @ centroids.T
        np.fill_diagonal(sims, -np.inf)
        nearest = np.argmax(sims, axis=1)
        cl = sorted({(min(reps[a], reps[b]), max(reps[a], reps[b])) for a, b in enumerate(nearest)})
        ml_arr = np.asarray(ml, dtype=np.int64).reshape(-1, 2)
        cl_arr = np.asarray(cl, dtype=np.int64).reshape(-1, 2)
        res = train_adapter(
            pool.features, labels, ml_arr, cl_arr, self._train_config(seed), cameras=pool.cameras
        )
        state = res.adapter_state
        emb = np.asarray(apply_adapter(state, dataset.features), dtype=np.float32)
        out = evaluate(emb, labels, dataset, split)
        out["wall_s"] = time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ one run
    def _run_one(
        self,
        strategy: str,
        seed: int,
        dataset: SimulationDataset,
        split: Split,
        pool: _Pool,
        budget: int,
        root: Path,
        tick: Callable[[str], None],
    ) -> list[dict[str, Any]]:
        from strategies.constraints import ConstraintGraph, ConstraintKind
        from trainer.cycle import run_cycle
        from trainer.registry import ModelRegistry

        cfg = self._cfg
        n_pool = pool.features.shape[0]
        total_pairs = n_pool * (n_pool - 1) // 2
        graph = ConstraintGraph()
        oracle = Oracle(
            pool.labels, noise_rate=cfg.noise_rate, unsure_rate=cfg.unsure_rate, random_state=seed
        )
        registry = ModelRegistry(root, f"{strategy}-seed{seed}")
        touched: set[int] = set()
        counters = {"asked": 0, "same": 0, "unsure": 0, "wrong": 0, "reviews": 0}
        times_asked: dict[tuple[int, int], int] = {}
        reviews: list[Any] = []
        records: list[dict[str, Any]] = []
        prev_transitive = 0
        proposals: list[Any] = []
        for cycle in range(int(cfg.n_cycles) + 1):
            t0 = time.perf_counter()
            shortfall = 0
            if cycle > 0:
                asked = [] if strategy == NO_LABELS else _to_ask(reviews, proposals, budget)
                shortfall = 0 if strategy == NO_LABELS else budget - len(asked)
                for k, (i, j) in enumerate(asked):
                    attempt = times_asked.get((i, j), 0)
                    times_asked[(i, j)] = attempt + 1
                    counters["reviews"] += int(attempt > 0)
                    ans = oracle.answer(i, j, attempt)
                    counters["asked"] += 1
                    touched.update((int(pool.labels[ans.i]), int(pool.labels[ans.j])))
                    graph.mark_asked(ans.i, ans.j)
                    if ans.answer is Answer.UNSURE:
                        counters["unsure"] += 1
                        continue
                    counters["wrong"] += int(ans.wrong)
                    counters["same"] += int(ans.answer is Answer.SAME)
                    kind = (
                        ConstraintKind.MUST_LINK if ans.answer is Answer.SAME else ConstraintKind.CANNOT_LINK
                    )
                    graph.add(f"sim-c{cycle}-{k}", ans.i, ans.j, kind)
            result = run_cycle(
                pool.features,
                graph,
                self._cycle_config(strategy, budget, seed, cycle),
                registry=registry,
                cameras=pool.cameras,
                tracklets=pool.tracklets,
                text_features=pool.text_features,
            )
            proposals = list(result.proposals)
            reviews = list(result.reviews)
            emb = self._embed_all(registry, result.version, dataset.features)
            scores = evaluate(emb, np.asarray(result.pseudo_labels), dataset, split)
            trans = transitivity_counts(graph, n_pool)
            metrics = result.metrics
            rec: dict[str, Any] = {
                "cycle": cycle,
                "pairs_annotated": counters["asked"],
                "pairs_annotated_pct": 100.0 * counters["asked"] / total_pairs,
                "answers_per_image": counters["asked"] / n_pool,
                "pairs_constrained": trans["pairs_constrained"],
                "identities_touched": len(touched),
                "pairs_by_transitivity": trans["pairs_by_transitivity"],
                "pairs_by_transitivity_new": trans["pairs_by_transitivity"] - prev_transitive,
                "answers_same": counters["same"],
                "answers_unsure": counters["unsure"],
                "answers_wrong": counters["wrong"],
                "contradictions": len(graph.contradictions()),
                "reviews_answered": counters["reviews"],
                "reviews_open": int(metrics.get("reviews_open", 0)),
                "contradictions_open": int(metrics.get("contradictions_open", 0)),
                "merges_held": int(metrics.get("merges_held", 0)),
                "answers_in_conflict": int(metrics.get("answers_in_conflict", 0)),
                "identity_link_past_cannot_link": int(metrics.get("identity_link_past_cannot_link", 1)),
                "shortfall": shortfall,
                "next_proposals": len(proposals),
                **scores,
                "identities": metrics["identities"],
                "identities_verified": metrics["identities_verified"],
                "images_verified": metrics["images_verified"],
                "served": metrics["served"],
                "serving_adapter": int(registry.load(result.version).adapter_state is not None),
                "gate_reason": metrics.get("gate_reason", "no candidate trained"),
                "text_dim": int(metrics.get("text_dim", 0)),
                "wall_s": time.perf_counter() - t0,
                "cycle_timings": {k: float(v) for k, v in dict(result.timings).items()},
            }
            prev_transitive = trans["pairs_by_transitivity"]
            records.append(rec)
            tick(
                f"{strategy} seed {seed} cycle {cycle}: mAP {scores['mAP']:.3f} "
                f"pool F1 {scores['pairwise_f1']:.3f} pairs {counters['asked']} ({metrics['served']})"
            )
        return records

    # ------------------------------------------------------------------ entry point
    def run(self, dataset: SimulationDataset, *, progress: bool = False) -> dict[str, Any]:
        """Run every strategy × seed and return the results dict (see report.py for its fields)."""
        self._cfg = self.config or SimulationConfig()
        self._cfg.validate()
        import torch

        threads = torch.get_num_threads()
        if self._cfg.torch_threads is not None:
            torch.set_num_threads(int(self._cfg.torch_threads))
        try:
            return self._run(dataset, progress=progress)
        finally:
            torch.set_num_threads(threads)

    def _run(self, dataset: SimulationDataset, *, progress: bool) -> dict[str, Any]:
        cfg = self._cfg
        from strategies.samplers import available_samplers

        known = {*available_samplers(), NO_LABELS}
        unknown = [s for s in cfg.strategies if s not in known]
        if unknown:
            raise ValueError(f"strategies: unknown {unknown}; available: {sorted(known)}")
        t_start = time.perf_counter()
        split = split_identities(dataset, test_fraction=cfg.test_fraction, random_state=cfg.split_seed)
        pool = _pool_of(dataset, split)
        n_pool = pool.features.shape[0]
        budget = cfg.budget_for(n_pool)
        total = len(cfg.strategies) * len(cfg.seeds) * (int(cfg.n_cycles) + 1)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="simulate", unit="cycle")

        def tick(msg: str) -> None:
            if bar is not None:
                bar.set_postfix_str(msg, refresh=False)
                bar.update(1)
            else:
                log.info(msg)

        baseline = self._baseline(dataset, split, pool)
        with tempfile.TemporaryDirectory(prefix="reid-al-sim-", dir=self.work_dir) as tmp:
            root = Path(tmp)
            skylines = [self._skyline(dataset, split, pool, s) for s in cfg.seeds] if cfg.skyline else []
            strategies: dict[str, dict[str, Any]] = {}
            for strategy in cfg.strategies:
                per_seed = [
                    self._run_one(strategy, int(s), dataset, split, pool, budget, root, tick)
                    for s in cfg.seeds
                ]
                strategies[strategy] = {"curve": aggregate_runs(per_seed), "per_seed": per_seed}
        if bar is not None:
            bar.close()
        skyline = aggregate_reference(skylines) if skylines else None
        results: dict[str, Any] = {
            "dataset": dataset.summary(),
            "split": split.summary(),
            "config": {
                "strategies": list(cfg.strategies),
                "seeds": [int(s) for s in cfg.seeds],
                "n_cycles": int(cfg.n_cycles),
                "budget_per_cycle": budget,
                "budget_per_cycle_pct": 100.0 * budget / (n_pool * (n_pool - 1) // 2),
                "budget_fraction": cfg.budget_fraction if cfg.budget is None else None,
                "all_pool_pairs": n_pool * (n_pool - 1) // 2,
                "noise_rate": cfg.noise_rate,
                "unsure_rate": cfg.unsure_rate,
                "test_fraction": cfg.test_fraction,
                "split_seed": cfg.split_seed,
                "strategy_params": cfg.strategy_params,
                "train_params": cfg.train_params,
                "cycle_params": cfg.cycle_params,
                "torch_threads": cfg.torch_threads,
            },
            "baseline": aggregate_reference([baseline]),
            "skyline": skyline,
            "strategies": strategies,
        }
        results["summary"] = summarise(strategies, skyline)
        results["code_version"] = _code_version()
        results["wall_s"] = time.perf_counter() - t_start
        return results


def _to_ask(reviews: Sequence[Any], proposals: Sequence[Any], budget: int) -> list[tuple[int, int]]:
    """The pairs one cycle's annotator answers: reviews first (most urgent first), then new proposals,
    ``budget`` in all, no pair twice."""
    out: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for item in [*reviews, *proposals]:
        pair = (min(int(item.i), int(item.j)), max(int(item.i), int(item.j)))
        if len(out) >= budget:
            break
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def _code_version() -> str | None:
    """`git describe --always --dirty` of the checkout the simulator runs from (None outside git):
    results from different trainer/sampler code must not be compared as if they were one run."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_simulation(
    dataset: SimulationDataset,
    config: SimulationConfig | None = None,
    *,
    work_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Functional shortcut for `Simulation(config, work_dir=...).run(dataset, progress=...)`."""
    return Simulation(config, work_dir=work_dir).run(dataset, progress=progress)
