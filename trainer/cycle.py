"""One active-learning cycle, the unit an RQ job runs (DESIGN.md "The loop", step 5).

``run_cycle`` is a sequence of stages, each timed under its name in ``CycleResult.timings``:
``load`` (the previous version's adapter: the warm start) -> ``embed`` (adapter(frozen features)) ->
``cluster`` (the embedding's ClusteringView: kNN -> k-reciprocal Jaccard -> DBSCAN -> NP3 with the
constraints) -> ``train`` the adapter -> ``reembed`` the cached features (the backbone never runs
here) -> ``recluster`` (a view of the new embedding: what the sampler and the returned labels use) ->
``calibrate`` P(same) on the labelled pairs -> ``sample`` the next pairs -> ``save`` a new version.

Everything derived from an embedding lives on its ``strategies.view.ClusteringView`` and is computed
once: the sampler receives the post-training view, so it reuses the kNN graph, Jaccard distance, DBSCAN
labels and calibrator, and builds the FINCH hierarchy only when it asks for it (AAS).

Edge cases, each with a visible outcome in ``CycleResult.metrics``:

- **cold start** (no constraints): by default the adapter still trains, on pseudo-labels only (the
  SpCL base objective AAS builds on; the human-pair terms simply have no pairs); set
  ``cold_start="skip"`` to keep the frozen / previous embedding until the first answer
  (``skipped_cold_start=1``);
- **fewer than 2 clusters** after NP3: nothing to contrast, training is skipped
  (``skipped_few_clusters=1``) and sampling runs on the current embedding;
- **large pools on CPU**: ``train_when_fewer_than=N`` trains only while the pool has fewer than ``N``
  images (``skipped_pool_size=1`` otherwise): re-clustering and sampling still run;
- **PoolExhaustedError** from the sampler: no proposals, ``exhausted=1``, ``shortfall=budget``.

Pure of Flask and Label Studio: inputs are arrays, a ConstraintGraph (or its JSON) and an optional
``ModelRegistry``.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from strategies.calibration import PSameCalibrator
from strategies.constraints import CONTRADICTION_POLICIES, ConstraintGraph
from strategies.defaults import CONTRADICTION_POLICY, DBSCAN_EPS, DBSCAN_MIN_SAMPLES, K1, K2, KNN_K
from strategies.samplers import PairProposal, PoolExhaustedError, available_samplers, make_sampler
from strategies.validation import check_features, check_per_item
from strategies.view import ClusteringView
from trainer.adapter import TrainConfig, TrainResult, apply_adapter, train_adapter
from trainer.defaults import CYCLE_BUDGET, CYCLE_STRATEGY

__all__ = ["COLD_START_POLICIES", "CycleConfig", "CycleResult", "run_cycle"]

COLD_START_POLICIES = ("pseudo_labels", "skip")

LogTarget = Callable[[str], Any] | logging.Logger | None


@dataclass
class CycleConfig:
    """Everything one cycle needs besides the data; defaults from strategies/ and trainer/defaults.py.

    ``train.seed`` seeds the adapter training, ``random_state`` everything else (kNN index, NP3,
    sampler). ``train_when_fewer_than``: train only while the pool has fewer images than this
    (``None``: always). ``cold_start``: ``"pseudo_labels"`` (train on pseudo-labels only while there is
    no constraint) or ``"skip"``.
    """

    strategy: str = CYCLE_STRATEGY
    budget: int = CYCLE_BUDGET
    strategy_params: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    contradiction_policy: str = CONTRADICTION_POLICY
    k1: int = K1
    k2: int = K2
    eps: float = DBSCAN_EPS
    min_samples: int = DBSCAN_MIN_SAMPLES
    random_state: int = 0
    train_when_fewer_than: int | None = None
    cold_start: str = "pseudo_labels"
    knn_k: int = KNN_K

    def __post_init__(self) -> None:
        if self.strategy not in available_samplers():
            raise ValueError(f"strategy must be one of {available_samplers()}, got {self.strategy!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int | np.integer) or self.budget < 1:
            raise ValueError(f"budget must be an int >= 1, got {self.budget!r}")
        if not isinstance(self.strategy_params, dict):
            raise ValueError(f"strategy_params must be a dict, got {type(self.strategy_params).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if self.contradiction_policy not in CONTRADICTION_POLICIES:
            raise ValueError(
                f"contradiction_policy must be one of {CONTRADICTION_POLICIES}, "
                f"got {self.contradiction_policy!r}"
            )
        for name in ("k1", "k2", "min_samples", "knn_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 < float(self.eps) <= 1.0:
            raise ValueError(f"eps must be in (0, 1] (a Jaccard distance), got {self.eps!r}")
        if self.train_when_fewer_than is not None and self.train_when_fewer_than < 1:
            raise ValueError(
                f"train_when_fewer_than must be >= 1 or None, got {self.train_when_fewer_than!r}"
            )
        if self.cold_start not in COLD_START_POLICIES:
            raise ValueError(f"cold_start must be one of {COLD_START_POLICIES}, got {self.cold_start!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (what the registry stores as the version's config)."""
        return json.loads(json.dumps(asdict(self), default=str))

    def view(self, embeddings: np.ndarray, graph: ConstraintGraph) -> ClusteringView:
        """The clustering view of one embedding under this cycle's parameters."""
        return ClusteringView(
            embeddings,
            graph,
            k1=int(self.k1),
            k2=int(self.k2),
            knn_k=int(self.knn_k),
            eps=self.eps,
            min_samples=self.min_samples,
            contradiction_policy=self.contradiction_policy,
            random_state=self.random_state,
        )

    def sampler_params(self) -> dict[str, Any]:
        """The configured sampler params, plus the cycle's seed and NP3 policy where the sampler takes
        them."""
        params = dict(self.strategy_params)
        probe = make_sampler(self.strategy, **params)
        accepted = inspect.signature(type(probe).__init__).parameters
        if "random_state" in accepted and "random_state" not in params:
            params["random_state"] = self.random_state
        if "contradiction_policy" in accepted and "contradiction_policy" not in params:
            params["contradiction_policy"] = self.contradiction_policy
        return params


@dataclass
class CycleResult:
    """What a cycle produced. ``embeddings`` are the post-training embeddings the proposals refer to;
    ``pseudo_labels`` the NP3-refined clustering of them; ``calibrator`` maps their cosine to P(same)."""

    version: str | None
    embeddings: np.ndarray
    pseudo_labels: np.ndarray
    proposals: list[PairProposal]
    shortfall: int
    metrics: dict[str, float | int]
    timings: dict[str, float]
    calibrator: PSameCalibrator
    pool_sizes: dict[str, int] = field(default_factory=dict)
    train_result: TrainResult | None = None
    previous_version: str | None = None


class _Stages:
    """Seconds per stage, in the order the stages ran, plus the total."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.started = self.last = time.perf_counter()

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = now - self.last
        self.last = now

    def skipped(self, *stages: str) -> None:
        for stage in stages:
            self.timings[stage] = 0.0

    def total(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self.started
        return self.timings


def _logger(log: LogTarget) -> Callable[[str], None]:
    if log is None:
        return lambda message: None
    if isinstance(log, logging.Logger):
        return log.info
    if callable(log):
        target = log

        def emit(message: str) -> None:
            target(message)

        return emit
    raise TypeError(f"log must be a callable, a logging.Logger or None, got {type(log).__name__}")


def _as_graph(constraints: ConstraintGraph | str | bytes | None, n: int) -> ConstraintGraph:
    if constraints is None:
        graph = ConstraintGraph()
    elif isinstance(constraints, str | bytes):
        graph = ConstraintGraph.from_json(constraints)
    elif isinstance(constraints, ConstraintGraph):
        graph = constraints
    else:
        raise TypeError(
            f"constraints must be a ConstraintGraph, its JSON, or None, got {type(constraints).__name__}"
        )
    if len(graph) or graph.asked_pairs():
        top = graph.max_node()
        if top >= n:
            raise ValueError(f"constraints reference row {top} but features has only {n} rows")
    return graph


def _warm_start(registry: Any, d: int) -> tuple[str | None, dict[str, Any] | None]:
    """(latest version, its adapter state): what this cycle continues from."""
    previous = registry.latest() if registry is not None else None
    if previous is None:
        return None, None
    state = registry.load(previous).adapter_state
    if state is not None and int(state.get("in_dim", -1)) != d:
        raise ValueError(
            f"registry version {previous} has an adapter for {state.get('in_dim')}-d features, "
            f"but features are {d}-d"
        )
    return previous, state


def _why_not_train(config: CycleConfig, n: int, graph: ConstraintGraph, n_clusters: int) -> dict[str, int]:
    """The skip flags of the metrics; all zero means "train"."""
    skipped = {"skipped_cold_start": 0, "skipped_few_clusters": 0, "skipped_pool_size": 0}
    if config.train_when_fewer_than is not None and n >= config.train_when_fewer_than:
        skipped["skipped_pool_size"] = 1
    elif len(graph) == 0 and config.cold_start == "skip":
        skipped["skipped_cold_start"] = 1
    elif n_clusters < 2:
        skipped["skipped_few_clusters"] = 1
    return skipped


def _train_metrics(result: TrainResult | None) -> dict[str, float | int]:
    if result is None:
        return {}
    out: dict[str, float | int] = {
        "train_steps": result.steps,
        "train_epochs": len(result.losses_per_epoch),
        "loss_first": float(result.losses_per_epoch[0]),
        "loss_last": float(result.losses_per_epoch[-1]),
    }
    for term, value in result.terms_per_epoch[-1].items():
        if term != "total":
            out[f"loss_{term}"] = float(value)
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@dataclass
class _Sampled:
    proposals: list[PairProposal]
    shortfall: int
    pool_sizes: dict[str, int]
    exhausted: int


def _train(
    config: CycleConfig, x: np.ndarray, emb: np.ndarray, before: ClusteringView,
    init_state: dict[str, Any] | None, cameras: np.ndarray | None, progress: bool,
) -> TrainResult:
    """The adapter trained on ``before``'s pseudo-labels and the constraints kept by the policy."""
    effective = before.constraints.effective(
        config.contradiction_policy, similarity=lambda i, j: float(np.dot(emb[i], emb[j]))
    )
    return train_adapter(
        x,
        before.pseudo_labels,
        effective.must_link,
        effective.cannot_link,
        config.train,
        init_state=init_state,
        cameras=cameras,
        progress=progress,
    )


def _sample(
    config: CycleConfig, emb: np.ndarray, view: ClusteringView, say: Callable[[str], None], **side_info: Any
) -> _Sampled:
    """The next pairs from the configured sampler, reusing ``view``; an exhausted pool is no error."""
    sampler = make_sampler(config.strategy, **config.sampler_params())
    try:
        sampled = sampler.select(emb, view.constraints, int(config.budget), view=view, **side_info)
        out = _Sampled(list(sampled.proposals), int(sampled.shortfall), dict(sampled.pool_sizes), 0)
    except PoolExhaustedError as exc:
        say(f"cycle: pool exhausted ({exc})")
        out = _Sampled([], int(config.budget), {}, 1)
    say(f"cycle: {len(out.proposals)} pairs proposed by {config.strategy} (shortfall {out.shortfall})")
    return out


def _save(
    registry: Any, config: CycleConfig, previous: str | None, emb: np.ndarray, state: dict[str, Any] | None,
    metrics: dict[str, float | int], labels: np.ndarray, calibrator: PSameCalibrator,
    proposals: list[PairProposal],
) -> str:
    """A new registry version: embeddings, adapter, config, metrics, pseudo-labels, calibrator, proposals."""
    extra = {
        "pseudo_labels.npy": _npy_bytes(labels.astype(np.int64)),
        "calibrator.json": json.dumps(calibrator.to_dict()).encode(),
        "proposals.json": json.dumps([asdict(p) for p in proposals]).encode(),
    }
    return registry.save(
        embeddings=emb, adapter_state=state, config={**config.to_dict(), "previous_version": previous},
        metrics=metrics, extra=extra,
    )


def run_cycle(
    features: np.ndarray,
    constraints: ConstraintGraph | str | bytes | None,
    config: CycleConfig | None = None,
    *,
    registry: Any = None,
    cameras: np.ndarray | None = None,
    tracklets: np.ndarray | None = None,
    text_features: np.ndarray | None = None,
    progress: bool = False,
    log: LogTarget = None,
) -> CycleResult:
    """Run one cycle on the frozen backbone ``features`` (rows = images) and the constraints so far.

    ``registry``: a ``trainer.registry.ModelRegistry``; when given, the latest version's adapter is the
    warm start and the cycle's outcome is saved as a new version (``CycleResult.version``).
    """
    config = CycleConfig() if config is None else config
    if not isinstance(config, CycleConfig):
        raise TypeError(f"config must be a CycleConfig, got {type(config).__name__}")
    say = _logger(log)
    stages = _Stages()
    x = check_features(features, unit_norm="any", min_rows=2)
    n, d = x.shape
    graph = _as_graph(constraints, n)
    cameras = check_per_item(cameras, n, "cameras")
    tracklets = check_per_item(tracklets, n, "tracklets")
    if text_features is not None:
        text_features = check_features(text_features, "text_features", unit_norm="any", dtype=None, rows=n)

    previous, init_state = _warm_start(registry, d)
    say(f"cycle: n={n} d={d} constraints={len(graph)} previous={previous or 'none'}")
    stages.done("load")

    emb = apply_adapter(init_state, x, device=config.train.device)
    stages.done("embed")

    before = config.view(emb, graph)
    n_outliers = int((before.pseudo_labels < 0).sum())
    say(f"cycle: {before.n_clusters} clusters, {n_outliers} outliers before training")
    stages.done("cluster")

    skipped = _why_not_train(config, n, graph, before.n_clusters)
    train_result: TrainResult | None = None
    state, after = init_state, before
    if not any(skipped.values()):
        train_result = _train(config, x, emb, before, init_state, cameras, progress)
        state = train_result.adapter_state
        say(f"cycle: trained {train_result.steps} steps in {train_result.seconds:.1f}s, "
            f"loss {train_result.losses_per_epoch[0]:.4f} -> {train_result.losses_per_epoch[-1]:.4f}")
        stages.done("train")
        emb = apply_adapter(state, x, device=config.train.device)
        stages.done("reembed")
        after = config.view(emb, graph)
        after.np3  # noqa: B018 - computed here so that its time counts as "recluster"
        stages.done("recluster")
    else:
        say(f"cycle: training skipped ({', '.join(k for k, v in skipped.items() if v)})")
        stages.skipped("train", "reembed", "recluster")

    calibrator = after.calibrator
    stages.done("calibrate")

    sampled = _sample(config, emb, after, say, cameras=cameras, tracklets=tracklets,
                      text_embeddings=text_features)
    stages.done("sample")

    labels = after.pseudo_labels
    metrics: dict[str, float | int] = {
        "n_images": n,
        "dim": int(emb.shape[1]),
        "n_constraints": len(graph),
        "n_must_links": len(graph.must_links()),
        "n_cannot_links": len(graph.cannot_links()),
        "contradictions": len(after.np3.contradictions),
        "np3_changed": after.np3.n_changed,
        "n_clusters_before": before.n_clusters,
        "n_clusters": after.n_clusters,
        "n_outliers": int((labels < 0).sum()),
        "warm_start": int(init_state is not None),
        "trained": int(train_result is not None),
        **skipped,
        "pairs_proposed": len(sampled.proposals),
        "shortfall": sampled.shortfall,
        "exhausted": sampled.exhausted,
        "calibrator_prior": int(calibrator.is_prior),
        **_train_metrics(train_result),
    }
    version: str | None = None
    if registry is not None:
        version = _save(registry, config, previous, emb, state, metrics, labels, calibrator,
                        sampled.proposals)
        say(f"cycle: saved version {version}")
    stages.done("save")
    return CycleResult(
        version=version,
        embeddings=emb,
        pseudo_labels=labels,
        proposals=sampled.proposals,
        shortfall=sampled.shortfall,
        metrics=metrics,
        timings=stages.total(),
        calibrator=calibrator,
        pool_sizes=sampled.pool_sizes,
        train_result=train_result,
        previous_version=previous,
    )
