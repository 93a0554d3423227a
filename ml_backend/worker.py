"""`reid-al worker`: an RQ worker that runs only the service's jobs and re-queues cycles whose job died.

Why a subclass: RQ's own maintenance (every 10 minutes, and only between jobs) leaves a cycle killed with
its worker "started" for that long, its lock held and /status saying "running". Here the worker beats
every WORKER_TTL - 15 seconds and, at start and at each maintenance (every MAINTENANCE_S), asks
CycleQueue.recover to re-queue any cycle whose job stopped beating. The same maintenance enqueues, every
REID_AL_RECONCILE_SECONDS per project, a reconciliation with Label Studio (ml_backend.sync.reconcile): what
a lost webhook missed is recovered without a human.
"""

from __future__ import annotations

import logging
from typing import Any

from rq import Worker

from ml_backend.queue import SERIALIZER, CycleQueue, ServiceJob
from ml_backend.settings import Settings

log = logging.getLogger(__name__)

WORKER_TTL = 25  # RQ's key of a worker killed with -9 expires this long after its last beat
MAINTENANCE_S = 10


def job_class_for(settings: Settings) -> type[ServiceJob]:
    """ServiceJob allowing the service's jobs plus REID_AL_EXTRA_JOBS."""
    extra = settings.extra_job_names
    if not extra:
        return ServiceJob
    return type("SiteJob", (ServiceJob,), {"allowed": ServiceJob.allowed | frozenset(extra)})


class ServiceWorker(Worker):
    """RQ worker with JSON job data, the job allowlist and dead-cycle recovery in its maintenance."""

    def __init__(
        self, *args: Any, cycle_queue: CycleQueue, reconcile_seconds: int = 0, **kwargs: Any
    ) -> None:
        kwargs.setdefault("serializer", SERIALIZER)
        kwargs.setdefault("worker_ttl", WORKER_TTL)
        interval = MAINTENANCE_S if reconcile_seconds < 1 else min(MAINTENANCE_S, reconcile_seconds)
        kwargs.setdefault("maintenance_interval", interval)
        super().__init__(*args, **kwargs)
        self.cycle_queue = cycle_queue
        self.reconcile_seconds = reconcile_seconds

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        try:
            for request in self.cycle_queue.recover():
                log.warning("project %s: re-queued its killed cycle as %s", request.project, request.job_id)
        except Exception as exc:  # maintenance must never stop the worker
            log.error("recovering dead cycles failed: %s", exc)
        try:
            # A job, not work done here: a full pass over a large project takes a while, and maintenance
            # runs in the worker's main process, between jobs and heartbeats.
            projects = self.cycle_queue.request_reconciles(self.reconcile_seconds)
            if projects:
                log.debug("reconciliation with Label Studio enqueued for project(s) %s", ", ".join(projects))
        except Exception as exc:
            log.error("enqueueing reconciliations failed: %s", exc)


def make_worker(settings: Settings, redis: Any, name: str | None = None) -> ServiceWorker:
    from rq import Queue

    job_class = job_class_for(settings)
    queue = Queue(settings.queue_name, connection=redis, serializer=SERIALIZER, job_class=job_class)
    # Reconciliation needs Label Studio's API: without a token there is nothing to reconcile with.
    reconcile_seconds = settings.reconcile_seconds if settings.label_studio_api_key else 0
    return ServiceWorker(
        [queue],
        connection=redis,
        name=name,
        job_class=job_class,
        cycle_queue=CycleQueue.for_settings(redis, settings),
        reconcile_seconds=reconcile_seconds,
    )
