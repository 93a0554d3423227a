"""Push a finished cycle to Label Studio: new pair tasks, predictions, model version, view, retirements.

Why each step: the queue order and what an annotator reads are two different numbers. The order is
the sampler's priority, written into each task as ``data.queue`` (``score_of(priority)`` as fixed-width
text: lowest first, and text order equals number order), and the "Most informative first" view sorts
by it; Label Studio serves the next task in that order (measured: 40 of 40). The prediction carries
what the model believes: the proposed choice and, as its score, the calibrated probability of that
choice (P(answer)), and no pre-filled choice while the calibrator is only its prior, so an annotator is
never nudged by a guess. Predictions are imported under a new model_version per cycle and the
project PATCHed to it, because Label Studio shows only the project's version and averages scores
re-imported under one version; a retried push skips tasks it already scored. Task creation is keyed by
the stable pair id, so a retried job creates no duplicate task. Open tasks whose answer the constraints
now imply are deleted: no annotator is served a question the backend can already answer ("pairs
saved"); every other open task gets its new place in the queue (one PATCH where it moved).

Reviews (strategies.review: a contradiction's weakest link, a pair annotators disagree on, a merge
waiting for a second opinion) are pairs already answered, asked again as a new task: keyed by
``<pair id>:<answers on the pair so far>`` (``data.review_key``), so a retried push finds it and an
answer makes the next review of the same pair a new task. They are queued at ``REVIEW_SCORE`` (0) and
every other task at least ``MIN_SCORE``, so Label Studio serves reviews before anything else; an open
review task whose review was resolved meanwhile is deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ml_backend.labelstudio import DEFAULT_VIEW_ORDERING, DEFAULT_VIEW_TITLE, QUEUE_FIELD
from ml_backend.pairs import image_ids_of, pair_id, task_data
from ml_backend.state import ProjectState

if TYPE_CHECKING:
    from strategies.constraints import ConstraintGraph

log = logging.getLogger(__name__)

REVIEW_SCORE = 0.0  # the queue is served lowest first: reviews go to the top
MIN_SCORE = 0.001  # every other task is queued at least this, so no new pair ties with a review
VIEW_TITLE, VIEW_ORDERING = DEFAULT_VIEW_TITLE, DEFAULT_VIEW_ORDERING  # the view sorts by QUEUE_FIELD


class LabelStudioLike(Protocol):
    """The part of LabelStudioClient that a push uses."""

    def task_ids_by_pair(self, pid: int) -> dict[str, int]: ...
    def create_tasks(self, pid: int, tasks: list[dict[str, Any]]) -> list[int]: ...
    def iter_tasks(self, pid: int) -> Iterable[dict[str, Any]]: ...
    def import_predictions(self, pid: int, predictions: list[dict[str, Any]]) -> Any: ...
    def patch_project(self, pid: int, **fields: Any) -> Any: ...
    def ensure_view(self, pid: int, title: str = ..., ordering: list[str] = ...) -> int: ...
    def delete_tasks(self, pid: int, task_ids: list[int]) -> Any: ...
    def update_task_data(self, task_id: int, data: Mapping[str, Any]) -> Any: ...


@dataclass
class PushReport:
    """What one push changed in Label Studio."""

    model_version: str
    created: int = 0
    existing: int = 0
    implied_proposals: int = 0
    unservable: int = 0
    predictions: int = 0
    rescored: int = 0
    requeued: int = 0
    retired: int = 0
    view_id: int | None = None
    model_version_set: bool = False
    retired_task_ids: list[int] = field(default_factory=list)
    reviews_created: int = 0
    reviews_existing: int = 0
    reviews_retired: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_of(priority: float) -> float:
    """Label Studio serves the LOWEST score first, so the most informative pair gets the lowest score;
    never below MIN_SCORE, which only reviews go under."""
    return float(min(1.0, max(MIN_SCORE, 1.0 - float(priority))))


def queue_key(score: float) -> str:
    """A task's place in the queue (``data.queue``): fixed-width text, so sorting as text or as a number
    agrees."""
    return f"{min(1.0, max(0.0, float(score))):.6f}"


def p_answer(p_same: float) -> float:
    """The calibrated probability of the proposed choice ("same" when P(same) >= 0.5)."""
    p = float(p_same)
    return max(p, 1.0 - p)


def calibrated(calibrator: Any | None) -> bool:
    """True once the calibrator learned from answers: only then is a choice pre-filled."""
    return calibrator is not None and not bool(getattr(calibrator, "is_prior", True))


def prediction(p_same: float, *, prefill: bool, from_name: str, to_name: str,
               model_version: str) -> dict[str, Any]:
    """What Label Studio shows for a pair: the proposed choice (when ``prefill``) and P(answer)."""
    return {"result": prediction_result(p_same, from_name, to_name) if prefill else [],
            "score": round(p_answer(p_same), 6), "model_version": model_version}


def review_key(pid: str, answers_on_pair: int) -> str:
    """The key of the review task that asks pair ``pid`` again after ``answers_on_pair`` answers."""
    return f"{pid}:{int(answers_on_pair)}"


def uncertainty_priority(p_same: float) -> float:
    """Priority of a pair the sampler did not rank this cycle: highest when P(same) is closest to 0.5."""
    return float(1.0 - abs(2.0 * float(p_same) - 1.0))


def prediction_result(p_same: float, from_name: str, to_name: str) -> list[dict[str, Any]]:
    """The proposed choice as a Label Studio result list."""
    choice = "same" if p_same >= 0.5 else "different"
    return [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [choice]}}]


def p_same_of(embeddings: np.ndarray, rows_a: Sequence[int], rows_b: Sequence[int],
              calibrator: Any | None) -> np.ndarray:
    """Calibrated P(same) of row pairs; without a calibrator, cosine mapped linearly to [0, 1]."""
    if len(rows_a) == 0:
        return np.zeros(0, dtype=np.float64)
    sims = np.einsum("ij,ij->i", embeddings[np.asarray(rows_a)],
                     embeddings[np.asarray(rows_b)]).astype(np.float64)
    if calibrator is not None:
        return np.clip(np.asarray(calibrator.predict(sims), dtype=np.float64), 0.0, 1.0)
    return np.clip((sims + 1.0) / 2.0, 0.0, 1.0)


def version_id(version: Any) -> str:
    """A registry version object or string -> the string Label Studio stores as model_version."""
    if isinstance(version, str):
        return version
    for attr in ("version_id", "id", "name", "version"):
        value = getattr(version, attr, None)
        if isinstance(value, str) and value:
            return value
    raise ValueError(f"cannot read a version id from {version!r}")


def _is_open(task: Mapping[str, Any]) -> bool:
    return not task.get("total_annotations") and not task.get("cancelled_annotations")


def _push_reviews(
    client: LabelStudioLike,
    state: ProjectState,
    project_id: int,
    reviews: Sequence[Mapping[str, Any]],
    url_for: Callable[[str], str | None],
    caption_for: Callable[[str], str | None],
    report: PushReport,
) -> set[str]:
    """Create the review tasks that do not exist yet; returns the review keys wanted now."""
    if not reviews:
        return set()
    existing = {str((task.get("data") or {}).get("review_key")) for task in client.iter_tasks(project_id)
                if (task.get("data") or {}).get("review_key")}
    wanted: set[str] = set()
    new_tasks: list[dict[str, Any]] = []
    for review in reviews:
        id_a, id_b = str(review["image_a"]), str(review["image_b"])
        pid = pair_id(id_a, id_b)
        key = review_key(pid, len(state.annotations.on_pair(pid)))
        wanted.add(key)
        if key in existing:
            report.reviews_existing += 1
            continue
        url_a, url_b = url_for(id_a), url_for(id_b)
        if not url_a or not url_b:
            report.unservable += 1
            continue
        data = task_data(id_a, id_b, url_a, url_b, caption_a=caption_for(id_a) or "",
                         caption_b=caption_for(id_b) or "", strategy="review", pool=str(review["kind"]),
                         reason=str(review["reason"]))
        new_tasks.append({"data": {**data, "review": str(review["kind"]), "review_key": key,
                                   QUEUE_FIELD: queue_key(REVIEW_SCORE)}})
    if new_tasks:
        task_ids = client.create_tasks(project_id, new_tasks)
        if len(task_ids) != len(new_tasks):
            raise RuntimeError(f"Label Studio created {len(task_ids)} tasks for {len(new_tasks)} requested")
        report.reviews_created = len(task_ids)
        state.incr("reviews_pushed", len(task_ids))
    return wanted


def push_cycle(
    client: LabelStudioLike,
    state: ProjectState,
    *,
    project_id: int,
    version: Any,
    proposals: Sequence[Any],
    embeddings: np.ndarray,
    image_ids: Sequence[str],
    url_for: Callable[[str], str | None],
    caption_for: Callable[[str], str | None] | None = None,
    calibrator: Any | None = None,
    graph: ConstraintGraph | None = None,
    from_name: str = "answer",
    to_name: str = "pair",
    reviews: Sequence[Mapping[str, Any]] = (),
) -> PushReport:
    """Push proposals of one cycle (rows into `image_ids`) and re-score/retire open tasks.

    `graph` holds the constraints as they are now (read after the cycle, so answers that arrived
    while it trained count): proposals it already answers are not pushed, and open tasks it answers
    are retired. `url_for` returns None for an image Label Studio cannot show (it is not pushed).
    `reviews`: the open reviews (ml_backend.state.reviews records), pushed first and scored first.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] != len(image_ids):
        raise ValueError(f"embeddings must have shape (len(image_ids), d), got {embeddings.shape} "
                         f"for {len(image_ids)} ids")
    model_version = version_id(version)
    report = PushReport(model_version=model_version)
    row_of = {image_id: row for row, image_id in enumerate(image_ids)}
    caption_for = caption_for or (lambda _id: "")

    # 1. new tasks, keyed by pair id (a retried push finds its own tasks and creates nothing)
    existing = client.task_ids_by_pair(project_id)
    new_tasks: list[dict[str, Any]] = []
    new_meta: list[dict[str, Any]] = []
    proposal_meta: dict[str, dict[str, Any]] = {}
    for proposal in proposals:
        i, j = int(proposal.i), int(proposal.j)
        if graph is not None and graph.relation(i, j).name != "UNKNOWN":
            report.implied_proposals += 1
            continue
        id_a, id_b = image_ids[i], image_ids[j]
        pid = pair_id(id_a, id_b)
        meta = {"p_same": float(proposal.p_same), "priority": float(proposal.priority),
                "strategy": str(proposal.strategy), "pool": str(proposal.pool),
                "reason": str(proposal.reason)}
        proposal_meta[pid] = meta
        if pid in existing:
            report.existing += 1
            state.pairs.register(pid, id_a, id_b, task_id=int(existing[pid]), **meta)
            continue
        url_a, url_b = url_for(id_a), url_for(id_b)
        if not url_a or not url_b:
            report.unservable += 1
            continue
        new_tasks.append({"data": {**task_data(
            id_a, id_b, url_a, url_b, caption_a=caption_for(id_a) or "", caption_b=caption_for(id_b) or "",
            strategy=meta["strategy"], pool=meta["pool"], reason=meta["reason"]),
            QUEUE_FIELD: queue_key(score_of(meta["priority"]))}})
        new_meta.append({"pair_id": pid, "id_a": id_a, "id_b": id_b, **meta})
    if new_tasks:
        task_ids = client.create_tasks(project_id, new_tasks)
        if len(task_ids) != len(new_tasks):
            raise RuntimeError(f"Label Studio created {len(task_ids)} tasks for {len(new_tasks)} requested")
        for task_id, meta in zip(task_ids, new_meta, strict=True):
            extra = {k: v for k, v in meta.items() if k not in ("pair_id", "id_a", "id_b")}
            state.pairs.register(meta["pair_id"], meta["id_a"], meta["id_b"], task_id=int(task_id),
                                model_version=model_version, status="open", **extra)
        report.created = len(task_ids)

    # 1b. reviews: a new task per (pair, answers so far), created once
    wanted = _push_reviews(client, state, project_id, reviews, url_for, caption_for, report)

    # 2. every open task: retire it if implied, else (re-)score it under the new version
    open_tasks: list[tuple[int, str, int, int, Mapping[str, Any]]] = []
    retire: list[tuple[int, str]] = []
    review_tasks: list[int] = []
    stale_reviews: list[int] = []
    for task in client.iter_tasks(project_id):
        data = task.get("data") or {}
        try:  # user-imported pairs carry only URLs: those are their image ids (see pairs.image_ids_of)
            id_a, id_b = image_ids_of(data)
        except ValueError:
            continue
        if not _is_open(task) or id_a not in row_of or id_b not in row_of:
            continue
        pid = pair_id(id_a, id_b)
        i, j = row_of[id_a], row_of[id_b]
        if data.get("review_key"):  # answered before on purpose: never "implied", only resolved or not
            (review_tasks if data["review_key"] in wanted else stale_reviews).append(int(task["id"]))
            if data["review_key"] in wanted:
                open_tasks.append((int(task["id"]), pid, i, j, data))
            continue
        if graph is not None and graph.relation(i, j).name != "UNKNOWN":
            retire.append((int(task["id"]), pid))
            continue
        open_tasks.append((int(task["id"]), pid, i, j, data))

    already = state.pairs.pushed_tasks(model_version)
    todo = [t for t in open_tasks if t[0] not in already]
    p_same = p_same_of(embeddings, [t[2] for t in todo], [t[3] for t in todo], calibrator)
    predictions = []
    reviewing = set(review_tasks)
    prefill = calibrated(calibrator)
    for (task_id, pid, _i, _j, data), p in zip(todo, p_same, strict=True):
        if task_id in reviewing:
            p_value, key = float(p), queue_key(REVIEW_SCORE)
        else:
            meta = proposal_meta.get(pid)
            if meta is not None:
                p_value, priority = meta["p_same"], meta["priority"]
            else:
                p_value, priority = float(p), uncertainty_priority(float(p))
                report.rescored += 1
            key = queue_key(score_of(priority))
            state.pairs.register(pid, *sorted((image_ids[_i], image_ids[_j])), task_id=task_id,
                                model_version=model_version, p_same=p_value, priority=priority)
        predictions.append({"task": task_id, **prediction(p_value, prefill=prefill, from_name=from_name,
                                                           to_name=to_name, model_version=model_version)})
        if data.get(QUEUE_FIELD) != key:
            client.update_task_data(task_id, {**data, QUEUE_FIELD: key})
            report.requeued += 1
    if predictions:
        client.import_predictions(project_id, predictions)
        state.pairs.mark_pushed(model_version, [p["task"] for p in predictions])
    report.predictions = len(predictions)

    # 3. the project shows this version's predictions, through a view ordered by the queue field.
    # Label Studio rejects a model_version that no prediction carries (and no connected backend is
    # titled): with no open task to score, the project keeps its version; nothing is left to order.
    if predictions or already:
        client.patch_project(project_id, model_version=model_version)
        report.model_version_set = True
    else:
        log.info("project %s: no open task to score under %s; project model_version unchanged",
                 state.project, model_version)
    # Ensured on every push (one GET when it exists), never trusted from meta: a user may have
    # deleted the view, and a cached id would then never bring it back.
    view_id = client.ensure_view(project_id, title=VIEW_TITLE, ordering=list(VIEW_ORDERING))
    if state.meta().get("view_id") != view_id:
        state.set_meta(view_id=view_id)
    report.view_id = view_id

    # 4. retire tasks whose answer is implied: no annotator is served them again
    if retire:
        client.delete_tasks(project_id, [task_id for task_id, _pid in retire])
        for _task_id, pid in retire:
            state.pairs.set_status(pid, "retired")
        state.incr("pairs_saved", len(retire))
    report.retired = len(retire)
    report.retired_task_ids = [task_id for task_id, _pid in retire]
    if stale_reviews:  # resolved since they were pushed: nobody needs to look again
        client.delete_tasks(project_id, stale_reviews)
    report.reviews_retired = len(stale_reviews)
    state.cycles.add_version(model_version)
    state.incr("pairs_pushed", report.created)
    log.info("project %s: pushed %s", state.project, report.to_dict())
    return report
