"""`reid-al serve`'s shutdown path with a real redis-server and a real RQ worker process.

Why real processes: the defect was about process topology (RQ's work-horse calls os.setpgrp, so a
process-group SIGTERM misses it and a SIGKILL of the worker orphans it); only a real worker running a
real job shows whether anything outlives the shutdown.
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

import pytest
import redis
from rq import Queue

from ml_backend.embedded import (
    EmbeddedRedis,
    python_module_command,
    start_process,
    stop_process,
    stop_rq_worker,
)
from ml_backend.queue import SERIALIZER

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def sleeping_job(pid_dir: str, seconds: float = 120.0) -> None:
    """Run in the RQ work-horse: record its pid and a grandchild's (like a DataLoader worker), then sleep."""
    grandchild = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    Path(pid_dir, "grandchild.pid").write_text(str(grandchild.pid))
    Path(pid_dir, "horse.pid").write_text(str(os.getpid()))
    time.sleep(seconds)


def alive(pid: int) -> bool:
    """True while `pid` is a live process (a zombie awaiting its reaper counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def wait_for_file(path: Path, worker: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().strip()):
        if worker.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the job never started ({path.name}); worker log:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    return int(path.read_text())


@pytest.fixture()
def busy_worker(tmp_path: Path, redis_url: str,
                redis_client: redis.Redis) -> Iterator[tuple[subprocess.Popen[bytes], list[int], Path]]:
    """A `reid-al worker` started as `serve` starts it, busy with `sleeping_job`.

    Yields (worker, [horse pid, grandchild pid], worker log)."""
    queue_name = f"emb-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "REDIS_URL": redis_url, "REID_AL_QUEUE": queue_name,
           "MODEL_DIR": str(tmp_path / "m"), "LABEL_STUDIO_API_KEY": "", "LOG_LEVEL": "INFO",
           "REID_AL_EXTRA_JOBS": "test_embedded.sleeping_job",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    log = tmp_path / "worker.log"
    with open(log, "wb") as output:
        worker = start_process(python_module_command("ml_backend.cli", "worker"), env=env, cwd=REPO,
                               output=output)
    pids: list[int] = []
    try:
        Queue(queue_name, connection=redis_client, serializer=SERIALIZER).enqueue(
            "test_embedded.sleeping_job", str(tmp_path), job_timeout=600)
        pids = [wait_for_file(tmp_path / "horse.pid", worker, log),
                wait_for_file(tmp_path / "grandchild.pid", worker, log)]
        assert worker.pid not in pids
        yield worker, pids, log
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        for pid in pids:  # never leave a sleeper behind, whatever the test did
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_stop_rq_worker_kills_the_work_horse_running_a_job(
        busy_worker: tuple[subprocess.Popen[bytes], list[int], Path]) -> None:
    worker, pids, log = busy_worker
    start = time.monotonic()
    stop_rq_worker(worker, timeout=5)
    took = time.monotonic() - start
    assert worker.poll() is not None
    deadline = time.monotonic() + 3.0
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in pids if alive(pid)]
    assert not survivors, f"{survivors} of {pids} (horse, grandchild) outlived the worker:\n{log.read_text()}"
    assert took < 10.0  # bounded: the 120 s job was not waited for


def test_stop_process_reaps_what_a_worker_leaves_in_its_session(
        busy_worker: tuple[subprocess.Popen[bytes], list[int], Path]) -> None:
    """Even the generic stop (SIGTERM = RQ's warm shutdown, then SIGKILL) leaves no orphan behind."""
    worker, pids, _log = busy_worker
    start = time.monotonic()
    stop_process(worker, timeout=2)
    assert time.monotonic() - start < 10.0
    assert [pid for pid in pids if alive(pid)] == []


def test_embedded_redis_runs_in_its_own_session(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the foreground group only: Redis must outlive it until `serve` stops it."""
    with EmbeddedRedis(tmp_path / "redis", appendonly=False) as server:
        assert server.process is not None
        assert os.getsid(server.process.pid) == server.process.pid
        assert os.getsid(server.process.pid) != os.getsid(0)


def test_serve_sigterm_leaves_no_process_of_a_running_job(tmp_path: Path) -> None:
    """`reid-al serve` (embedded Redis + RQ worker + web) stopped mid-job: the job's processes die with it."""
    from ml_backend.embedded import free_port

    model_dir = tmp_path / "model"
    queue_name = f"serve-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"MODEL_DIR": str(model_dir), "PORT": str(free_port()), "HOST": "127.0.0.1",
                "REID_AL_QUEUE": queue_name, "LOG_LEVEL": "INFO", "LABEL_STUDIO_API_KEY": "",
                "REID_AL_EXTRA_JOBS": "test_embedded.sleeping_job",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))})
    log = tmp_path / "serve.log"
    pids: list[int] = []
    with open(log, "wb") as output:
        serve = subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "serve", "--dev-server"], cwd=REPO,
                                 env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        url_file = model_dir / "redis" / "redis.url"
        deadline = time.monotonic() + 60
        while not (url_file.is_file() and url_file.read_text().strip()):
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        client = redis.Redis.from_url(url_file.read_text().strip())
        Queue(queue_name, connection=client, serializer=SERIALIZER).enqueue(
            "test_embedded.sleeping_job", str(tmp_path), job_timeout=600)
        client.close()
        pids = [wait_for_file(tmp_path / "horse.pid", serve, log),
                wait_for_file(tmp_path / "grandchild.pid", serve, log)]
        start = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=40)
        took = time.monotonic() - start
        deadline = time.monotonic() + 3.0
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [pid for pid in pids if alive(pid)]
        assert not survivors, f"{survivors} of {pids} outlived reid-al serve:\n{log.read_text()[-4000:]}"
        assert code == 0 and "reid-al: stopped" in log.read_text()
        assert took < 15.0, f"serve took {took:.1f} s to stop"  # not the old 15 s SIGKILL timeout
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_embedded_redis_needs_a_password_kept_off_the_command_line(tmp_path: Path) -> None:
    """Any local user can reach 127.0.0.1; only who can read MODEL_DIR/redis (0700) can use the server."""
    with EmbeddedRedis(tmp_path / "redis", appendonly=False) as server:
        assert server.process is not None and server.port is not None
        with pytest.raises(redis.exceptions.RedisError, match=r"(?i)auth"):
            redis.Redis(host="127.0.0.1", port=server.port).ping()
        assert redis.Redis.from_url(server.url).ping()
        assert server.password.encode() not in Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert (tmp_path / "redis").stat().st_mode & 0o777 == 0o700
        for name in ("redis.conf", "redis.url"):
            assert (tmp_path / "redis" / name).stat().st_mode & 0o777 == 0o600, name
