"""GET /metrics in Prometheus text exposition format (0.0.4), from the counters kept in Redis.

Why hand-written: a dozen gauges and counters need no client library, and the values live in Redis
(shared by every gunicorn worker and RQ worker), not in one process's memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ml_backend.state import GLOBAL_COUNTERS_KEY, ProjectState, global_counters, list_projects

if TYPE_CHECKING:
    from redis import Redis

    from ml_backend.queue import CycleQueue

__all__ = ["CONTENT_TYPE", "GLOBAL_COUNTERS_KEY", "MetricFamily", "collect", "render", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label(value: str) -> str:
    """Label values escape backslash, double quote and newline (exposition format spec)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def format_value(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class MetricFamily:
    """One metric name with HELP/TYPE lines and any number of labelled samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        if kind not in ("counter", "gauge", "summary", "untyped"):
            raise ValueError(f"kind must be counter, gauge, summary or untyped, got {kind!r}")
        self.name = name
        self.kind = kind
        self.help_text = help_text
        self.samples: list[tuple[str, dict[str, str], float]] = []

    def add(self, value: float, suffix: str = "", **labels: str) -> MetricFamily:
        self.samples.append((self.name + suffix, labels, float(value)))
        return self

    def render(self) -> str:
        help_text = self.help_text.replace("\\", "\\\\").replace("\n", "\\n")
        lines = [f"# HELP {self.name} {help_text}", f"# TYPE {self.name} {self.kind}"]
        lines += [
            f"{name}{format_labels(labels)} {format_value(value)}" for name, labels, value in self.samples
        ]
        return "\n".join(lines)


def render(families: Iterable[MetricFamily]) -> str:
    return "\n".join(f.render() for f in families) + "\n"


# Every metric family /metrics exports, in order: (key in collect, name, type, help).
_FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    ("events", "reid_al_webhook_events_total", "counter",
     "Webhook events received, by action"),
    ("constraints", "reid_al_constraints", "gauge",
     "Recorded annotations by answer (same = must-link, different = cannot-link)"),
    ("asked", "reid_al_pairs_asked_total", "counter",
     "Pairs answered by an annotator"),
    ("saved", "reid_al_pairs_saved_total", "counter",
     "Open pair tasks retired because the constraints imply their answer"),
    ("pushed", "reid_al_pairs_pushed_total", "counter",
     "Pair tasks created in Label Studio"),
    ("conflicts", "reid_al_conflicts", "gauge",
     "Pairs on which annotators gave contradicting answers"),
    ("contradictions", "reid_al_contradictions", "gauge",
     "Cannot-links inside a must-link component at the last cycle"),
    ("contradictions_open", "reid_al_contradictions_open", "gauge",
     "Contradictions under review at the last cycle (the group split at its weakest link until "
     "resolved)"),
    ("reviews_open", "reid_al_reviews_open", "gauge",
     "Pairs asked again at the top of the queue, by kind, at the last cycle"),
    ("reviews_pushed", "reid_al_reviews_pushed_total", "counter",
     "Review tasks created"),
    ("reviews_resolved", "reid_al_reviews_resolved_total", "counter",
     "Reviews resolved by later answers"),
    ("cycles", "reid_al_cycles_total", "counter",
     "Cycle requests by outcome"),
    ("duration", "reid_al_cycle_duration_seconds", "summary",
     "Duration of finished cycles"),
    ("last", "reid_al_last_cycle_duration_seconds", "gauge",
     "Duration of the last cycle"),
    ("pending", "reid_al_pending_constraints", "gauge",
     "Constraint changes since the last cycle"),
    ("running", "reid_al_cycle_running", "gauge",
     "1 while a cycle of the project runs"),
    ("stop_p", "reid_al_stop_p_any_change", "gauge",
     "Stopping rule, last cycle: P(any of the next N answers changes the identities)"),
    ("stop_rate", "reid_al_stop_label_changing_rate", "gauge",
     "Exponentially weighted rate of answers that changed the identities"),
    ("stop_changing", "reid_al_answers_label_changing", "gauge",
     "Answers that changed the identities (merges, separations, contradictions)"),
    ("stop_reached", "reid_al_stop_reached", "gauge",
     "1 once the stopping rule is reached"),
    ("stop_paused", "reid_al_new_pairs_paused", "gauge",
     "1 while new pairs are not pushed because the stopping rule is reached"),
    ("depth", "reid_al_queue_depth", "gauge",
     "Jobs waiting in the RQ queue"),
    ("rejected", "reid_al_requests_rejected_total", "counter",
     "Requests answered 4xx (bad input, auth, unknown project), by route and status"),
    ("webhook_rejected", "reid_al_webhook_rejected_total", "counter",
     "Webhook events about a project that were refused and not recorded, by status (401: the "
     "webhook lacks the Authorization header that `reid-al connect` sets; 4xx: bad input)"),
    ("reconciles", "reid_al_reconciliations_total", "counter",
     "Reconciliation passes with Label Studio by kind (incremental: tasks changed since the "
     "watermark)"),
    ("reconcile_recovered", "reid_al_reconcile_recovered_total", "counter",
     "Answer changes (added, changed, removed) reconciliation recovered that no webhook delivered"),
    ("reconcile_failures", "reid_al_reconcile_failures_total", "counter",
     "Reconciliation passes that failed (see reid-al status)"),
    ("reconcile_last", "reid_al_reconcile_last_timestamp_seconds", "gauge",
     "When the last reconciliation pass ran (epoch)"),
    ("unregistered", "reid_al_unregistered_calls_total", "counter",
     "Calls about projects with no state (counted, not registered)"),
)


def collect(redis: Redis, queue: CycleQueue | None = None) -> list[MetricFamily]:
    """Every metric of every project that has state in this Redis."""
    f = {key: MetricFamily(name, kind, help_text) for key, name, kind, help_text in _FAMILIES}

    for key, value in sorted(global_counters(redis).items()):
        if key.startswith("events:"):
            f["events"].add(value, "", project="", event=key.split(":", 1)[1])
        elif key.startswith("rejected:"):
            _, route, status = key.rsplit(":", 2) if key.count(":") >= 2 else (key, "", "")
            f["rejected"].add(value, route=route, status=status)
        else:
            f["unregistered"].add(value, what=key)

    for project in list_projects(redis):
        state = ProjectState(redis, project)
        counters = state.counters()
        for key, value in sorted(counters.items()):
            if key.startswith("events:"):
                f["events"].add(value, project=project, event=key.split(":", 1)[1])
            elif key.startswith("webhook_rejected:"):
                f["webhook_rejected"].add(value, project=project, status=key.split(":", 1)[1])
        for answer, count in state.annotations.counts().items():
            f["constraints"].add(count, project=project, answer=answer)
        f["asked"].add(counters.get("pairs_asked", 0), project=project)
        f["saved"].add(counters.get("pairs_saved", 0), project=project)
        f["pushed"].add(counters.get("pairs_pushed", 0), project=project)
        f["conflicts"].add(len(state.annotations.conflicts()), project=project)
        status = state.cycles.status()
        f["contradictions"].add(int(status.get("contradictions", 0) or 0), project=project)
        f["contradictions_open"].add(state.reviews.contradictions_open(), project=project)
        for kind, count in state.reviews.counts().items():
            f["reviews_open"].add(count, project=project, kind=kind)
        f["reviews_pushed"].add(counters.get("reviews_pushed", 0), project=project)
        f["reviews_resolved"].add(counters.get("reviews_resolved", 0), project=project)
        for outcome in ("enqueued", "queued", "coalesced", "follow_up", "finished", "failed", "killed"):
            f["cycles"].add(counters.get(f"cycles_{outcome}", 0), project=project, outcome=outcome)
        total, count = state.cycles.seconds()
        f["duration"].add(total, "_sum", project=project).add(count, "_count", project=project)
        history = state.cycles.history()
        if history:
            f["last"].add(float(history[0].get("duration_s", 0.0)), project=project)
        stopping = next((c["stopping"] for c in history if c.get("stopping")), None)
        if stopping:
            f["stop_p"].add(float(stopping["p_any_change"]), project=project)
            f["stop_rate"].add(float(stopping["rate"]), project=project)
            f["stop_changing"].add(int(stopping["label_changing"]), project=project)
            f["stop_reached"].add(int(bool(stopping["reached"])), project=project)
            f["stop_paused"].add(int(not stopping.get("pushing", True)), project=project)
        for kind in ("full", "incremental"):
            f["reconciles"].add(counters.get(f"reconciles:{kind}", 0), project=project, kind=kind)
        f["reconcile_recovered"].add(counters.get("reconcile_recovered", 0), project=project)
        f["reconcile_failures"].add(counters.get("reconcile_failures", 0), project=project)
        last_reconcile = state.reconcile_marks().get("last_at")
        if last_reconcile:
            f["reconcile_last"].add(float(last_reconcile), project=project)
        f["pending"].add(state.pending.count(), project=project)
        f["running"].add(1 if status.get("status") == "running" else 0, project=project)

    if queue is not None:
        f["depth"].add(queue.depth(), queue=queue.queue_name)
    return list(f.values())


def render_metrics(redis: Redis, queue: CycleQueue | None = None) -> str:
    """The full /metrics body."""
    return render(collect(redis, queue))
