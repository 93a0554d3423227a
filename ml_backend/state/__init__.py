"""The backend's small per-project state in Redis, one object per key family (rq style).

``ProjectState(redis, project)`` bundles them: ``annotations`` (answers by annotation id; a webhook
event's whole effect is recorded by ``answer_events`` in one round trip),
``pairs`` (the pair registry), ``images`` (embedded / requested images), ``pending`` (constraint
changes not trained on yet), ``cycles`` (status, history, versions), ``reviews`` (pairs under review),
plus the project's counters and the settings seen from Label Studio (``meta``). Everything here can be
rebuilt from Label Studio (`reid-al sync`), so losing it is an inconvenience.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ml_backend.state.annotations import ANSWERS, CONSTRAINT_ANSWERS, Annotations, parse_timestamp
from ml_backend.state.answer_event import AnswerEvents, AnswerOutcome
from ml_backend.state.base import (
    GLOBAL_COUNTERS_KEY,
    KEY_PREFIX,
    PROJECTS_KEY,
    UNREGISTERED_META_TTL,
    KeyFamily,
    global_counters,
    incr_global,
    is_project_key,
    json_hash,
    preview,
    project_key,
    register,
    text_hash,
    text_list,
)
from ml_backend.state.cycles import CycleRecords
from ml_backend.state.images import ImageRecords
from ml_backend.state.pairs import PairRegistry
from ml_backend.state.pending import PendingChanges, cycle_lock_key
from ml_backend.state.reviews import ReviewRecords

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from redis import Redis

    from strategies.constraints import ConstraintGraph

__all__ = [
    "ANSWERS",
    "CONSTRAINT_ANSWERS",
    "GLOBAL_COUNTERS_KEY",
    "KEY_PREFIX",
    "PROJECTS_KEY",
    "AnswerOutcome",
    "ProjectState",
    "cycle_lock_key",
    "global_counters",
    "incr_global",
    "list_projects",
    "parse_timestamp",
    "project_key",
]


class ProjectState(KeyFamily):
    """All Redis state of one Label Studio project (project key = the project id as ASCII digits)."""

    def __init__(self, redis: Redis, project: str | int) -> None:
        key = project_key(project)
        super().__init__(redis, key)
        self.annotations = Annotations(redis, key)
        self.answer_events = AnswerEvents(redis, key)
        self.pairs = PairRegistry(redis, key)
        self.images = ImageRecords(redis, key)
        self.pending = PendingChanges(redis, key)
        self.cycles = CycleRecords(redis, key)
        self.reviews = ReviewRecords(redis, key)

    def touch(self) -> None:
        """Register the project so /metrics and `reid-al status` list it."""
        pipe = self.redis.pipeline(transaction=False)
        register(pipe, self.project)
        pipe.execute()

    def exists(self) -> bool:
        """True once something was recorded for the project (an answer, a task, a pool, a cycle)."""
        return bool(self.redis.sismember(PROJECTS_KEY, self.project))

    def count(self, name: str, by: int = 1) -> None:
        """Count on the project when it exists, else on the global counters: a call about a project
        nobody registered (a /predict, an ignored event) must not register it."""
        if self.exists():
            self.incr(name, by)
        else:
            incr_global(self.redis, name, by)

    # --- counters (what /metrics exports) ------------------------------------------------------------
    def incr(self, name: str, by: int = 1) -> int:
        """Increment a counter (and list the project, so /metrics shows it)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(self.key("counters"), name, by)
        register(pipe, self.project)
        return int(pipe.execute()[0])

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in text_hash(self.redis.hgetall(self.key("counters"))).items()}

    # --- settings seen from Label Studio (from_name, to_name, view id) -------------------------------
    def set_meta(self, **values: Any) -> None:
        """Store settings seen from Label Studio; for a project with no state yet they expire after
        UNREGISTERED_META_TTL unless something registers the project meanwhile."""
        if not values:
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key("meta"), mapping={k: json.dumps(v) for k, v in values.items()})
        if not self.exists():
            pipe.expire(self.key("meta"), UNREGISTERED_META_TTL)
        pipe.execute()

    def meta(self) -> dict[str, Any]:
        return json_hash(self.redis.hgetall(self.key("meta")))

    # --- reconciliation with Label Studio (ml_backend.sync.reconcile) ---------------------------------
    def reconcile_marks(self) -> dict[str, Any]:
        """The last reconciliation: when, which kind, what it recovered, its error, and the watermark
        (the newest task ``updated_at`` seen, epoch seconds) the next incremental pass reads from."""
        return json_hash(self.redis.hgetall(self.key("reconcile")))

    def set_reconcile_marks(self, **values: Any) -> None:
        if values:
            self.redis.hset(self.key("reconcile"), mapping={k: json.dumps(v) for k, v in values.items()})

    def reconcile_status(self) -> dict[str, Any] | None:
        """The last reconciliation as /status and `reid-al status` show it (None before the first)."""
        marks = self.reconcile_marks()
        if not marks.get("last_at"):
            return None
        counters = self.counters()
        return {
            "last_at": marks.get("last_at"),
            "kind": marks.get("last_kind"),
            "recovered": marks.get("last_recovered", 0),
            "tasks_read": marks.get("last_tasks", 0),
            "invalid": marks.get("last_invalid", 0),
            "error": marks.get("last_error") or None,
            "watermark": marks.get("watermark"),
            "last_full_at": marks.get("last_full_at"),
            "recovered_total": counters.get("reconcile_recovered", 0),
            "passes": counters.get("reconciles:full", 0) + counters.get("reconciles:incremental", 0),
            "failures": counters.get("reconcile_failures", 0),
        }

    # --- the constraints a cycle trains on -----------------------------------------------------------
    def constraint_graph(
        self,
        row_of: Callable[[str], int | None],
        *,
        include_pending: bool = True,
    ) -> tuple[ConstraintGraph, int]:
        """Build the ConstraintGraph over pool rows; returns (graph, number of unmapped annotations).

        "same" -> must-link, "different" -> cannot-link, "unsure"/"skip" -> asked (never proposed
        again). With include_pending, every pair pushed to Label Studio and not retired is marked
        asked too, so a cycle never proposes a pair that is already waiting for an annotator.
        """
        from strategies.constraints import ConstraintGraph, ConstraintKind

        graph = ConstraintGraph()
        unmapped = 0
        for record in self.annotations.all():
            i, j = row_of(record["image_a"]), row_of(record["image_b"])
            if i is None or j is None or i == j:
                unmapped += 1
                continue
            answer = record["answer"]
            if answer == "same":
                graph.add(record["annotation_id"], i, j, ConstraintKind.MUST_LINK)
            elif answer == "different":
                graph.add(record["annotation_id"], i, j, ConstraintKind.CANNOT_LINK)
            else:
                graph.mark_asked(min(i, j), max(i, j))
        if include_pending:
            for record in self.pairs.all().values():
                if record.get("status") != "open":
                    continue
                i, j = row_of(record["image_a"]), row_of(record["image_b"])
                if i is not None and j is not None and i != j:
                    graph.mark_asked(min(i, j), max(i, j))
        return graph, unmapped


_reported: set[str] = set()


def list_projects(redis: Redis) -> list[str]:
    """Every project that has state, in numeric order.

    A member that is not a project key (written by hand, or by a version that accepted any id) is
    skipped and reported once per process, so one bad entry cannot break /metrics and /status."""
    out = []
    for name in text_list(redis.smembers(PROJECTS_KEY)):
        if is_project_key(name):
            out.append(name)
        elif name not in _reported:
            _reported.add(name)
            log.warning("%s lists %s, which is not a project id: skipped", PROJECTS_KEY, preview(name))
    return sorted(out, key=int)
