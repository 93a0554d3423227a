"""Cycle coalescing, the per-project lock and job status, against a real Redis (no worker needed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from rq.job import Job

from ml_backend.queue import CYCLE_JOB, SERIALIZER, CycleQueue, _claim
from ml_backend.state import ProjectState


@pytest.fixture()
def queue(redis_client: redis.Redis) -> CycleQueue:
    return CycleQueue(redis_client, queue_name="test-q", job_timeout=60, dead_check_interval=0)


def test_one_job_while_queued(queue: CycleQueue) -> None:
    first = queue.request_cycle("1", reason="a")
    assert first.outcome == "enqueued"
    assert [queue.request_cycle("1").outcome for _ in range(5)] == ["queued"] * 5
    assert queue.depth() == 1
    job = Job.fetch(first.job_id, connection=queue.redis, serializer=SERIALIZER)
    assert job.func_name == CYCLE_JOB and tuple(job.args) == ("1",) and job.kwargs == {"reason": "a"}
    assert queue.request_cycle("2").outcome == "enqueued"  # projects are independent
    assert queue.depth() == 2


def test_requests_while_running_coalesce_into_exactly_one_follow_up(queue: CycleQueue) -> None:
    first = queue.request_cycle("1")
    queue.queue.empty()  # the worker "took" it
    queue.mark_running("1")
    outcomes = [queue.request_cycle("1").outcome for _ in range(4)]
    assert outcomes == ["coalesced"] * 4
    assert queue.status("1")["rerun_requested"] is True
    follow = queue.finish("1")
    assert follow is not None and follow != first.job_id
    assert queue.depth() == 1
    assert queue.status("1")["active_job"] == follow
    assert queue.request_cycle("1").outcome == "queued"  # the follow-up has not started yet
    queue.queue.empty()
    queue.mark_running("1")
    assert queue.finish("1") is None  # nothing arrived while it ran
    assert queue.depth() == 0
    assert queue.status("1")["active_job"] is None
    assert queue.request_cycle("1").outcome == "enqueued"


def test_concurrent_requests_enqueue_once(queue: CycleQueue, redis_url: str) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def hit() -> None:
        q = CycleQueue(redis.Redis.from_url(redis_url), queue_name="test-q", job_timeout=60)
        for _ in range(10):
            out = q.request_cycle("9").outcome
            with lock:
                outcomes.append(out)

    threads = [threading.Thread(target=hit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("enqueued") == 1 and len(outcomes) == 40
    assert queue.depth() == 1


def test_dead_claim_is_taken_over(queue: CycleQueue) -> None:
    first = queue.request_cycle("1")
    # the job vanished (e.g. flushed)
    Job.fetch(first.job_id, connection=queue.redis, serializer=SERIALIZER).delete()
    queue.redis.set(queue._keys("1")[0], f"{first.job_id}@0.0")  # claimed long ago
    second = queue.request_cycle("1")
    assert second.outcome == "enqueued" and second.job_id != first.job_id


def test_started_job_of_a_vanished_worker_is_taken_over(queue: CycleQueue) -> None:
    from rq.job import JobStatus

    first = queue.request_cycle("1")
    queue.queue.remove(first.job_id)  # a worker took it
    job = Job.fetch(first.job_id, connection=queue.redis, serializer=SERIALIZER)
    job.worker_name = "alive"
    job.save()
    job.set_status(JobStatus.STARTED)
    queue.redis.set("rq:worker:alive", "1")
    assert queue.request_cycle("1").outcome == "queued"  # a live worker's job is left alone
    job.worker_name = "ghost"  # no key rq:worker:ghost: the worker died with the job
    job.save()
    second = queue.request_cycle("1")
    assert second.outcome == "enqueued" and second.job_id != first.job_id
    assert queue.depth() == 1


def test_fresh_claim_without_job_is_not_taken_over(queue: CycleQueue) -> None:
    queue.redis.set(queue._keys("1")[0], _claim("cycle-1-pending"))
    assert queue.request_cycle("1").outcome == "queued"


def test_lock_is_exclusive_and_owned(queue: CycleQueue) -> None:
    assert queue.acquire_lock("1", "t1", wait=0)
    assert not queue.acquire_lock("1", "t2", wait=0.2, poll=0.05)
    assert not queue.release_lock("1", "t2")
    assert queue.release_lock("1", "t1")
    assert queue.acquire_lock("1", "t2", wait=0)


def test_lock_expires_without_heartbeat_and_lives_with_it(redis_client: redis.Redis) -> None:
    q = CycleQueue(redis_client, queue_name="test-q", lock_ttl=1)
    assert q.acquire_lock("1", "dead-worker", wait=0)
    assert q.acquire_lock("1", "next", wait=3, poll=0.1)  # the dead holder's lock expired
    with q.hold_lock("1", "next"):
        time.sleep(1.6)  # longer than lock_ttl: the heartbeat keeps it
        assert redis_client.get(q.lock_key("1")) == b"next"
        assert not q.acquire_lock("1", "other", wait=0)
    assert redis_client.get(q.lock_key("1")) is None  # released on exit
    assert not q.extend_lock("1", "next")


def test_status_and_counters(queue: CycleQueue) -> None:
    req = queue.request_cycle("4", reason="START_TRAINING")
    status = queue.status("4")
    assert status["active_job"] == req.job_id and status["active_job_status"] == "queued"
    assert status["cycle"]["status"] == "queued" and status["queue_depth"] == 1
    assert status["conflicts"] == []
    state = ProjectState(queue.redis, "4")
    state.annotations.record(1, task_id=1, image_a="a", image_b="b", answer="same", completed_by=1)
    state.annotations.record(2, task_id=1, image_a="a", image_b="b", answer="different", completed_by=2)
    assert queue.status("4")["conflicts"][0]["annotations"] == {"1": "same", "2": "different"}
    everything = queue.status_all()
    assert [p["project"] for p in everything["projects"]] == ["4"]
    assert ProjectState(queue.redis, "4").counters()["cycles_enqueued"] == 1


def test_embedding_request(queue: CycleQueue) -> None:
    job_id = queue.request_embedding("1", [{"id": "x", "url": "/u"}])
    job = Job.fetch(job_id, connection=queue.redis, serializer=SERIALIZER)
    assert tuple(job.args) == ("1", [{"id": "x", "url": "/u"}])
    with pytest.raises(ValueError, match="items"):
        queue.request_embedding("1", [])


def test_constructor_validates(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="queue_name"):
        CycleQueue(redis_client, queue_name="")
    with pytest.raises(ValueError, match="job_timeout"):
        CycleQueue(redis_client, job_timeout=0)
    with pytest.raises(ValueError, match="lock_ttl"):
        CycleQueue(redis_client, lock_ttl=0)


# --- jobs: pending count and embedding claims survive failures ---------------------------------------
@pytest.fixture()
def in_worker(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> redis.Redis:
    """Run ml_backend.jobs functions as if inside an RQ worker, on the test Redis and a temp MODEL_DIR."""
    from ml_backend import jobs

    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.setattr(jobs, "_connection", lambda: redis_client)
    return redis_client


def test_failed_cycle_keeps_the_pending_count_that_triggered_it(
    in_worker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_backend import jobs

    state = ProjectState(in_worker, "7")
    state.pending.add(25)

    def push_fails(*_args: object, **_kwargs: object) -> dict:
        raise ConnectionError("Label Studio is restarting")

    monkeypatch.setattr(jobs, "run_project_cycle", push_fails)
    with pytest.raises(ConnectionError):
        jobs.cycle_job("7")
    assert state.pending.count() == 25  # 5 more answers reach 30 >= 20: a cycle is requested again
    assert in_worker.get(state.key("pending_in_flight")) is None  # nothing left marked as being trained on
    assert state.cycles.status()["status"] == "failed"


def test_finished_cycle_consumes_only_what_it_read(
    in_worker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_backend import jobs

    state = ProjectState(in_worker, "7")
    state.pending.add(25)

    def answers_arrive_while_training(*_args: object, **_kwargs: object) -> dict:
        # While the cycle holds its lock, the 25 it read do not count towards the next trigger.
        assert state.pending.add(4) == 4
        return {"version": "v1", "contradictions": 0}

    monkeypatch.setattr(jobs, "run_project_cycle", answers_arrive_while_training)
    summary = jobs.cycle_job("7")
    assert summary["status"] == "finished"
    assert state.cycles.status()["constraints_since_last"] == 25
    assert state.pending.count() == 4


def test_embeddings_that_fail_are_released_for_a_retry(
    in_worker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_backend import fetch, jobs

    state = ProjectState(in_worker, "7")
    assert state.images.claim(["a", "b"]) == ["a", "b"]

    def unreachable(url: str, *_args: object, **_kwargs: object) -> None:
        raise OSError(f"{url}: not there yet")

    monkeypatch.setattr(fetch, "fetch_image", unreachable)
    result = jobs.embed_job("7", [{"id": "a", "url": "/u/a.jpg"}, {"id": "b", "url": "/u/b.jpg"}])
    assert [f[0] for f in result["failed"]] == ["a", "b"]
    assert state.images.claim(["a", "b"]) == ["a", "b"]  # requested again by the next event


def test_a_crashed_embedding_job_releases_its_claims(
    in_worker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_backend import fetch, jobs

    state = ProjectState(in_worker, "7")
    assert state.images.claim(["a", "c"]) == ["a", "c"]

    def crash(url: str, *_args: object, **_kwargs: object) -> None:
        raise RuntimeError("worker bug")

    monkeypatch.setattr(fetch, "fetch_image", crash)
    with pytest.raises(RuntimeError, match="worker bug"):
        jobs.embed_job("7", [{"id": "a", "url": "/u/a.jpg"}])
    assert state.images.claim(["a", "c"]) == ["a"]  # "c" was not this job's: still claimed


def test_a_stream_of_requests_checks_for_a_dead_job_at_most_every_interval(redis_client: redis.Redis) -> None:
    """Under a stream of answers the dead-job check (three round trips) runs once per interval per
    project; the workers' own recovery covers the time in between."""
    q = CycleQueue(redis_client, queue_name="test-q", job_timeout=60, dead_check_interval=60)
    first = q.request_cycle("1")
    Job.fetch(first.job_id, connection=q.redis, serializer=SERIALIZER).delete()
    q.redis.set(q._keys("1")[0], f"{first.job_id}@0.0")  # its job vanished long ago: dead
    assert q.request_cycle("1").outcome == "enqueued"  # the first request checks
    second = q.request_cycle("1")
    Job.fetch(second.job_id, connection=q.redis, serializer=SERIALIZER).delete()
    q.redis.set(q._keys("1")[0], f"{second.job_id}@0.0")
    assert q.request_cycle("1").outcome == "queued"  # checked less than 60 s ago: not again
    assert q.recover()[0].outcome == "enqueued"  # what a worker's maintenance does meanwhile


def test_reconciliations_are_enqueued_once_per_interval_per_project(queue: CycleQueue) -> None:
    """Every worker's maintenance asks; the per-project key lets one of them enqueue per interval."""
    from ml_backend.queue import RECONCILE_JOB, SERVICE_JOBS

    assert RECONCILE_JOB in SERVICE_JOBS  # a worker runs it (and refuses jobs not in the set)
    for project in ("3", "12"):
        ProjectState(queue.redis, project).touch()
    assert queue.request_reconciles(0) == []  # off
    assert queue.request_reconciles(30) == ["3", "12"]
    assert queue.request_reconciles(30) == []  # a second worker, same interval: nothing more
    jobs = [Job.fetch(i, connection=queue.redis, serializer=SERIALIZER) for i in queue.queue.job_ids]
    assert [(j.func_name, j.args) for j in jobs] == [(RECONCILE_JOB, ["3"]), (RECONCILE_JOB, ["12"])]
    queue.redis.delete("reid-al:3:reconcile:due")  # the interval passed for project 3
    assert queue.request_reconciles(30) == ["3"]
