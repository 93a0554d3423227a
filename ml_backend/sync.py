"""`reid-al sync`: rebuild a project's annotations (hence its constraints) from Label Studio.

Why it exists: Label Studio is the source of truth for annotations, and its webhooks are sent once,
with a 1 s timeout and no retry. A backend that was down, restarted with an empty Redis, or simply
lost an event recovers with one sync. Answers are read with the webhook's own ``parse_answer``, so a
synced constraint is exactly what the webhook would have recorded.

Why a diff and not a replacement: reading every task takes a while, and webhooks keep arriving
meanwhile. The snapshot is applied through ``annotations.record`` (which ignores a stale ``updated_at``
and a deleted id, atomically) and ``annotations.remove`` (which keeps the tombstone), and only what was
stored before the sync started and is untouched since may be removed; so an answer or a deletion that
a webhook recorded during the listing survives the sync.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ml_backend.errors import InputError
from ml_backend.pairs import image_ids_of, pair_id
from ml_backend.state import ANSWERS, ProjectState, parse_timestamp
from ml_backend.webhook import parse_answer

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
    kind: str = "full"  # "incremental": only the tasks Label Studio changed after ``since``
    since: float | None = None
    newest_update: float | None = None  # the newest task updated_at listed (the next watermark)

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


def _stored(state: ProjectState) -> dict[str, dict[str, Any]]:
    """The stored annotations by id: the whole record, so any change (answer, updated_at) shows."""
    return {str(r["annotation_id"]): r for r in state.annotations.all()}


def sync(
    project: str | int,
    settings: Settings,
    client: LabelStudioClient | None = None,
    *,
    redis: Redis | None = None,
    request_cycle: bool = False,
    since: float | None = None,
) -> SyncReport:
    """Bring the project's recorded annotations in line with Label Studio's; returns what changed.

    With ``since`` (epoch seconds) only the tasks Label Studio updated after it are read (an
    incremental pass: creating, changing or deleting an annotation moves its task's ``updated_at``);
    removals are then limited to annotations of those tasks, and no open pair is closed (a task
    missing from a partial listing is not gone).

    Every annotation Label Studio lists is recorded (a newer answer already stored, or a deletion
    already recorded, wins). A stored annotation is removed only when it was stored before the sync
    started, Label Studio does not list it, and nothing changed it during the sync. Annotations that
    cannot be read (a result with two choices, an unknown choice) are listed in ``report.invalid`` and
    left as they are, the same verdict the webhook gives them; annotations on tasks that are not image
    pairs are counted in ``not_pair``. With ``request_cycle`` and at least one change, a retraining
    cycle is requested through the queue.
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
    report = SyncReport(project=state.project, from_name=from_name, since=since)
    if since is not None:
        report.kind = "incremental"
    # What was stored before the listing: only these may be removed, and only if still identical at the end.
    before = _stored(state)
    open_before = {pid_: r for pid_, r in state.pairs.all().items() if r.get("status") == "open"}

    records: dict[str, dict[str, Any]] = {}
    listed: set[str] = set()
    pair_tasks: dict[int, tuple[str, str]] = {}
    listed_tasks: set[int] = set()
    listing = (
        client.iter_tasks(pid, fields="all")
        if since is None
        else client.iter_tasks(pid, fields="all", updated_after=since)
    )
    for task in listing:
        report.tasks += 1
        task_id = int(task["id"])
        listed_tasks.add(task_id)
        report.newest_update = _newest(report.newest_update, task.get("updated_at"))
        try:
            image_a, image_b = image_ids_of(task.get("data") or {})
        except ValueError:
            image_a = image_b = ""
        else:
            pair_tasks[task_id] = (image_a, image_b)
        for annotation in task.get("annotations") or []:
            report.annotations += 1
            annotation_id = annotation.get("id")
            if annotation_id is not None:
                listed.add(str(annotation_id))
            if not image_a:
                report.not_pair += 1
                continue
            updated_at = annotation.get("updated_at") or annotation.get("created_at")
            try:
                was_cancelled = bool(annotation.get("was_cancelled", False))
                answer = parse_answer(annotation.get("result") or [], from_name, was_cancelled=was_cancelled)
                parse_timestamp(updated_at)
            except InputError as exc:
                report.invalid.append({"annotation_id": annotation_id, "task_id": task_id, "error": str(exc)})
                continue
            records[str(annotation_id)] = {
                "annotation_id": annotation_id,
                "task_id": task_id,
                "image_a": image_a,
                "image_b": image_b,
                "answer": answer,
                "completed_by": _completed_by(annotation),
                "updated_at": updated_at,
            }
    report.pair_tasks = len(pair_tasks)
    if since is not None:  # a partial listing speaks only for the tasks it listed
        before = {k: r for k, r in before.items() if _task_of(r) in listed_tasks}
        open_before = {}
    _apply(state, report, records, listed, before)

    # The pair registry follows Label Studio's tasks: every pair task is known (so it is never proposed
    # again), and an open pair whose task is gone is closed.
    live_pairs: set[str] = set()
    for task_id, (image_a, image_b) in pair_tasks.items():
        pid_ = pair_id(image_a, image_b)
        live_pairs.add(pid_)
        if state.pairs.for_task(task_id) != pid_:
            report.pairs_registered += int(state.pairs.register(pid_, image_a, image_b, task_id=task_id))
    # Only a pair that was open before the listing and is unchanged since: one a TASKS_CREATED webhook
    # registered during the sync is live even though the listing did not see its task.
    for pid_, record in state.pairs.all().items():
        if (
            record.get("status") == "open"
            and pid_ not in live_pairs
            and record.get("task_id") is not None
            and open_before.get(pid_) == record
        ):
            report.pairs_closed += int(state.pairs.set_status(pid_, "deleted"))

    report.conflicts = len(state.annotations.conflicts())
    if report.n_changes:
        state.pending.add(report.n_changes)
    state.incr("syncs")
    if request_cycle and report.n_changes:
        from ml_backend.queue import CycleQueue

        queue = CycleQueue.for_settings(redis, settings)
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


def _apply(
    state: ProjectState,
    report: SyncReport,
    records: Mapping[str, Mapping[str, Any]],
    listed: set[str],
    before: Mapping[str, Mapping[str, Any]],
) -> None:
    """Apply Label Studio's snapshot as a diff that never overrides what changed since ``before``.

    Why per annotation: ``annotations.record`` ignores a stale ``updated_at`` and a deleted id atomically,
    so a webhook answer or deletion that arrived during the listing wins; removals are limited to ids
    that were stored at the start, that Label Studio did not list at all (an unreadable annotation is
    left alone, as the webhook leaves it), and whose stored record is still the one seen at the start.
    """
    for key, record in records.items():
        try:
            outcome, _ = state.annotations.record(
                record["annotation_id"],
                task_id=record["task_id"],
                image_a=record["image_a"],
                image_b=record["image_b"],
                answer=record["answer"],
                completed_by=record["completed_by"],
                updated_at=record["updated_at"],
            )
        except InputError as exc:
            report.invalid.append(
                {"annotation_id": record["annotation_id"], "task_id": record["task_id"], "error": str(exc)}
            )
            continue
        old = before.get(key)
        if outcome == "created":
            report.added += 1
        elif outcome == "updated" and (
            old is None or (old["answer"], old["pair_id"]) != (record["answer"], _pair_of(record))
        ):
            report.changed += 1
        else:
            report.unchanged += 1
    now = _stored(state)
    for key, old in before.items():
        if key in listed or key in records:
            continue
        if now.get(key) == old and state.annotations.remove(key) is not None:
            report.removed += 1
    for stored in state.annotations.all():
        report.answers[stored["answer"]] += 1


def _task_of(record: Mapping[str, Any]) -> int | None:
    try:
        return int(record["task_id"])
    except (KeyError, TypeError, ValueError):
        return None


def _newest(current: float | None, updated_at: Any) -> float | None:
    """The later of ``current`` and a task's ``updated_at`` (one Label Studio cannot date is skipped:
    the watermark then stays where it was and the next pass reads that task again)."""
    try:
        ts = parse_timestamp(updated_at)
    except InputError:
        return current
    if ts is None:
        return current
    return ts if current is None else max(current, ts)


def _pair_of(record: Mapping[str, Any]) -> str:
    return pair_id(str(record["image_a"]), str(record["image_b"]))


# -- periodic reconciliation (the worker's maintenance enqueues it; ml_backend.jobs.reconcile_job) --------

WATERMARK_OVERLAP_S = 60.0  # re-read this much before the watermark: a task saved in a transaction that
# committed after a later-dated one was listed is still seen (re-reading is harmless: records are idempotent)


def reconcile(
    project: str | int,
    settings: Settings,
    client: LabelStudioClient | None = None,
    *,
    redis: Redis,
    now: float | None = None,
) -> SyncReport:
    """One reconciliation pass: ``sync`` of only the tasks changed since the watermark, or of every task
    when none was done for REID_AL_RECONCILE_FULL_MINUTES (deletions that touch no task, such as a
    deleted task, show only there). Records when, what kind, what it recovered and any error, for
    ``reid-al status`` and /metrics; requests a cycle as the webhook would (REID_AL_RETRAIN_EVERY)."""
    state = ProjectState(redis, str(project))
    now = time.time() if now is None else now
    marks = state.reconcile_marks()
    watermark = marks.get("watermark")
    full_due = now - float(marks.get("last_full_at") or 0) >= settings.reconcile_full_minutes * 60
    since = None if full_due or watermark is None else float(watermark) - WATERMARK_OVERLAP_S
    try:
        report = sync(project, settings, client, redis=redis, since=since)
    except Exception as exc:
        state.incr("reconcile_failures")
        state.set_reconcile_marks(last_at=now, last_error=f"{type(exc).__name__}: {exc}"[:500])
        log.warning("project %s: reconciliation with Label Studio failed: %s", state.project, exc)
        raise
    if report.newest_update is not None:
        watermark = max(float(watermark or 0.0), report.newest_update)
    marks_now: dict[str, Any] = {
        "last_at": now,
        "last_kind": report.kind,
        "last_recovered": report.n_changes,
        "last_tasks": report.tasks,
        "last_invalid": len(report.invalid),
        "last_error": "",
        "watermark": watermark,
    }
    if report.kind == "full":
        marks_now["last_full_at"] = now
    state.set_reconcile_marks(**marks_now)
    state.incr(f"reconciles:{report.kind}")
    if report.n_changes:
        state.incr("reconcile_recovered", report.n_changes)
        log.warning(
            "project %s: reconciliation recovered %d answer change(s) that no webhook delivered "
            "(%d added, %d changed, %d removed)",
            state.project,
            report.n_changes,
            report.added,
            report.changed,
            report.removed,
        )
        if state.pending.count() >= settings.retrain_every:
            from ml_backend.queue import CycleQueue

            queue = CycleQueue.for_settings(redis, settings)
            request = queue.request_cycle(
                state.project, reason=f"reconciliation: {report.n_changes} changed annotations"
            )
            report.cycle = {"outcome": request.outcome, "job_id": request.job_id}
    return report
