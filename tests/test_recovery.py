"""A cycle killed mid-run is re-queued by the worker (its maintenance, or the next worker's start), its
lock is released rather than waited out, and /status says "interrupted", not "running", meanwhile.
Also what the worker refuses to run: pickled job data and functions that are not the service's.

Real redis-server, real `reid-al worker` processes, real cycles (mobilenetv2 features, no Label Studio).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from rq import Queue
from test_integration_queue import write_features

from ml_backend.embedded import session_members, stop_process
from ml_backend.queue import SERIALIZER, CycleQueue
from ml_backend.state import ProjectState

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def env(tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path / "model"),
            "REID_AL_QUEUE": f"rec-{uuid.uuid4().hex[:8]}", "REID_AL_BUDGET": "6", "LABEL_STUDIO_API_KEY": "",
            "LOG_LEVEL": "INFO", "REID_AL_ENCODER": "mobilenetv2", "REID_AL_TORCH_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                         os.environ.get("PYTHONPATH")]))}


class Workers:
    """`reid-al worker` processes started by a test, stopped at its end."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.procs = env, log, []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "worker", *args], cwd=REPO,
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""


@pytest.fixture()
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(env, tmp_path / "worker.log")
    yield pool
    for proc in pool.procs:
        stop_process(proc, timeout=10)


def wait_for(predicate: Any, what: str, workers: Workers, timeout: float = 240.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out waiting for {what}; worker log:\n{workers.tail()}")
        time.sleep(0.05)
    return time.monotonic() - start


def running_job(queue: CycleQueue, project: str) -> str | None:
    status = queue.status(project)
    return status["active_job"] if status["cycle"].get("status") == "running" else None


def test_a_killed_work_horse_is_re_queued_by_the_worker_and_its_lock_released(
        env: dict[str, str], redis_client: redis.Redis, workers: Workers) -> None:
    write_features(Path(env["MODEL_DIR"]), "3")
    queue = CycleQueue(redis_client, queue_name=env["REID_AL_QUEUE"])
    worker = workers.start()
    first = queue.request_cycle("3", reason="test").job_id
    wait_for(lambda: running_job(queue, "3") == first, "the cycle to run", workers)
    assert redis_client.get(queue.lock_key("3")) == first.encode()  # the job's id is its lock token
    horses = psutil.Process(worker.pid).children()
    assert len(horses) == 1
    horses[0].send_signal(signal.SIGKILL)
    killed = time.monotonic()

    # Said as it is: not "running" once the job is dead, until the worker re-queues it.
    wait_for(lambda: queue.status("3")["cycle"]["status"] != "running"
             or queue.status("3")["active_job"] != first, "status to stop saying running", workers, 30)
    wait_for(lambda: (running_job(queue, "3") or first) != first, "the re-queued cycle to run", workers)
    took = time.monotonic() - killed
    assert took < 45, f"re-run started {took:.1f} s after the kill"  # maintenance every 10 s, no lock wait
    wait_for(lambda: queue.status("3")["cycle"].get("status") == "finished", "the re-run to finish", workers)
    state = ProjectState(redis_client, "3")
    history = state.cycles.history()
    assert [c["status"] for c in history] == ["finished", "killed"], history
    assert state.counters()["cycles_killed"] == 1
    assert redis_client.get(queue.lock_key("3")) is None


def test_a_cycle_of_a_killed_worker_is_re_queued_when_a_worker_starts(
        env: dict[str, str], redis_client: redis.Redis, workers: Workers) -> None:
    write_features(Path(env["MODEL_DIR"]), "4")
    queue = CycleQueue(redis_client, queue_name=env["REID_AL_QUEUE"])
    worker = workers.start()
    first = queue.request_cycle("4", reason="test").job_id
    wait_for(lambda: running_job(queue, "4") == first, "the cycle to run", workers)
    # The worker and its work-horse (its own process group, same session), as a crash would kill them.
    members = session_members(worker.pid)
    assert len(members) >= 2, members
    for pid in members:
        os.kill(pid, signal.SIGKILL)
    worker.wait()
    assert queue.status("4")["active_job"] == first
    wait_for(lambda: queue.status("4")["cycle"]["status"] == "interrupted", "status 'interrupted'",
             workers, 30)
    workers.start()  # the next worker re-queues it at start (or at its first maintenance after that)
    wait_for(lambda: queue.status("4")["cycle"].get("status") == "finished", "the re-run to finish", workers)
    history = ProjectState(redis_client, "4").cycles.history()
    assert [c["status"] for c in history] == ["finished", "killed"], history


# --- what a worker never runs ------------------------------------------------------------------------------
class Forged:
    """Unpickling this creates a file: a pickled job could run code in the worker."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def touch_marker(path: str) -> None:
    Path(path).touch()


def test_forged_jobs_run_nothing(env: dict[str, str], redis_client: redis.Redis, workers: Workers,
                                 tmp_path: Path) -> None:
    queue_name = env["REID_AL_QUEUE"]
    # A JSON job naming a function that is not the service's: refused.
    json_job = Queue(queue_name, connection=redis_client, serializer=SERIALIZER).enqueue(
        "test_recovery.touch_marker", str(tmp_path / "by-name"))
    # A pickled job (RQ's default serializer) whose arguments run code when unpickled: never unpickled.
    pickled = Queue(queue_name, connection=redis_client).enqueue(
        "ml_backend.jobs.embed_job", Forged(str(tmp_path / "by-pickle")), [])
    worker = workers.start("--burst")
    assert worker.wait(timeout=120) == 0, workers.tail()
    assert not (tmp_path / "by-name").exists(), workers.tail()
    assert not (tmp_path / "by-pickle").exists(), workers.tail()
    statuses = [redis_client.hget(f"rq:job:{j.id}", "status") for j in (json_job, pickled)]
    assert statuses == [b"failed", b"failed"], workers.tail()
    assert "not a reid-al job" in workers.tail()
