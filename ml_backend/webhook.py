"""Label Studio webhook events -> recorded constraints and queued work, in milliseconds.

Why so little happens here: Label Studio posts each event synchronously inside the annotator's own
request, with a 1 s timeout and no retry. So the handler validates everything first (a bad event
changes nothing), writes a few Redis keys, maybe enqueues, and returns. It never trains inline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_backend.errors import InputError
from ml_backend.pairs import image_ids_of, pair_id
from ml_backend.state import ProjectState, incr_global, project_key
from ml_backend.state.annotations import is_user_id
from ml_backend.state.base import preview

if TYPE_CHECKING:
    from redis import Redis

    from ml_backend.queue import CycleQueue

log = logging.getLogger(__name__)

CHOICES = ("same", "different", "unsure")
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
# Events Label Studio sends that need no action here: acknowledged and counted, like unknown ones.
IGNORED_EVENTS = (
    "PROJECT_CREATED",
    "PROJECT_UPDATED",
    "PROJECT_DELETED",
    "ANNOTATIONS_CREATED",
    "LABEL_LINK_CREATED",
    "LABEL_LINK_UPDATED",
    "LABEL_LINK_DELETED",
    "REVIEW_CREATED",
    "REVIEW_UPDATED",
    "REVIEWS_DELETED",
)


def parse_answer(result: Any, from_name: str | None = None, *, was_cancelled: bool = False) -> str:
    """An annotation's `result` list -> "same", "different", "unsure" or "skip".

    Reads `result[].value.choices` of the choices control named `from_name` (any choices control
    when None). A cancelled (skipped) annotation, or one with no choice at all, is "skip": no
    constraint, but the pair is not asked again. Shared with `reid-al sync` so both read answers alike.
    """
    if was_cancelled:
        return "skip"
    if not isinstance(result, list):
        raise InputError("annotation.result", f"must be a list, got {type(result).__name__}")
    found: list[str] = []
    for index, item in enumerate(result):
        if not isinstance(item, Mapping):
            raise InputError(f"annotation.result[{index}]", "must be an object")
        if item.get("type", "choices") != "choices":
            continue
        if from_name is not None and item.get("from_name") != from_name:
            continue
        value = item.get("value")
        if not isinstance(value, Mapping) or not isinstance(value.get("choices"), list):
            raise InputError(f"annotation.result[{index}].value.choices", "must be a list of choices")
        for position, choice_ in enumerate(value["choices"]):
            # Checked before the set below: an unhashable choice (a list) would be a 500, not a 422.
            if not isinstance(choice_, str):
                raise InputError(
                    f"annotation.result[{index}].value.choices[{position}]",
                    f"must be a string, got {type(choice_).__name__}",
                )
        found.extend(value["choices"])
    if not found:
        return "skip"
    answers = {c.strip().lower() for c in found}
    if len(answers) != 1:
        raise InputError("annotation.result", f"expected exactly one choice, got {sorted(map(str, answers))}")
    answer = answers.pop()
    if answer not in CHOICES:
        raise InputError("annotation.result", f"choice must be one of {', '.join(CHOICES)}, got {answer!r}")
    return str(answer)


_PROJECT_TEXT_MAX = 64  # "<id>.<timestamp>" as /setup and /predict send it is about 30 characters


def project_id_of(value: Any, field: str = "project") -> str:
    """Label Studio sends `project` as a 50-key object, an int, or "<id>.<timestamp>" (/setup); the id
    is ASCII digits (``project_key``)."""
    if isinstance(value, Mapping):
        value = value.get("id")
        field = f"{field}.id"
    if isinstance(value, bool) or value is None:
        raise InputError(field, "missing project id", status=400)
    if isinstance(value, str):
        if len(value) > _PROJECT_TEXT_MAX:
            raise InputError(field, f"must be a project id, got {preview(value)}")
        value = value.strip().split(".", 1)[0]
    return project_key(value, field)


def known_project(redis: Redis, project: str, model_dir: Path | None) -> ProjectState:
    """``ProjectState`` of a project with state in Redis or files under ``model_dir``; else 404."""
    state = ProjectState(redis, project)
    if state.exists() or (model_dir is not None and (model_dir / state.project).is_dir()):
        return state
    raise InputError(
        "project",
        f"unknown project {state.project}: no answer, task or pool recorded for it "
        "(run `reid-al ingest <images> --project <id>` first)",
        status=404,
    )


def _require(
    payload: Mapping[str, Any], key: str, kind: type | tuple[type, ...], field: str | None = None
) -> Any:
    field = field or key
    if key not in payload:
        raise InputError(field, "missing", status=400)
    value = payload[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(field, f"must be {names}, got {type(value).__name__}")
    return value


def _ids(payload: Mapping[str, Any], key: str) -> list[int]:
    """The ``id`` of every object listed under ``key`` (ANNOTATIONS_DELETED, TASKS_DELETED)."""
    ids = []
    for index, item in enumerate(_require(payload, key, list)):
        if not isinstance(item, Mapping):
            raise InputError(f"{key}[{index}]", "must be an object with an id")
        ids.append(_require(item, "id", int, f"{key}[{index}].id"))
    return ids


def _constraint_of(record: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(answer, pair) when a record is a must/cannot-link; None for skip/unsure or no record.

    Why: only a change of this value changes what a cycle trains on, so only it counts towards
    REID_AL_RETRAIN_EVERY (an UPDATED event that moves just updated_at does not).
    """
    if record is None or record.get("answer") not in ("same", "different"):
        return None
    return str(record["answer"]), str(record["pair_id"])


@dataclass(frozen=True)
class _AnnotationEvent:
    annotation_id: int
    task_id: int
    image_a: str
    image_b: str
    answer: str
    completed_by: int | str | None
    updated_at: Any


class WebhookHandler:
    """Dispatch one parsed JSON event. `handle` returns the JSON answer or raises InputError."""

    def __init__(
        self,
        redis: Redis,
        queue: CycleQueue | None,
        *,
        retrain_every: int,
        from_name: str | None = None,
        model_dir: Path | None = None,
    ) -> None:
        if retrain_every < 1:
            raise ValueError(f"retrain_every must be >= 1, got {retrain_every}")
        self.redis = redis
        self.queue = queue
        self.retrain_every = retrain_every
        self.from_name = from_name
        self.model_dir = model_dir

    def known_state(self, project: str) -> ProjectState:
        """The state of a project that has something to train on, else a 404 that changes nothing.

        Why: a cycle request for a project with no state and no pool under MODEL_DIR can only fail, and
        accepting it would register the id for good (any id a client makes up)."""
        return known_project(self.redis, project, self.model_dir)

    def handle(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, Mapping):
            raise InputError("body", f"must be a JSON object, got {type(payload).__name__}", status=400)
        action = _require(payload, "action", str)
        if action in ANNOTATION_EVENTS:
            return self._annotation(action, payload)
        if action == "ANNOTATIONS_DELETED":
            return self._deleted(payload)
        if action == "START_TRAINING":
            project = project_id_of(payload.get("project"))
            state = self.known_state(project)
            state.incr("events:START_TRAINING")
            return {
                "status": "ok",
                "action": action,
                "project": project,
                **self._request_cycle(project, action),
            }
        if action == "TASKS_CREATED":
            return self._tasks_created(payload)
        if action == "TASKS_DELETED":
            return self._tasks_deleted(payload)
        return self._ignored(action, payload)

    # --- events --------------------------------------------------------------------------------------
    def _ignored(self, action: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        known = action in IGNORED_EVENTS
        try:
            project: str | None = project_id_of(payload.get("project"))
        except InputError:
            project = None
        counter = f"events:{action}" if known else "events:unknown"
        if project is not None:
            ProjectState(self.redis, project).count(counter)
        else:
            incr_global(self.redis, counter)
        if known:
            log.debug("webhook %s for project %s: nothing to do", action, project)
        else:
            log.warning("webhook: unknown event %r (project %s) acknowledged and ignored", action, project)
        return {"status": "ignored", "action": action, "project": project, "known": known}

    def _parse_annotation(self, payload: Mapping[str, Any], from_name: str | None) -> _AnnotationEvent:
        annotation = _require(payload, "annotation", Mapping)
        task = _require(payload, "task", Mapping)
        annotation_id = _require(annotation, "id", int, "annotation.id")
        task_id = _require(task, "id", int, "task.id")
        data = _require(task, "data", Mapping, "task.data")
        try:
            image_a, image_b = image_ids_of(data)
        except ValueError as exc:
            raise InputError("task.data", str(exc)) from None
        was_cancelled = annotation.get("was_cancelled", False)
        if not isinstance(was_cancelled, bool):
            raise InputError(
                "annotation.was_cancelled", f"must be a boolean, got {type(was_cancelled).__name__}"
            )
        answer = parse_answer(annotation.get("result", []), from_name, was_cancelled=was_cancelled)
        completed_by = annotation.get("completed_by")
        if isinstance(completed_by, Mapping):
            completed_by = completed_by.get("id")
        if completed_by is not None and not is_user_id(completed_by):
            raise InputError("annotation.completed_by", f"must be a user id, got {completed_by!r}")
        return _AnnotationEvent(
            annotation_id,
            task_id,
            image_a,
            image_b,
            answer,
            completed_by,
            annotation.get("updated_at") or annotation.get("created_at"),
        )

    def _annotation(self, action: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        project = project_id_of(payload.get("project"))
        state = ProjectState(self.redis, project)
        from_name = self.from_name or state.meta().get("from_name")
        event = self._parse_annotation(payload, from_name)
        try:
            recorded = state.answer_events.record(
                action,
                event.annotation_id,
                task_id=event.task_id,
                image_a=event.image_a,
                image_b=event.image_b,
                answer=event.answer,
                completed_by=event.completed_by,
                updated_at=event.updated_at,
            )
        except InputError as exc:
            raise exc.at(f"annotation.{exc.field}") from None
        body: dict[str, Any] = {
            "status": "ok",
            "action": action,
            "project": project,
            "annotation": event.annotation_id,
            "answer": event.answer,
            "outcome": recorded.outcome,
        }
        if recorded.conflict:
            # Recorded, never overwritten: both answers stay; NP3's policy decides, /status lists it.
            body["conflict"] = True
            pid = pair_id(event.image_a, event.image_b)
            log.warning(
                "project %s: annotators disagree on pair %s: %s", project, pid, state.annotations.on_pair(pid)
            )
        if recorded.pending is not None and recorded.pending >= self.retrain_every:
            body.update(self._request_cycle(project, f"{recorded.pending} new constraints"))
        return body

    def _deleted(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        project = project_id_of(payload.get("project"))
        ids = _ids(payload, "annotations")
        state = ProjectState(self.redis, project)
        removed: list[int] = []
        constraints_removed = 0
        for annotation_id in ids:
            record = state.annotations.remove(annotation_id)
            if record is not None:
                removed.append(annotation_id)
                constraints_removed += _constraint_of(record) is not None
        state.incr("events:ANNOTATIONS_DELETED")
        state.incr("annotations_deleted", len(removed))
        body: dict[str, Any] = {
            "status": "ok",
            "action": "ANNOTATIONS_DELETED",
            "project": project,
            "removed": removed,
            "unknown": [i for i in ids if i not in removed],
        }
        if constraints_removed:
            # Deleting a skip/unsure answer changes no constraint, so it does not count to a retrain.
            body.update(self._count_changes(state, constraints_removed, "changed constraints"))
        return body

    def _tasks_created(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        project = project_id_of(payload.get("project"))
        tasks = _require(payload, "tasks", list)
        parsed: list[tuple[int, str, str, Mapping[str, Any]]] = []
        unusable = 0
        for index, task in enumerate(tasks):
            if not isinstance(task, Mapping):
                raise InputError(f"tasks[{index}]", "must be an object")
            task_id = _require(task, "id", int, f"tasks[{index}].id")
            data = task.get("data")
            try:
                image_a, image_b = image_ids_of(data if isinstance(data, Mapping) else {})
            except ValueError:
                unusable += 1  # not a pair task: Label Studio already stored it, nothing for us to key
                continue
            parsed.append((task_id, image_a, image_b, data if isinstance(data, Mapping) else {}))
        state = ProjectState(self.redis, project)
        state.incr("events:TASKS_CREATED")
        if unusable:
            state.incr("tasks_unusable", unusable)
            log.warning("project %s: %d created tasks carry no image pair and are ignored", project, unusable)
        state.pairs.register_tasks([(task_id, image_a, image_b) for task_id, image_a, image_b, _ in parsed])
        urls: dict[str, str] = {}
        for _task_id, image_a, image_b, data in parsed:
            urls.setdefault(image_a, str(data.get("image_a", image_a)))
            urls.setdefault(image_b, str(data.get("image_b", image_b)))
        missing = state.images.missing(urls)
        body: dict[str, Any] = {
            "status": "ok",
            "action": "TASKS_CREATED",
            "project": project,
            "tasks": len(parsed),
            "unusable": unusable,
            "missing_embeddings": len(missing),
        }
        claimed = state.images.claim(missing) if self.queue is not None else []
        if claimed and self.queue is not None:
            items = [{"id": i, "url": urls[i]} for i in claimed]
            body["embed_job"] = self.queue.request_embedding(project, items)
        return body

    def _tasks_deleted(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        project = project_id_of(payload.get("project"))
        task_ids = _ids(payload, "tasks")
        state = ProjectState(self.redis, project)
        state.incr("events:TASKS_DELETED")
        closed = 0
        for task_id in task_ids:
            pid = state.pairs.for_task(task_id)
            if pid is not None and (state.pairs.get(pid) or {}).get("status") == "open":
                closed += int(state.pairs.set_status(pid, "deleted"))
        return {"status": "ok", "action": "TASKS_DELETED", "project": project, "closed_pairs": closed}

    def _count_changes(self, state: ProjectState, n: int, what: str) -> dict[str, Any]:
        """Count ``n`` constraint changes (state.pending) and request a cycle once REID_AL_RETRAIN_EVERY
        of them are waiting."""
        pending = state.pending.add(n)
        if pending < self.retrain_every:
            return {}
        return self._request_cycle(state.project, f"{pending} {what}")

    def _request_cycle(self, project: str, reason: str) -> dict[str, Any]:
        if self.queue is None:
            return {"cycle": "no queue"}
        request = self.queue.request_cycle(project, reason=reason)
        return {"cycle": request.outcome, "job_id": request.job_id}
