# Long on purpose: the per-project claim, lock, follow-up and recovery are one protocol over the same keys.
"""Enqueueing cycles through RQ with per-project coalescing, and job status.

Why coalescing: annotations arrive far faster than a cycle runs. One cycle job per project exists
at a time; a request while it is queued is already covered by it (it will read the newest
constraints when it starts); a request while it runs sets a "rerun" flag, and the finishing job
enqueues exactly one follow-up. Both decisions are single Lua scripts, so no request is lost
between "check" and "set" even with many web threads and workers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from ml_backend.pool import UnreadableImages
from ml_backend.settings import Settings
from ml_backend.state import (
    KEY_PREFIX,
    PROJECTS_KEY,
    ProjectState,
    cycle_lock_key,
    global_counters,
    list_projects,
)
from ml_backend.state.base import as_text
from ml_backend.state.cycles import push_outcome
from ml_backend.state.pending import cycle_alive_key

if TYPE_CHECKING:
    from pathlib import Path

    from redis import Redis

log = logging.getLogger(__name__)

CYCLE_JOB = "ml_backend.jobs.cycle_job"
EMBED_JOB = "ml_backend.jobs.embed_job"
RECONCILE_JOB = "ml_backend.jobs.reconcile_job"
SERVICE_JOBS = frozenset({CYCLE_JOB, EMBED_JOB, RECONCILE_JOB})
LOCK_TTL = 60  # seconds a cycle lock outlives its holder's last heartbeat
CLAIM_GRACE = 30.0  # seconds between claiming a cycle and enqueueing its RQ job, at most
ALIVE_TTL = 15  # seconds a cycle job's "alive" key outlives its last beat (it beats every ALIVE_TTL / 3)
JOB_PREFIX = "cycle-"  # every cycle job id (and lock token) starts with it
UNREADABLE_SHOWN = 5  # unreadable images /status names per project (the count is complete)
DEAD_CHECK_S = 5.0  # a cycle request checks whether the claimed job died at most this often per project


class ServiceJob(Job):
    """An RQ job whose function must be one of the service's jobs (or REID_AL_EXTRA_JOBS).

    Why: jobs are data in Redis; whoever can write there chooses the function a worker imports and calls.
    With JSON arguments (``SERIALIZER``) and this check, a forged job can neither unpickle an object nor
    call anything but the service's own entry points."""

    allowed: frozenset[str] = SERVICE_JOBS

    @property
    def func(self) -> Any:
        name = self.func_name
        if name is not None and name not in self.allowed and not self.instance:
            raise PermissionError(
                f"job {self.id}: {name!r} is not a reid-al job; this worker runs only "
                f"{', '.join(sorted(self.allowed))}"
            )
        return super().func


# Job arguments and results as JSON: nothing in Redis is ever unpickled.
SERIALIZER = JSONSerializer
_DEAD = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}

# KEYS: active, running, rerun, the project's counters, the project set, its meta. ARGV: new job id,
# ttl, project. Returns 'enqueue' (caller must enqueue ARGV[1]), 'queued' (a not-yet-started job covers
# it) or 'coalesced' (the running job will enqueue one follow-up); the last two are counted here, so a
# stream of answers while a cycle waits costs one round trip each.
_REQUEST_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return {'enqueue', ARGV[1]} end
local active = redis.call('GET', KEYS[1])
local outcome = 'coalesced'
if redis.call('EXISTS', KEYS[2]) == 0 then
  outcome = 'queued'
else
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
end
redis.call('HINCRBY', KEYS[4], 'cycles_' .. outcome, 1)
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('PERSIST', KEYS[6])
return {outcome, active}
"""

# KEYS: active, running, rerun. ARGV: follow-up job id, ttl. Called by the job when it ends.
_FINISH_LUA = """
redis.call('DEL', KEYS[2])
if redis.call('GETDEL', KEYS[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return ARGV[1]
end
redis.call('DEL', KEYS[1])
return false
"""

# KEYS: a claim or lock. ARGV: dead holder, new holder, ttl. Replace a dead holder's claim (a worker killed
# mid-cycle) or lock, only if it still holds it.
_REPLACE_HOLDER_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""

# KEYS: lock. ARGV: token, ttl. Extend only our own lock (the running job's heartbeat).
_EXTEND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


# KEYS: lock. ARGV: token. Release only our own lock.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class CycleRequest:
    """What a cycle request did: "enqueued", "queued" (already waiting) or "coalesced" (rerun flag)."""

    project: str
    outcome: str
    job_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _claim(job_id: str) -> str:
    """The value of the "active" key: job id and claim time (to tell a dead claim from a fresh one)."""
    return f"{job_id}@{time.time():.3f}"


def _job_of(claim: str) -> str:
    return claim.rsplit("@", 1)[0]


def _claimed_at(claim: str) -> float:
    try:
        return float(claim.rsplit("@", 1)[1])
    except (IndexError, ValueError):
        return 0.0


class CycleQueue:
    """RQ queue access for cycles and embedding jobs; coalescing keys live beside ProjectState's."""

    def __init__(
        self,
        redis: Redis,
        *,
        queue_name: str = Settings.queue_name,
        job_timeout: int = Settings.job_timeout,
        lock_ttl: int = LOCK_TTL,
        dead_check_interval: float = DEAD_CHECK_S,
        model_dir: Path | None = None,
        retrain_every: int | None = None,
    ) -> None:
        if not queue_name:
            raise ValueError("queue_name must not be empty")
        if job_timeout < 1:
            raise ValueError(f"job_timeout must be >= 1 second, got {job_timeout}")
        if lock_ttl < 1:
            raise ValueError(f"lock_ttl must be >= 1 second, got {lock_ttl}")
        self.redis = redis
        self.queue_name = queue_name
        self.job_timeout = job_timeout
        self.lock_ttl = lock_ttl
        self.queue = Queue(queue_name, connection=redis, serializer=SERIALIZER, job_class=ServiceJob)
        self._request = redis.register_script(_REQUEST_LUA)
        self._finish = redis.register_script(_FINISH_LUA)
        self._takeover = redis.register_script(_REPLACE_HOLDER_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._extend = redis.register_script(_EXTEND_LUA)
        self._steal = redis.register_script(_REPLACE_HOLDER_LUA)
        self.dead_check_interval = dead_check_interval
        self.model_dir = model_dir  # where status reads each project's unreadable images
        self.retrain_every = retrain_every  # shown by status beside the pending answers
        self._dead_checked: dict[str, float] = {}

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings) -> CycleQueue:
        """The queue REID_AL_QUEUE names, with REID_AL_JOB_TIMEOUT."""
        return cls(
            redis,
            queue_name=settings.queue_name,
            job_timeout=settings.job_timeout,
            model_dir=settings.model_dir,
            retrain_every=settings.retrain_every,
        )

    # --- keys ----------------------------------------------------------------------------------------
    @staticmethod
    def _keys(project: str) -> list[str]:
        base = f"{KEY_PREFIX}:{project}:cycle"
        return [f"{base}:active", f"{base}:running", f"{base}:rerun"]

    @staticmethod
    def lock_key(project: str) -> str:
        return cycle_lock_key(project)

    @property
    def ttl(self) -> int:
        # The claim outlives the job's own timeout, so only a crashed worker can leave it behind.
        return self.job_timeout + 60

    # --- requests ------------------------------------------------------------------------------------
    def request_cycle(self, project: str, *, reason: str = "") -> CycleRequest:
        """Ask for a cycle of `project`; enqueues only when no cycle is queued or running."""
        state = ProjectState(self.redis, project)
        claim = _claim(f"{JOB_PREFIX}{state.project}-{uuid.uuid4().hex[:12]}")
        outcome, active = (
            as_text(v) for v in self._request(
                keys=[*self._keys(state.project), state.key("counters"), PROJECTS_KEY, state.key("meta")],
                args=[claim, self.ttl, state.project],
            )
        )
        # A claim whose job can no longer finish it (worker killed mid-cycle) is taken over. Checked at
        # most every DEAD_CHECK_S per project here (workers also recover dead cycles): under a stream of
        # answers every webhook would otherwise pay three more round trips.
        if (
            outcome != "enqueue"
            and active is not None
            and self._due_for_dead_check(state.project)
            and self._is_dead(active, state.project)
        ):
            replaced = self._replace_dead(state.project, active, reason or "request")
            if replaced is not None:
                return replaced
        job_id = _job_of(active) if active is not None else None
        if outcome == "enqueue":
            assert job_id is not None
            self._enqueue_cycle(state.project, job_id, reason)
            state.cycles.set_status(status="queued", job_id=job_id, enqueued_at=time.time(), reason=reason)
            state.touch()
            state.incr("cycles_enqueued")
            return CycleRequest(state.project, "enqueued", job_id)
        log.info("project %s: cycle request (%s) %s into %s", state.project, reason, outcome, job_id)
        return CycleRequest(state.project, str(outcome), job_id)

    def _enqueue_cycle(self, project: str, job_id: str, reason: str) -> Job:
        return self.queue.enqueue(
            CYCLE_JOB,
            project,
            reason=reason,
            job_id=job_id,
            job_timeout=self.job_timeout,
            result_ttl=24 * 3600,
            failure_ttl=7 * 24 * 3600,
            description=f"reid-al cycle of project {project}",
        )

    def _due_for_dead_check(self, project: str) -> bool:
        now = time.monotonic()
        last = self._dead_checked.get(project)
        if last is not None and now - last < self.dead_check_interval:
            return False
        self._dead_checked[project] = now
        return True

    def _fetch(self, job_id: str) -> Job:
        return ServiceJob.fetch(job_id, connection=self.redis, serializer=SERIALIZER)

    def job_alive(self, project: str, job_id: str) -> bool:
        """The cycle job ``job_id`` beat within ALIVE_TTL seconds (its process runs)."""
        return bool(self.redis.exists(cycle_alive_key(project, job_id)))

    def _is_dead(self, claim: str, project: str | None = None) -> bool:
        """A claimed job that failed/finished/vanished, or started and stopped beating (its process was
        killed). A fresh claim whose job is not enqueued yet (the claimer is between SET and enqueue)
        is alive for CLAIM_GRACE seconds; a job that just started has ALIVE_TTL seconds to beat."""
        job_id = _job_of(claim)
        try:
            job = self._fetch(job_id)
        except NoSuchJobError:
            return time.time() - _claimed_at(claim) > CLAIM_GRACE
        status = job.get_status(refresh=True)
        if status == JobStatus.STARTED:
            if project is not None and self.job_alive(project, job_id):
                return False
            started = job.started_at.timestamp() if job.started_at is not None else _claimed_at(claim)
            if project is not None and time.time() - started > ALIVE_TTL:
                return True
            # A worker killed mid-job leaves its job "started" until RQ's cleanup; its own key expires
            # with its heartbeat (worker_ttl), so a missing worker key means nobody runs the job.
            return bool(job.worker_name) and not self.redis.exists(f"rq:worker:{job.worker_name}")
        return status is None or status in _DEAD

    def recover(self) -> list[CycleRequest]:
        """Re-queue the cycle of every project whose cycle job died (worker or work-horse killed).

        Run when a worker starts and by every worker's maintenance (``ml_backend.worker``): a killed
        cycle is re-run without waiting for the next answer, /status stops saying "running", and the
        dead job's lock is released instead of waited out."""
        out = []
        for project in list_projects(self.redis):
            claim = as_text(self.redis.get(self._keys(project)[0]))
            if claim is not None and self._is_dead(claim, project):
                replaced = self._replace_dead(project, claim, "re-run of a cycle whose job died")
                if replaced is not None:
                    out.append(replaced)
        return out

    def _replace_dead(self, project: str, claim: str, reason: str) -> CycleRequest | None:
        """Take over a dead job's claim: release its lock, record it, enqueue a replacement."""
        new_claim = _claim(f"{JOB_PREFIX}{project}-{uuid.uuid4().hex[:12]}")
        if not self._takeover(keys=self._keys(project)[:1], args=[claim, new_claim, self.ttl]):
            return None  # someone else replaced it first
        dead = _job_of(claim)
        state = ProjectState(self.redis, project)
        log.warning("project %s: cycle job %s is dead, replacing it by %s", project, dead, _job_of(new_claim))
        self.redis.delete(self._keys(project)[1])
        self._release(keys=[self.lock_key(project)], args=[dead])
        state.pending.abandon()
        if state.cycles.status().get("status") == "running":
            state.cycles.record(
                {
                    "project": project,
                    "status": "killed",
                    "job_id": dead,
                    "reason": reason,
                    "error": "the job's process died",
                    "finished_at": time.time(),
                    "duration_s": 0.0,
                }
            )
        state.incr("cycles_killed")
        job_id = _job_of(new_claim)
        self._enqueue_cycle(project, job_id, reason)
        state.cycles.set_status(status="queued", job_id=job_id, enqueued_at=time.time(), reason=reason)
        state.incr("cycles_enqueued")
        return CycleRequest(project, "enqueued", job_id)

    def request_embedding(self, project: str, items: list[dict[str, str]]) -> str:
        """Enqueue embedding of images that arrived with user-imported tasks; returns the job id."""
        if not items:
            raise ValueError("items must not be empty")
        state = ProjectState(self.redis, project)
        job = self.queue.enqueue(
            EMBED_JOB,
            state.project,
            items,
            job_timeout=self.job_timeout,
            result_ttl=24 * 3600,
            failure_ttl=7 * 24 * 3600,
            description=f"reid-al embedding for project {state.project}",
        )
        state.incr("embed_jobs_enqueued")
        return str(job.id)

    def request_reconciles(self, interval: int) -> list[str]:
        """Enqueue a reconciliation of every project that had none for ``interval`` seconds; returns the
        projects. Every worker's maintenance calls it: the per-project key (SET NX EX) lets exactly one
        of them enqueue per interval."""
        if interval < 1:
            return []
        out = []
        for project in list_projects(self.redis):
            if not self.redis.set(f"{KEY_PREFIX}:{project}:reconcile:due", "1", nx=True, ex=interval):
                continue
            self.queue.enqueue(
                RECONCILE_JOB,
                project,
                job_timeout=self.job_timeout,
                result_ttl=3600,
                failure_ttl=7 * 24 * 3600,
                description=f"reid-al reconciliation of project {project} with Label Studio",
            )
            out.append(project)
        return out

    # --- called by the cycle job -----------------------------------------------------------------------
    def mark_running(self, project: str) -> None:
        """The job started: from now on a request sets the rerun flag instead of being absorbed."""
        self.redis.set(self._keys(project)[1], "1", ex=self.ttl)

    def finish(self, project: str, *, enqueue_follow_up: bool = True) -> str | None:
        """The job ended: enqueue exactly one follow-up if a request arrived while it ran."""
        claim = _claim(f"{JOB_PREFIX}{project}-{uuid.uuid4().hex[:12]}")
        claimed = as_text(self._finish(keys=self._keys(project), args=[claim, self.ttl]))
        if claimed is None:
            return None
        result = _job_of(claimed)
        if enqueue_follow_up:
            self._enqueue_cycle(project, result, "coalesced follow-up")
            state = ProjectState(self.redis, project)
            state.cycles.set_status(
                status="queued", job_id=result, enqueued_at=time.time(), reason="coalesced follow-up"
            )
            state.incr("cycles_follow_up")
        return result

    def acquire_lock(self, project: str, token: str, *, wait: float | None = None, poll: float = 0.5) -> bool:
        """Per-project mutual exclusion (SET NX EX): two workers never run one project's cycle at once.

        The lock lives `lock_ttl` seconds unless its holder extends it (`hold_lock`). A lock held by a
        cycle job that stopped beating (its process was killed) is taken over at once, not waited out.
        Waits up to `wait` (default: the job timeout) for a live holder to finish.
        """
        deadline = time.monotonic() + (self.ttl if wait is None else wait)
        key = self.lock_key(project)
        while True:
            if self.redis.set(key, token, nx=True, ex=self.lock_ttl):
                return True
            holder = as_text(self.redis.get(key))
            if (
                holder is not None
                and holder.startswith(JOB_PREFIX)
                and holder != token
                and not self.job_alive(project, holder)
                and self._steal(keys=[key], args=[holder, token, self.lock_ttl])
            ):
                log.warning("project %s: took over the cycle lock of dead job %s", project, holder)
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    @contextlib.contextmanager
    def keep_alive(self, project: str, job_id: str) -> Iterator[None]:
        """Beat for a running cycle job (its "alive" key) from a thread, from start to finish; what
        ``recover`` and ``acquire_lock`` read to tell a dead job from a slow one."""
        key = cycle_alive_key(project, job_id)
        self.redis.set(key, "1", ex=ALIVE_TTL)

        def beat() -> bool:
            try:
                self.redis.set(key, "1", ex=ALIVE_TTL)
            except Exception as exc:  # Redis restarting: the next beat retries
                log.warning("project %s: heartbeat of %s failed: %s", project, job_id, exc)
            return True

        try:
            with _beating(f"reid-al-alive-{project}", ALIVE_TTL / 3, beat):
                yield
        finally:
            with contextlib.suppress(Exception):
                self.redis.delete(key)

    def extend_lock(self, project: str, token: str) -> bool:
        """Renew our lock for another `lock_ttl` seconds; False when it is no longer ours."""
        return bool(self._extend(keys=[self.lock_key(project)], args=[token, self.lock_ttl]))

    def release_lock(self, project: str, token: str) -> bool:
        return bool(self._release(keys=[self.lock_key(project)], args=[token]))

    @contextlib.contextmanager
    def hold_lock(self, project: str, token: str) -> Iterator[None]:
        """Keep an acquired lock alive from a heartbeat thread; release it on exit."""

        def beat() -> bool:
            if self.extend_lock(project, token):
                return True
            log.error("project %s: lost the cycle lock (expired); another cycle may start", project)
            return False

        try:
            with _beating(f"reid-al-lock-{project}", self.lock_ttl / 3, beat):
                yield
        finally:
            self.release_lock(project, token)

    # --- status --------------------------------------------------------------------------------------
    def depth(self) -> int:
        return int(self.queue.count)

    def status(self, project: str) -> dict[str, Any]:
        """Everything `GET /status?project=P` and `reid-al status` show for one project."""
        state = ProjectState(self.redis, project)
        active_key, running_key, rerun_key = self._keys(state.project)
        claim = as_text(self.redis.get(active_key))
        active = _job_of(claim) if claim is not None else None
        job_status = None
        cycle = state.cycles.status()
        if active is not None:
            try:
                fetched = self._fetch(active).get_status(refresh=True)
                job_status = str(getattr(fetched, "value", fetched))
            except NoSuchJobError:
                job_status = "missing"
            if claim is not None and self._is_dead(claim, state.project):
                job_status = "dead"
                if cycle.get("status") in ("running", "queued"):
                    # Said as it is until a worker re-queues it (at its start or its next maintenance).
                    cycle["status"] = "interrupted"
        cycles = state.cycles.history()
        finished = next((c for c in cycles if c.get("status") == "finished"), None)
        counters = state.counters()
        return {
            "project": state.project,
            "active_job": active,
            "active_job_status": job_status,
            "running": bool(self.redis.exists(running_key)),
            "rerun_requested": bool(self.redis.exists(rerun_key)),
            "pending_constraints": state.pending.count(),
            "retrain_every": self.retrain_every,
            "conflicts": state.annotations.conflicts(),
            "reviews": review_status(state),
            "current_version": state.cycles.current_version(),
            "cycle": cycle,
            "last_cycle": cycles[0] if cycles else None,
            "stopping": next((c["stopping"] for c in cycles if c.get("stopping")), None),
            "n_cycles": len(cycles),
            "last_push": push_outcome(finished),
            "webhook_rejected": {
                k.split(":", 1)[1]: v
                for k, v in sorted(counters.items())
                if k.startswith("webhook_rejected:")
            },
            "unreadable_images": self._unreadable(state.project),
            "reconcile": state.reconcile_status(),
            "queue_depth": self.depth(),
        }

    def _unreadable(self, project: str) -> dict[str, Any] | None:
        """Pool images left out as unreadable (None without MODEL_DIR: nothing to read them from)."""
        if self.model_dir is None:
            return None
        records = UnreadableImages(self.model_dir, project)
        found = records.load()
        shown = [{"id": r["id"], "reason": r.get("reason")} for r in list(found.values())[:UNREADABLE_SHOWN]]
        return {"count": len(found), "examples": shown, "file": str(records.path)}

    def status_all(self) -> dict[str, Any]:
        """Every project's status, plus the counters that belong to no project (rejected requests,
        ignored events and calls about unknown projects)."""
        return {
            "queue": self.queue_name,
            "queue_depth": self.depth(),
            "projects": [self.status(p) for p in list_projects(self.redis)],
            "unregistered": global_counters(self.redis),
        }


def review_status(state: ProjectState) -> dict[str, Any]:
    """The pairs under review as /status and `reid-al status` show them: open ones (most urgent first),
    by kind, and how many were pushed and resolved so far."""
    counters = state.counters()
    return {
        "open": state.reviews.open(),
        "by_kind": state.reviews.counts(),
        "contradictions_open": state.reviews.contradictions_open(),
        "pushed": counters.get("reviews_pushed", 0),
        "resolved": counters.get("reviews_resolved", 0),
    }


@contextlib.contextmanager
def _beating(name: str, interval: float, beat: Callable[[], bool]) -> Iterator[None]:
    """Call ``beat`` every ``interval`` seconds from a daemon thread while the block runs (until it
    returns False); the thread is stopped and joined on exit."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            if not beat():
                return

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
