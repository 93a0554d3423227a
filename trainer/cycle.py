"""One active-learning cycle, the unit an RQ job runs (DESIGN.md "The loop", step 5).

``run_cycle`` goes: previous version from the registry (warm-start adapter) -> current embeddings =
adapter(frozen features) -> kNN graph -> k-reciprocal Jaccard -> DBSCAN -> NP3 with the constraints
-> train the adapter -> re-embed the cached features (the backbone never runs here) -> kNN / Jaccard /
DBSCAN / NP3 again on the new embedding (what the sampler and the returned labels use) -> fit the
P(same) calibrator on the labelled pairs -> select the next pairs -> save a new version.

Every intermediate is computed once: the post-training kNN graph, Jaccard distance, DBSCAN labels,
FINCH hierarchy (for AAS) and calibrator go to the sampler in a ``SamplingContext``.

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
from strategies.clustering import FINCH, DBSCANClusterer
from strategies.constraints import ConstraintGraph
from strategies.defaults import (
    CONTRADICTION_POLICY,
    DBSCAN_EPS,
    DBSCAN_MIN_SAMPLES,
    K1,
    K2,
    KNN_K,
)
from strategies.jaccard import jaccard_distance
from strategies.knn import KnnGraph, build_knn
from strategies.np3 import NP3
from strategies.samplers import (
    PairProposal,
    PoolExhaustedError,
    SamplingContext,
    available_samplers,
    make_sampler,
)
from trainer.adapter import TrainConfig, TrainResult, _as_features, apply_adapter, train_adapter

__all__ = ["COLD_START_POLICIES", "CycleConfig", "CycleResult", "run_cycle"]

COLD_START_POLICIES = ("pseudo_labels", "skip")
_CONTRADICTION_POLICIES = ("ml_wins", "cl_wins", "latest_wins")

LogTarget = Callable[[str], Any] | logging.Logger | None


@dataclass
class CycleConfig:
    """Everything one cycle needs besides the data; defaults from strategies/defaults.py.

    ``train.seed`` seeds the adapter training, ``random_state`` everything else (kNN index, NP3,
    sampler). ``train_when_fewer_than``: train only while the pool has fewer images than this
    (``None``: always). ``cold_start``: ``"pseudo_labels"`` (train on pseudo-labels only while there is
    no constraint) or ``"skip"``.
    """

    strategy: str = "aas"
    budget: int = 50
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
        if self.contradiction_policy not in _CONTRADICTION_POLICIES:
            raise ValueError(
                f"contradiction_policy must be one of {_CONTRADICTION_POLICIES}, "
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


@dataclass
class CycleResult:
    """What a cycle produced. ``embeddings`` are the post-training embeddings the proposals refer to;
    ``pseudo_labels`` the NP3-refined clustering of them; ``calibrator`` is ``PSameCalibrator.to_dict()``."""

    version: str | None
    embeddings: np.ndarray
    pseudo_labels: np.ndarray
    proposals: list[PairProposal]
    shortfall: int
    metrics: dict[str, float | int]
    timings: dict[str, float]
    calibrator: dict[str, Any]
    pool_sizes: dict[str, int] = field(default_factory=dict)
    train_result: TrainResult | None = None
    previous_version: str | None = None


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


def _per_item(values: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.shape[:1] != (n,) or (arr.ndim != 1 and name != "text_features"):
        raise ValueError(f"{name} must have one entry per row of features ({n}), got shape {arr.shape}")
    return arr


@dataclass
class _Clustering:
    knn: KnnGraph
    jaccard: Any
    dbscan: np.ndarray
    refined: np.ndarray
    contradictions: int
    n_changed: int


def _cluster(embeddings: np.ndarray, graph: ConstraintGraph, config: CycleConfig) -> _Clustering:
    """kNN -> Jaccard -> DBSCAN -> NP3 on one embedding (each computed once, reused by the sampler)."""
    n = embeddings.shape[0]
    k1 = max(1, min(int(config.k1), n - 1))
    knn = build_knn(embeddings, min(n, max(k1, int(config.knn_k))), random_state=config.random_state)
    jac = jaccard_distance(embeddings, k1=k1, k2=max(1, min(int(config.k2), k1)), knn=knn)
    dbscan = DBSCANClusterer(config.eps, config.min_samples).fit_predict(jac)
    np3 = NP3(config.contradiction_policy, random_state=config.random_state)
    result = np3.refine(dbscan, embeddings, graph)
    labels = np.asarray(result.labels)
    return _Clustering(knn, jac, dbscan, labels, len(result.contradictions), result.n_changed)


def _n_clusters(labels: np.ndarray) -> int:
    return int(np.unique(labels[labels >= 0]).size)


def _labelled(graph: ConstraintGraph) -> tuple[np.ndarray, np.ndarray]:
    """All human answers as (pairs (m, 2), same (m,)), for the calibrator."""
    rows = [(c.i, c.j, 1) for c in graph.must_links()] + [(c.i, c.j, 0) for c in graph.cannot_links()]
    if not rows:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=bool)
    arr = np.asarray(rows, dtype=np.int64)
    return arr[:, :2], arr[:, 2].astype(bool)


def _sampler_params(config: CycleConfig) -> dict[str, Any]:
    """The configured params, plus the cycle's seed and NP3 policy where the sampler takes them."""
    params = dict(config.strategy_params)
    probe = make_sampler(config.strategy, **params)
    accepted = inspect.signature(type(probe).__init__).parameters
    if "random_state" in accepted and "random_state" not in params:
        params["random_state"] = config.random_state
    if "contradiction_policy" in accepted and "contradiction_policy" not in params:
        params["contradiction_policy"] = config.contradiction_policy
    return params


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


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
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str, since: float) -> float:
        now = time.perf_counter()
        timings[stage] = now - since
        return now

    x = _as_features(features)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"features must have at least 2 rows (a pair needs two images), got {n}")
    graph = _as_graph(constraints, n)
    cameras = _per_item(cameras, n, "cameras")
    tracklets = _per_item(tracklets, n, "tracklets")
    text_features = _per_item(text_features, n, "text_features")
    if text_features is not None and text_features.ndim != 2:
        raise ValueError(f"text_features must be a 2-D (n, d_text) array, got shape {text_features.shape}")

    # 1. previous version -> warm start
    t = time.perf_counter()
    init_state: dict[str, Any] | None = None
    previous: str | None = None
    if registry is not None:
        previous = registry.latest()
        if previous is not None:
            init_state = registry.load(previous).adapter_state
            if init_state is not None and int(init_state.get("in_dim", -1)) != d:
                raise ValueError(
                    f"registry version {previous} has an adapter for {init_state.get('in_dim')}-d features, "
                    f"but features are {d}-d"
                )
    say(f"cycle: n={n} d={d} constraints={len(graph)} previous={previous or 'none'}")
    t = lap("load", t)

    # 2. current embeddings and 3. pseudo-labels
    device = config.train.device
    emb = apply_adapter(init_state, x, device=device)
    t = lap("embed", t)
    before = _cluster(emb, graph, config)
    n_clusters_before = _n_clusters(before.refined)
    say(f"cycle: {n_clusters_before} clusters, {int((before.refined < 0).sum())} outliers before training")
    t = lap("cluster", t)

    # 4. train the adapter (or say why not)
    skipped = {"skipped_cold_start": 0, "skipped_few_clusters": 0, "skipped_pool_size": 0}
    if config.train_when_fewer_than is not None and n >= config.train_when_fewer_than:
        skipped["skipped_pool_size"] = 1
    elif len(graph) == 0 and config.cold_start == "skip":
        skipped["skipped_cold_start"] = 1
    elif n_clusters_before < 2:
        skipped["skipped_few_clusters"] = 1
    train_result: TrainResult | None = None
    state = init_state
    after = before
    if not any(skipped.values()):
        effective = graph.effective(
            config.contradiction_policy, similarity=lambda i, j: float(np.dot(emb[i], emb[j]))
        )
        train_result = train_adapter(
            x,
            before.refined,
            effective.must_link,
            effective.cannot_link,
            config.train,
            init_state=init_state,
            cameras=cameras,
            progress=progress,
        )
        state = train_result.adapter_state
        say(f"cycle: trained {train_result.steps} steps in {train_result.seconds:.1f}s, "
            f"loss {train_result.losses_per_epoch[0]:.4f} -> {train_result.losses_per_epoch[-1]:.4f}")
        t = lap("train", t)
        emb = apply_adapter(state, x, device=device)
        t = lap("reembed", t)
        after = _cluster(emb, graph, config)
        t = lap("recluster", t)
    else:
        say(f"cycle: training skipped ({', '.join(k for k, v in skipped.items() if v)})")
        for stage in ("train", "reembed", "recluster"):
            timings[stage] = 0.0

    # 5. calibrate P(same) on the answered pairs under the new embedding
    pairs, same = _labelled(graph)
    sims = (emb[pairs[:, 0]] * emb[pairs[:, 1]]).sum(axis=1).astype(np.float64)
    calibrator = PSameCalibrator().fit(sims, same)
    t = lap("calibrate", t)

    # 6. select the next pairs, reusing everything computed above
    sampler = make_sampler(config.strategy, **_sampler_params(config))
    context = SamplingContext(
        knn=after.knn, jaccard=after.jaccard, dbscan_labels=after.dbscan, calibrator=calibrator
    )
    if config.strategy == "aas":
        context.finch = FINCH(random_state=config.random_state).fit(emb, knn=after.knn)
    exhausted = 0
    try:
        sampled = sampler.select(
            emb,
            graph,
            int(config.budget),
            cameras=cameras,
            tracklets=tracklets,
            text_embeddings=text_features,
            context=context,
        )
        proposals, shortfall = list(sampled.proposals), int(sampled.shortfall)
        pool_sizes = dict(sampled.pool_sizes)
    except PoolExhaustedError as exc:
        say(f"cycle: pool exhausted ({exc})")
        proposals, shortfall, pool_sizes, exhausted = [], int(config.budget), {}, 1
    say(f"cycle: {len(proposals)} pairs proposed by {config.strategy} (shortfall {shortfall})")
    t = lap("sample", t)

    # 7. metrics and a new version
    labels = after.refined
    metrics: dict[str, float | int] = {
        "n_images": n,
        "dim": int(emb.shape[1]),
        "n_constraints": len(graph),
        "n_must_links": len(graph.must_links()),
        "n_cannot_links": len(graph.cannot_links()),
        "contradictions": after.contradictions,
        "np3_changed": after.n_changed,
        "n_clusters_before": n_clusters_before,
        "n_clusters": _n_clusters(labels),
        "n_outliers": int((labels < 0).sum()),
        "warm_start": int(init_state is not None),
        "trained": int(train_result is not None),
        **skipped,
        "pairs_proposed": len(proposals),
        "shortfall": shortfall,
        "exhausted": exhausted,
        "calibrator_prior": int(calibrator.is_prior),
    }
    if train_result is not None:
        metrics["train_steps"] = train_result.steps
        metrics["train_epochs"] = len(train_result.losses_per_epoch)
        metrics["loss_first"] = float(train_result.losses_per_epoch[0])
        metrics["loss_last"] = float(train_result.losses_per_epoch[-1])
        for term, value in train_result.terms_per_epoch[-1].items():
            if term != "total":
                metrics[f"loss_{term}"] = float(value)
    version: str | None = None
    if registry is not None:
        record = {**config.to_dict(), "previous_version": previous}
        extra = {
            "pseudo_labels.npy": _npy_bytes(labels.astype(np.int64)),
            "calibrator.json": json.dumps(calibrator.to_dict()).encode(),
            "proposals.json": json.dumps([asdict(p) for p in proposals]).encode(),
        }
        version = registry.save(
            embeddings=emb, adapter_state=state, config=record, metrics=metrics, extra=extra
        )
        say(f"cycle: saved version {version}")
    t = lap("save", t)
    timings["total"] = time.perf_counter() - started
    return CycleResult(
        version=version,
        embeddings=emb,
        pseudo_labels=labels,
        proposals=proposals,
        shortfall=shortfall,
        metrics=metrics,
        timings=timings,
        calibrator=calibrator.to_dict(),
        pool_sizes=pool_sizes,
        train_result=train_result,
        previous_version=previous,
    )
