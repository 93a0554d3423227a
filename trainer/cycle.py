# Long on purpose: the cycle's stages share one set of inputs and must read top to bottom as DESIGN.md's loop.
"""One active-learning cycle, the unit an RQ job runs (DESIGN.md "The loop", step 5).

``run_cycle`` is a sequence of stages, each timed under its name in ``CycleResult.timings``:
``load`` (the adapter in service: the latest version's) -> ``embed`` (that adapter on the frozen
features) -> ``review`` the answers (strategies.review: majority per pair, second opinions for large
or doubted merges, contradictions split at their minimum cut; only the trusted answers go further,
the suspect pairs come back as ``CycleResult.reviews`` to be asked first) -> ``identify`` (the
embedding's ClusteringView and its identity assignment: verified must-link components joined by
first-neighbour links under the constraints) -> ``train`` a candidate adapter from the identity on
the answers outside the held-out identities (the identity assignment as pseudo-labels) ->
``validate`` (trainer.gate: the candidate, the adapter in service and the frozen encoder scored on
the held-out answers; only a winner is served) -> ``recluster`` (a new view, only when the served
model changed) -> ``calibrate`` P(same) on the answered pairs -> ``sample`` the next pairs ->
``save`` a new version (the served adapter, the identities, the gate's decision, the reviews).

A candidate always starts from the identity (the frozen embedding), never from the previous cycle's
adapter: the same answers give the same candidate, so cycles without new answers cannot drift, and a
model that validated worse than the one in service or than the frozen encoder is never served.

Everything derived from an embedding lives on its ``strategies.view.ClusteringView`` and is computed
once: the sampler receives the served embedding's view, so it reuses the kNN graph, the calibrator
and the identities, and builds Jaccard, DBSCAN or FINCH only when it asks for them (AAS).

Edge cases, each with a visible outcome in ``CycleResult.metrics``:

- **no answers to learn from or to validate on** (cold start, or too few held-out answers): no
  candidate is trained (``skipped_unvalidated=1``) and the model in service stays;
- **the same answers as the version in service**: nothing new to learn (``skipped_no_new_answers=1``);
  the model in service stays, so repeated cycles never drift;
- **fewer than 2 training identities**: ``skipped_few_clusters=1``;
- **large pools on CPU**: ``train_when_fewer_than=N`` trains only while the pool has fewer than ``N``
  images (``skipped_pool_size=1`` otherwise): identities and sampling still run;
- **PoolExhaustedError** from the sampler: no proposals, ``exhausted=1``, ``shortfall=budget``.

Pure of Flask and Label Studio: inputs are arrays, a ConstraintGraph (or its JSON) and an optional
``ModelRegistry``.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from strategies.calibration import PSameCalibrator
from strategies.constraints import ConstraintGraph
from strategies.defaults import REDUNDANCY_K, REDUNDANCY_MAX_P_SAME, REDUNDANCY_MIN_SIZE
from strategies.identities import IdentityAssigner, IdentityAssignment, resolve_link_rule
from strategies.review import AnswerReview, Review, ReviewedAnswers
from strategies.samplers import PairProposal, PoolExhaustedError, available_samplers, make_sampler
from strategies.validation import check_features, check_per_item
from strategies.view import ClusteringView, ViewParams, labelled_pairs
from trainer.adapter import TrainConfig, TrainResult, apply_adapter, train_adapter
from trainer.defaults import CYCLE_BUDGET, CYCLE_PSEUDO_LABELS, CYCLE_STRATEGY, CYCLE_TRAIN_MIN_P_SAME
from trainer.gate import GateDecision, Holdout, ValidationGate

__all__ = [
    "PSEUDO_LABELS", "CycleConfig", "CycleResult", "answers_fingerprint", "review_answers", "run_cycle",
]

# What a candidate learns identities from: the assignment under the model in service ("identities"),
# the assignment under the frozen encoder ("frozen": a function of the answers alone), or only the
# must-link components ("verified").
PSEUDO_LABELS = ("identities", "frozen", "verified")

LogTarget = Callable[[str], Any] | logging.Logger | None


@dataclass
class CycleConfig(ViewParams):
    """Everything one cycle needs besides the data; defaults from strategies/ and trainer/defaults.py.

    The view's parameters (``k1``, ``k2``, ``knn_k``, ``eps``, ``min_samples``, ``contradiction_policy``,
    ``min_p_same``, ``link_past_cannot_link``, ``random_state``) are ViewParams'; :meth:`view` builds a
    view with them.
    ``train.seed`` seeds the adapter training, ``random_state`` everything else (kNN index, NP3,
    sampler). ``train_when_fewer_than``: train only while the pool has fewer images than this
    (``None``: always). ``gate``: the validation gate that decides which model is served.
    ``redundancy_*``: strategies.review.AnswerReview's parameters (``redundancy_k=1``: no second opinions).
    """

    strategy: str = CYCLE_STRATEGY
    budget: int = CYCLE_BUDGET
    strategy_params: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    gate: ValidationGate = field(default_factory=ValidationGate)
    train_when_fewer_than: int | None = None
    pseudo_labels: str = CYCLE_PSEUDO_LABELS
    train_min_p_same: float = CYCLE_TRAIN_MIN_P_SAME
    redundancy_k: int = REDUNDANCY_K
    redundancy_min_size: int = REDUNDANCY_MIN_SIZE
    redundancy_max_p_same: float = REDUNDANCY_MAX_P_SAME

    def __post_init__(self) -> None:
        if self.strategy not in available_samplers():
            raise ValueError(f"strategy must be one of {available_samplers()}, got {self.strategy!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int | np.integer) or self.budget < 1:
            raise ValueError(f"budget must be an int >= 1, got {self.budget!r}")
        if not isinstance(self.strategy_params, dict):
            raise ValueError(f"strategy_params must be a dict, got {type(self.strategy_params).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if not isinstance(self.gate, ValidationGate):
            raise ValueError(f"gate must be a ValidationGate, got {type(self.gate).__name__}")
        self.check_view_params()
        if not 0.0 <= float(self.train_min_p_same) < 1.0:
            raise ValueError(f"train_min_p_same must be in [0, 1), got {self.train_min_p_same!r}")
        if self.pseudo_labels not in PSEUDO_LABELS:
            raise ValueError(f"pseudo_labels must be one of {PSEUDO_LABELS}, got {self.pseudo_labels!r}")
        self.answer_review().check_params()
        if self.train_when_fewer_than is not None and self.train_when_fewer_than < 1:
            raise ValueError(
                f"train_when_fewer_than must be >= 1 or None, got {self.train_when_fewer_than!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (what the registry stores as the version's config)."""
        return json.loads(json.dumps(asdict(self), default=str))

    def answer_review(self) -> AnswerReview:
        """What decides which answers are trusted and which pairs are asked again."""
        return AnswerReview(redundancy_k=self.redundancy_k, redundancy_min_size=self.redundancy_min_size,
                            redundancy_max_p_same=self.redundancy_max_p_same)

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
    """What a cycle produced. ``embeddings`` are the served model's embeddings the proposals refer to;
    ``identities`` every image's individual under them (``pseudo_labels`` = ``identities.labels``);
    ``calibrator`` maps their cosine to P(same); ``gate`` says which model is served and why;
    ``reviewed`` the answers the cycle trusted (``reviewed.graph``) and the pairs to ask again before any
    new one (``reviews``, most urgent first)."""

    version: str | None
    embeddings: np.ndarray
    identities: IdentityAssignment
    proposals: list[PairProposal]
    shortfall: int
    metrics: dict[str, Any]
    timings: dict[str, float]
    calibrator: PSameCalibrator
    pool_sizes: dict[str, int] = field(default_factory=dict)
    train_result: TrainResult | None = None
    gate: GateDecision | None = None
    previous_version: str | None = None
    reviewed: ReviewedAnswers | None = None

    @property
    def reviews(self) -> tuple[Review, ...]:
        return () if self.reviewed is None else self.reviewed.reviews

    @property
    def pseudo_labels(self) -> np.ndarray:
        return self.identities.labels


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


@dataclass(frozen=True)
class _InService:
    version: str | None = None
    adapter_state: dict[str, Any] | None = None  # None: the frozen encoder
    answers: str | None = None  # fingerprint of the answers that version's cycle saw
    trained_on: np.ndarray | None = None  # the images its adapter learned from (None: none)


def _in_service(registry: Any, d: int) -> _InService:
    """The latest version: the adapter it serves and the answers it was decided on."""
    previous = registry.latest() if registry is not None else None
    if previous is None:
        return _InService()
    loaded = registry.load(previous)
    state = loaded.adapter_state
    if state is not None and int(state.get("in_dim", -1)) != d:
        raise ValueError(
            f"registry version {previous} has an adapter for {state.get('in_dim')}-d features, "
            f"but features are {d}-d"
        )
    trained_on = None
    if state is not None and "trained_images.npy" in loaded.extra:
        trained_on = np.load(io.BytesIO(loaded.extra["trained_images.npy"]), allow_pickle=False)
    return _InService(previous, state, loaded.metrics.get("answers_fingerprint"), trained_on)


def answers_fingerprint(must_link: np.ndarray, cannot_link: np.ndarray) -> str:
    """Identifies a set of answers: a cycle that sees the same ones as the last trains nothing new."""
    digest = hashlib.sha1()
    for pairs in (must_link, cannot_link):
        arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        arr = np.sort(arr, axis=1)
        digest.update(arr[np.lexsort((arr[:, 1], arr[:, 0]))].tobytes() + b"|")
    return digest.hexdigest()


def review_answers(config: CycleConfig, emb: np.ndarray, graph: ConstraintGraph) -> ReviewedAnswers:
    """The answers reviewed under the embedding in service, P(same) calibrated on every answer."""
    pairs, same = labelled_pairs(graph)
    sims = (emb[pairs[:, 0]] * emb[pairs[:, 1]]).sum(axis=1).astype(np.float64)
    calibrator = PSameCalibrator().fit(sims, same)

    def p_same(asked: np.ndarray) -> np.ndarray:
        s = (emb[asked[:, 0]] * emb[asked[:, 1]]).sum(axis=1).astype(np.float64)
        return np.asarray(calibrator.predict(s), dtype=np.float64)

    return config.answer_review().resolve(graph, p_same)


def _training_labels(identities: IdentityAssignment, holdout: Holdout) -> np.ndarray:
    """The identity assignment as pseudo-labels, without any identity that holds a held-out image
    (nothing about a held-out individual may reach the candidate) and without single images."""
    labels = identities.labels.copy()
    touched = np.unique(labels[holdout.images])
    labels[np.isin(labels, touched)] = -1
    sizes = np.bincount(labels[labels >= 0], minlength=int(labels.max()) + 1 if labels.size else 0)
    labels[(labels >= 0) & (sizes[np.maximum(labels, 0)] < 2)] = -1
    return labels


def _label_source(config: CycleConfig, x: np.ndarray, graph: ConstraintGraph, view: ClusteringView,
                  in_service: dict[str, Any] | None) -> IdentityAssignment:
    """The identities a candidate learns from (``CycleConfig.pseudo_labels``), keeping only the inferred
    links whose calibrated P(same) reaches ``train_min_p_same``: the assignment the team sees keeps
    weaker links (recall), but a wrong link taught as a positive pulls two individuals together."""
    if config.pseudo_labels == "frozen" and in_service is not None:
        view = config.view(apply_adapter(None, x), graph)
    if config.pseudo_labels in ("identities", "frozen"):
        if config.train_min_p_same <= config.min_p_same:
            return view.identities
        assigner = IdentityAssigner(min_p_same=config.train_min_p_same,
                                    contradiction_policy=config.contradiction_policy,
                                    link_past_cannot_link=view.link_past_cannot_link)
        return assigner.assign(view.features, view.constraints, view.knn, view.calibrator)
    comp = graph.component_labels(x.shape[0])
    n = comp.shape[0]
    return IdentityAssignment(comp, np.bincount(comp)[comp] >= 2, np.ones(n), np.zeros(n, dtype=np.int64))


def _trained_images(n: int, labels: np.ndarray, holdout: Holdout) -> np.ndarray:
    """Every image a candidate learned from: a pseudo-label or an end of a training answer."""
    seen = labels >= 0
    for pairs in (holdout.train_must_link, holdout.train_cannot_link):
        if pairs.size:
            seen[pairs.reshape(-1)] = True
    return seen


def _why_not_train(config: CycleConfig, n: int, holdout: Holdout, labels: np.ndarray,
                   same_answers: bool, pooled: bool = False) -> dict[str, int]:
    """The skip flags of the metrics; all zero means "train a candidate" (``pooled``: the folds of
    cross-validation hold enough "same" pairs together)."""
    skipped = {"skipped_no_new_answers": 0, "skipped_unvalidated": 0, "skipped_few_clusters": 0,
               "skipped_pool_size": 0}
    gate = config.gate
    if same_answers:
        skipped["skipped_no_new_answers"] = 1
    elif config.train_when_fewer_than is not None and n >= config.train_when_fewer_than:
        skipped["skipped_pool_size"] = 1
    elif not (pooled or gate.can_validate(holdout)):
        skipped["skipped_unvalidated"] = 1
    elif np.unique(labels[labels >= 0]).size < 2:
        skipped["skipped_few_clusters"] = 1
    return skipped


def _cross_validate(config: CycleConfig, x: np.ndarray, source: IdentityAssignment, folds: list[Holdout],
                    embeddings: dict[str, np.ndarray], incumbent: str, **train_kw: Any) -> GateDecision:
    """The gate's decision pooled over the folds (ValidationGate.cross_validate): ``embeddings`` hold
    fold 0's candidate, the frozen encoder and the model in service; every other fold with held-out
    "same" pairs gets a candidate trained without it, scored beside the same two on that fold."""
    gate = config.gate
    fold_scores = [(folds[0], {k: gate.score(e, folds[0]) for k, e in embeddings.items()})]
    for holdout in folds[1:]:
        labels = _training_labels(source, holdout)
        if not holdout.positives.shape[0] or np.unique(labels[labels >= 0]).size < 2:
            continue
        result = train_adapter(x, labels, holdout.train_must_link, holdout.train_cannot_link, config.train,
                               **train_kw)
        candidate = apply_adapter(result.adapter_state, x, device=config.train.device)
        fold_scores.append((holdout, {k: gate.score(candidate if k == "candidate" else e, holdout)
                                      for k, e in embeddings.items()}))
    return gate.decide_pooled(fold_scores, incumbent)


def _train_metrics(result: TrainResult | None) -> dict[str, float | int]:
    if result is None:
        return {}
    out: dict[str, float | int] = {
        "train_steps": result.steps,
        "train_clusters": result.clusters,
        "train_epochs": len(result.losses_per_epoch),
        "loss_first": float(result.losses_per_epoch[0]),
        "loss_last": float(result.losses_per_epoch[-1]),
    }
    for term, value in result.terms_per_epoch[-1].items():
        if term != "total":
            out[f"loss_{term}"] = float(value)
    return out


def _gate_metrics(decision: GateDecision | None, served: str) -> dict[str, Any]:
    """The gate's outcome as flat metrics: what is served, why, and every model's held-out scores."""
    out: dict[str, Any] = {"served": served}
    if decision is None:
        return out
    out["gate_reason"] = decision.reason
    out["gate_held_out_images"] = decision.held_out_images
    out["gate_held_out_positives"] = decision.held_out_positives
    out["gate_held_out_negatives"] = decision.held_out_negatives
    out["gate_pooled_folds"] = decision.pooled_folds
    for model, scores in decision.scores.items():
        for name, value in scores.items():
            out[f"gate_{model}_{name}"] = float(value)
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@dataclass
class _Sampled:
    proposals: list[PairProposal]
    shortfall: int
    pool_sizes: dict[str, int]
    exhausted: int


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
    metrics: dict[str, Any], identities: IdentityAssignment, calibrator: PSameCalibrator,
    proposals: list[PairProposal], decision: GateDecision | None, trained_on: np.ndarray | None,
    reviews: tuple[Review, ...] = (),
) -> str:
    """A new registry version: the served embeddings and adapter, config, metrics, identities,
    calibrator, proposals and the gate's decision."""
    extra = {
        "pseudo_labels.npy": _npy_bytes(identities.labels.astype(np.int64)),
        "identities.npz": _npz_bytes(
            labels=identities.labels, verified=identities.verified,
            confidence=identities.confidence, answers=identities.answers,
        ),
        "calibrator.json": json.dumps(calibrator.to_dict()).encode(),
        "proposals.json": json.dumps([asdict(p) for p in proposals]).encode(),
        "gate.json": json.dumps(None if decision is None else decision.to_dict()).encode(),
        "reviews.json": json.dumps([r.to_dict() for r in reviews]).encode(),
    }
    if trained_on is not None:
        extra["trained_images.npy"] = _npy_bytes(np.asarray(trained_on, dtype=bool))
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
    model in service (the gate's incumbent) and the cycle's outcome is saved as a new version
    (``CycleResult.version``).
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

    service = _in_service(registry, d)
    previous, in_service = service.version, service.adapter_state
    incumbent = "frozen" if in_service is None else "previous"
    say(f"cycle: n={n} d={d} constraints={len(graph)} previous={previous or 'none'} serving {incumbent}")
    stages.done("load")

    emb = apply_adapter(in_service, x, device=config.train.device)
    stages.done("embed")

    reviewed = review_answers(config, emb, graph)
    trusted = reviewed.graph
    link = resolve_link_rule(config.link_past_cannot_link, conflicts=reviewed.conflicts)
    if link != config.link_past_cannot_link:
        config = replace(config, link_past_cannot_link=link)
    if reviewed.reviews:
        say(f"cycle: {len(reviewed.reviews)} pair(s) to ask again ({reviewed.summary()})")
    stages.done("review")

    view = config.view(emb, trusted)
    before = view.identities
    say(f"cycle: {before.n_identities} identities ({before.summary()['identities_verified']} verified)")
    stages.done("identify")

    answered = graph.effective(config.contradiction_policy)  # every answer: what "new answers" means
    effective = trusted.effective(config.contradiction_policy)
    unseen = None
    if service.trained_on is not None and service.trained_on.shape == (n,):
        unseen = ~service.trained_on
    holdout = config.gate.split(n, effective.must_link, effective.cannot_link, unseen=unseen)
    source = _label_source(config, x, trusted, view, in_service)
    labels = _training_labels(source, holdout)
    folds = None
    if config.gate.cross_validate and not config.gate.can_validate(holdout):
        folds = config.gate.split_folds(n, effective.must_link, effective.cannot_link, unseen=unseen)
        if not (folds[0].positives.shape[0] and config.gate.can_validate_pooled(folds)):
            folds = None
    fingerprint = answers_fingerprint(answered.must_link, answered.cannot_link)
    skipped = _why_not_train(config, n, holdout, labels, same_answers=fingerprint == service.answers,
                             pooled=folds is not None)
    train_result: TrainResult | None = None
    decision: GateDecision | None = None
    state, trained_on = in_service, service.trained_on
    if not any(skipped.values()):
        train_result = train_adapter(
            x, labels, holdout.train_must_link, holdout.train_cannot_link, config.train,
            cameras=cameras, text_features=text_features, progress=progress,
        )
        say(f"cycle: trained {train_result.steps} steps in {train_result.seconds:.1f}s, "
            f"loss {train_result.losses_per_epoch[0]:.4f} -> {train_result.losses_per_epoch[-1]:.4f}")
        stages.done("train")
        frozen = emb if in_service is None else apply_adapter(None, x)  # one pool-sized copy, not two
        models = {
            "candidate": (train_result.adapter_state, apply_adapter(train_result.adapter_state, x,
                                                                    device=config.train.device)),
            "frozen": (None, frozen),
        }
        if in_service is not None:
            models["previous"] = (in_service, emb)
        embeddings = {k: e for k, (_, e) in models.items()}
        if folds is None:
            decision = config.gate.decide(holdout, embeddings, incumbent)
        else:
            decision = _cross_validate(config, x, source, folds, embeddings, incumbent,
                                       cameras=cameras, text_features=text_features)
        say(f"cycle: gate: {decision.reason}")
        stages.done("validate")
        if decision.served != incumbent:
            state, emb = models[decision.served]
            trained_on = _trained_images(n, labels, holdout) if decision.served == "candidate" else None
            view = config.view(emb, trusted)
            view.identities  # noqa: B018 - computed here so that its time counts as "recluster"
        stages.done("recluster")
    else:
        say(f"cycle: no candidate trained ({', '.join(k for k, v in skipped.items() if v)}); "
            f"{incumbent} stays in service")
        stages.skipped("train", "validate", "recluster")
    served = incumbent if decision is None else decision.served

    calibrator = view.calibrator
    stages.done("calibrate")

    sampled = _sample(config, emb, view, say, cameras=cameras, tracklets=tracklets,
                      text_embeddings=text_features)
    stages.done("sample")

    identities = view.identities
    metrics: dict[str, Any] = {
        "n_images": n,
        "dim": int(emb.shape[1]),
        "text_dim": 0 if text_features is None else int(text_features.shape[1]),
        "n_constraints": len(graph),
        "n_must_links": len(graph.must_links()),
        "n_cannot_links": len(graph.cannot_links()),
        "contradictions": len(answered.contradictions),
        **reviewed.summary(),
        "identity_link_past_cannot_link": int(config.link_past_cannot_link),
        "answers_fingerprint": fingerprint,
        **identities.summary(),
        "trained": int(train_result is not None),
        **skipped,
        **_gate_metrics(decision, served),
        "pairs_proposed": len(sampled.proposals),
        "shortfall": sampled.shortfall,
        "exhausted": sampled.exhausted,
        "calibrator_prior": int(calibrator.is_prior),
        **_train_metrics(train_result),
    }
    version: str | None = None
    if registry is not None:
        version = _save(registry, config, previous, emb, state, metrics, identities, calibrator,
                        sampled.proposals, decision, trained_on, reviewed.reviews)
        say(f"cycle: saved version {version} ({served} served)")
    stages.done("save")
    return CycleResult(
        version=version,
        embeddings=emb,
        identities=identities,
        proposals=sampled.proposals,
        shortfall=sampled.shortfall,
        metrics=metrics,
        timings=stages.total(),
        calibrator=calibrator,
        pool_sizes=sampled.pool_sizes,
        train_result=train_result,
        gate=decision,
        previous_version=previous,
        reviewed=reviewed,
    )
