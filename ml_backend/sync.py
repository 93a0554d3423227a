"""`reid-al sync`: rebuild a project's annotations (hence its constraints) from Label Studio.

Why it exists: Label Studio is the source of truth for annotations, and its webhooks are sent once,
with a 1 s timeout and no retry. A backend that was down, restarted with an empty Redis, or simply
lost an event recovers with one sync. Answers are read with the webhook's own ``parse_answer``, so a
synced constraint is exactly what the webhook would have recorded; the replacement is atomic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ml_backend.pairs import image_ids_of, pair_id
from ml_backend.state import ANSWERS, ProjectState
from ml_backend.webhook import WebhookError, parse_answer

if TYPE_CHECKING:
    from redis import Redis

    from ml_backend.labelstudio import LabelStudioClient
    from ml_backend.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    """What a sync found in Label Studio and what it changed in the backend's state."""

    project: str
    from_name: str | None
    tasks: int = 0
    pair_tasks: int = 0
    annotations: int = 0
    answers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ANSWERS, 0))
    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0
    not_pair: int = 0
    invalid: list[dict[str, Any]] = field(default_factory=list)
    conflicts: int = 0
    pairs_registered: int = 0
    pairs_closed: int = 0
    cycle: dict[str, Any] | None = None

    @property
    def n_changes(self) -> int:
        return self.added + self.removed + self.changed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["n_changes"] = self.n_changes
        return out


def choices_control(project: Mapping[str, Any]) -> str | None:
    """Name of the project's Choices control (from Label Studio's parsed config).

    One Choices control: its name. Several: "answer" if present (our label_config), else None, in
    which case parse_answer reads any choices result, exactly as the webhook does without a name.
    """
    parsed = project.get("parsed_label_config")
    if not isinstance(parsed, Mapping):
        return None
    names = [
        name for name, spec in parsed.items() if isinstance(spec, Mapping) and spec.get("type") == "Choices"
    ]
    if len(names) == 1:
        return str(names[0])
    return "answer" if "answer" in names else None


def _completed_by(annotation: Mapping[str, Any]) -> int | str | None:
    value = annotation.get("completed_by")
    if isinstance(value, Mapping):
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    return value


def sync(
    project: str | int,
    settings: Settings,
    client: LabelStudioClient | None = None,
    *,
    redis: Redis | None = None,
    request_cycle: bool = False,
) -> SyncReport:
    """Replace the project's recorded annotations by Label Studio's; returns what changed.

    Annotations that cannot be read (a result with two choices, an unknown choice) are listed in
    ``report.invalid`` and not recorded, the same verdict the webhook gives them; annotations on tasks
    that are not image pairs are counted in ``not_pair``. Nothing is written unless every record
    validates (``ProjectState.replace_all_annotations`` is all-or-nothing). With ``request_cycle``
    and at least one change, a retraining cycle is requested through the queue.
    """
    from ml_backend.labelstudio import LabelStudioClient, as_project_id

    pid = as_project_id(project)
    if client is None:
        if not settings.label_studio_api_key:
            raise ValueError(
                "LABEL_STUDIO_API_KEY is not set: sync needs it to read annotations from Label Studio"
            )
        client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
    if redis is None:
        from ml_backend.app import redis_from_settings

        redis = redis_from_settings(settings)
    state = ProjectState(redis, str(pid))
    ls_project = client.get_project(pid)
    from_name = state.meta().get("from_name") or choices_control(ls_project)
    report = SyncReport(project=state.project, from_name=from_name)

    records: dict[str, dict[str, Any]] = {}
    pair_tasks: dict[int, tuple[str, str]] = {}
    for task in client.iter_tasks(pid, fields="all"):
        report.tasks += 1
        task_id = int(task["id"])
        try:
            image_a, image_b = image_ids_of(task.get("data") or {})
        except ValueError:
            image_a = image_b = ""
        else:
            pair_tasks[task_id] = (image_a, image_b)
        for annotation in task.get("annotations") or []:
            report.annotations += 1
            if not image_a:
                report.not_pair += 1
                continue
            annotation_id = annotation.get("id")
            try:
                was_cancelled = bool(annotation.get("was_cancelled", False))
                answer = parse_answer(annotation.get("result") or [], from_name, was_cancelled=was_cancelled)
            except WebhookError as exc:
                report.invalid.append({"annotation_id": annotation_id, "task_id": task_id, "error": str(exc)})
                continue
            records[str(annotation_id)] = {
                "annotation_id": annotation_id,
                "task_id": task_id,
                "image_a": image_a,
                "image_b": image_b,
                "answer": answer,
                "completed_by": _completed_by(annotation),
                "updated_at": annotation.get("updated_at") or annotation.get("created_at"),
            }
    report.pair_tasks = len(pair_tasks)

    before = {str(r["annotation_id"]): (r["answer"], r["pair_id"]) for r in state.annotations()}
    state.replace_all_annotations(records.values())
    after = {str(r["annotation_id"]): (r["answer"], r["pair_id"]) for r in state.annotations()}
    for key, value in after.items():
        if key not in before:
            report.added += 1
        elif before[key] != value:
            report.changed += 1
        else:
            report.unchanged += 1
    report.removed = sum(1 for key in before if key not in after)
    for record in after.values():
        report.answers[record[0]] += 1

    # The pair registry follows Label Studio's tasks: every pair task is known (so it is never proposed
    # again), and an open pair whose task is gone is closed.
    live_pairs: set[str] = set()
    for task_id, (image_a, image_b) in pair_tasks.items():
        pid_ = pair_id(image_a, image_b)
        live_pairs.add(pid_)
        if state.pair_for_task(task_id) != pid_:
            report.pairs_registered += int(state.register_pair(pid_, image_a, image_b, task_id=task_id))
    for pid_, record in state.pairs().items():
        if record.get("status") == "open" and pid_ not in live_pairs and record.get("task_id") is not None:
            report.pairs_closed += int(state.set_pair_status(pid_, "deleted"))

    report.conflicts = len(state.conflicts())
    if report.n_changes:
        state.add_pending_constraints(report.n_changes)
    state.incr("syncs")
    if request_cycle and report.n_changes:
        from ml_backend.queue import CycleQueue

        queue = CycleQueue(redis, queue_name=settings.queue_name, job_timeout=settings.job_timeout)
        request = queue.request_cycle(state.project, reason=f"sync: {report.n_changes} changed annotations")
        report.cycle = {"outcome": request.outcome, "job_id": request.job_id}
    if report.invalid:
        log.warning(
            "project %s: %d annotations could not be read: %s",
            state.project,
            len(report.invalid),
            report.invalid[:5],
        )
    log.info("project %s: sync %s", state.project, report.to_dict())
    return report
