"""`reid-al serve` as a user runs it, under faults and hostile clients:

- its RQ worker and its redis-server killed with -9 under webhook load: every acknowledged answer is kept,
  the web server never stops answering (503 only while Redis is down), both come back by themselves
  within 10 s, and /health and `reid-al status` say so;
- a few dozen clients sending their headers a byte at a time do not starve /health or /webhook;
- no secret (basic-auth password, Label Studio token, Redis password) reaches any log, malformed
  Authorization headers included;
- files under MODEL_DIR are private (umask 077); binding beyond loopback with auth off is warned about.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from ml_backend.embedded import free_port, read_url_file
from ml_backend.serve import exposure_warning
from ml_backend.settings import Settings
from ml_backend.state import ProjectState

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "pw-Secret-4242"
API_KEY = "0123456789abcdef0123456789abcdef01234567"
BACK_WITHIN_S = 10.0


class Serve:
    """`reid-al serve` in a process of its own; output to a log file."""

    def __init__(self, tmp_path: Path, *args: str, **env: str) -> None:
        self.model_dir = tmp_path / "model"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BASIC_AUTH_USER",
                                                                     "BASIC_AUTH_PASS")}
        self.env.update({"MODEL_DIR": str(self.model_dir), "PORT": str(self.port), "HOST": "127.0.0.1",
                         "REID_AL_RETRAIN_EVERY": "1000000", "LOG_LEVEL": "INFO", "LABEL_STUDIO_API_KEY": "",
                         **env})
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "serve", *args],
                                            cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if requests.get(f"{self.base}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"serve did not come up:\n{self.log.read_text()}"
            time.sleep(0.2)

    def children(self) -> dict[str, Any]:
        return json.loads((self.model_dir / "serve.json").read_text())["children"]

    def redis(self) -> redis.Redis:
        url = read_url_file(self.model_dir / "redis")
        assert url
        return redis.Redis.from_url(url)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


@pytest.fixture()
def serves() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.stop()


def event(ann_id: int, project: int = 5) -> bytes:
    return json.dumps({
        "action": "ANNOTATION_CREATED", "project": {"id": project, "token": "not-ours"},
        "annotation": {"id": ann_id, "was_cancelled": False, "updated_at": "2026-01-01T00:00:00Z",
                       "result": [{"from_name": "answer", "to_name": "image_a", "type": "choices",
                                   "value": {"choices": ["same" if ann_id % 2 else "different"]}}]},
        "task": {"id": 100_000 + ann_id, "data": {"id_a": f"i{ann_id}", "id_b": f"j{ann_id}"}}}).encode()


def post(port: int, body: bytes, headers: str = "", timeout: float = 5.0) -> int:
    """One POST /webhook on a fresh connection (as Label Studio sends them); 0 when no HTTP answer came."""
    request = (f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            head = sock.recv(64)
            return int(head.split()[1]) if head.startswith(b"HTTP/") else 0
    except OSError:
        return 0


class Load:
    """Webhook events at about ``rate``/s from a few threads; (annotation id, status, time) per event."""

    def __init__(self, port: int, rate: float = 60.0, senders: int = 6) -> None:
        self.port, self.rate, self.senders = port, rate, senders
        self.results: list[tuple[int, int, float]] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.next_id = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(senders)]

    def _run(self) -> None:
        while not self.stop_event.is_set():
            with self.lock:
                self.next_id += 1
                ann_id = self.next_id
            status = post(self.port, event(ann_id))
            with self.lock:
                self.results.append((ann_id, status, time.monotonic()))
            time.sleep(self.senders / self.rate)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)


def wait_until(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            return float("inf")
        time.sleep(0.05)
    return time.monotonic() - start


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_killed_worker_and_redis_come_back_under_load_and_no_acknowledged_answer_is_lost(
        tmp_path: Path, serves: list[Serve]) -> None:
    serve = Serve(tmp_path)
    serves.append(serve)
    port = serve.port
    with Load(port) as load:
        time.sleep(3)
        worker_pid = serve.children()["rq worker 0"]["pid"]
        os.kill(worker_pid, signal.SIGKILL)
        worker_back = wait_until(lambda: serve.children()["rq worker 0"]["restarts"] == 1
                                 and serve.children()["rq worker 0"]["state"] == "up", 30)
        time.sleep(2)
        redis_pid = serve.children()["redis-server"]["pid"]
        os.kill(redis_pid, signal.SIGKILL)
        killed = time.monotonic()
        redis_back = wait_until(lambda: any(s == 200 and t > killed for _, s, t in list(load.results)), 30)
        time.sleep(3)
    results = load.results
    print(f"\nfault test: {len(results)} events at ~{load.rate:g}/s; worker back in {worker_back:.2f} s, "
          f"webhooks answered 200 again {redis_back:.2f} s after redis-server was killed; statuses "
          f"{ {s: sum(1 for _, x, _ in results if x == s) for s in {x for _, x, _ in results}} }")
    assert worker_back < BACK_WITHIN_S, serve.log.read_text()[-3000:]
    assert redis_back < BACK_WITHIN_S, serve.log.read_text()[-3000:]
    statuses = {s for _, s, _ in results}
    assert statuses <= {200, 503}, f"answers other than 200/503 (0 = no answer): {statuses}"
    assert all(s == 200 for _, s, t in results if t < killed), "webhooks failed while Redis was up"
    assert all(s == 200 for _, s, t in results if t > killed + redis_back + 1.0), "did not stay back"
    acknowledged = {ann_id for ann_id, s, _ in results if s == 200}
    stored = {int(r["annotation_id"]) for r in ProjectState(serve.redis(), "5").annotations.all()}
    assert acknowledged - stored == set(), f"{len(acknowledged - stored)} acknowledged answers lost"
    children = serve.children()
    assert children["redis-server"]["restarts"] == 1 and children["redis-server"]["state"] == "up"
    health = requests.get(f"{serve.base}/health", timeout=2).json()
    assert health["status"] == "UP" and set(health["components"].values()) == {"up"}
    status = subprocess.run([sys.executable, "-m", "ml_backend.cli", "status"], cwd=REPO, env=serve.env,
                            capture_output=True, text=True, timeout=60)
    assert "redis-server: up" in status.stdout and "restarted 1 time(s)" in status.stdout, status
    assert serve.stop() == 0


def test_health_and_status_say_when_redis_is_down(tmp_path: Path, serves: list[Serve]) -> None:
    serve = Serve(tmp_path, "--no-worker")
    serves.append(serve)
    redis_pid = serve.children()["redis-server"]["pid"]
    serve.process.send_signal(signal.SIGSTOP)  # hold the supervisor so the outage lasts
    try:
        os.kill(redis_pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(redis_pid) or Path(f"/proc/{redis_pid}/stat").read_text().split()[2]
                   == "Z", 5)
        health = requests.get(f"{serve.base}/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "DOWN"
        assert "redis" in health.json()["error"]
        assert post(serve.port, event(1)) == 503
        status = subprocess.run([sys.executable, "-m", "ml_backend.cli", "status"], cwd=REPO, env=serve.env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 1 and "redis: down" in status.stdout, status
    finally:
        serve.process.send_signal(signal.SIGCONT)
    assert wait_until(lambda: post(serve.port, event(2)) == 200, BACK_WITHIN_S) < BACK_WITHIN_S


def slow_client(port: int, stop: threading.Event, opened: list[int]) -> None:
    """Open a connection and send a request's headers one byte every 0.5 s, for as long as allowed."""
    request = (b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               + b"X-Pad: y\r\n" * 500)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            opened.append(1)
            for byte in request:
                if stop.wait(0.5):
                    return
                sock.sendall(bytes([byte]))
    except OSError:
        return


def test_slow_clients_do_not_starve_the_server(tmp_path: Path, serves: list[Serve]) -> None:
    serve = Serve(tmp_path, "--no-worker", THREADS="8")
    serves.append(serve)
    stop = threading.Event()
    opened: list[int] = []
    n_slow = 64
    clients = [threading.Thread(target=slow_client, args=(serve.port, stop, opened), daemon=True)
               for _ in range(n_slow)]
    for thread in clients:
        thread.start()
    try:
        assert wait_until(lambda: len(opened) == n_slow, 10) < 10
        time.sleep(1.0)
        health, hooks = [], []
        end = time.monotonic() + 8
        k = 0
        while time.monotonic() < end:
            k += 1
            start = time.monotonic()
            assert requests.get(f"{serve.base}/health", timeout=5).status_code == 200
            health.append(time.monotonic() - start)
            start = time.monotonic()
            assert post(serve.port, event(k)) == 200
            hooks.append(time.monotonic() - start)
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=5)
    print(f"\nslow clients: {n_slow} connections sending headers at 2 bytes/s; {len(health)} /health and "
          f"{len(hooks)} /webhook calls meanwhile, slowest {max(health) * 1000:.0f} ms and "
          f"{max(hooks) * 1000:.0f} ms")
    assert max(health) < 1.0 and max(hooks) < 1.0  # Label Studio's webhook timeout


def test_no_secret_reaches_any_log(tmp_path: Path, serves: list[Serve]) -> None:
    serve = Serve(tmp_path, BASIC_AUTH_USER="annotator", BASIC_AUTH_PASS=PASSWORD,
                  LABEL_STUDIO_API_KEY=API_KEY, LOG_LEVEL="DEBUG")
    serves.append(serve)
    redis_password = serve.redis().connection_pool.connection_kwargs["password"]
    b64 = base64.b64encode
    malformed = [b"Basic " + b64(PASSWORD.encode()),  # no colon: gunicorn's %(u)s would be the password
                 b"Basic " + b64(f"{PASSWORD}:x".encode()),
                 b"Basic " + b64(f"annotator:{PASSWORD}x".encode()),
                 b"Basic " + PASSWORD.encode(), f"Bearer {PASSWORD}".encode(), f"Token {API_KEY}".encode(),
                 b"Basic " + b64(f"annotator:{PASSWORD}".encode())]
    for header in malformed:
        status = post(serve.port, event(1), headers=f"Authorization: {header.decode()}\r\n")
        assert status in (200, 401)
    assert serve.stop() == 0
    logs = {"serve output": serve.log.read_bytes()}
    for path in (serve.model_dir / "redis").glob("*.log"):
        logs[path.name] = path.read_bytes()
    for name, text in logs.items():
        for secret in (PASSWORD, API_KEY, redis_password, b64(PASSWORD.encode()).decode()):
            assert secret.encode() not in text, f"a secret is in the {name}"
    assert b"POST /webhook" in logs["serve output"]  # the access log is there, without the secrets


def test_model_dir_files_are_private(tmp_path: Path, serves: list[Serve]) -> None:
    serve = Serve(tmp_path, "--no-worker")
    serves.append(serve)
    assert post(serve.port, event(1)) == 200
    assert serve.stop() == 0
    exposed = [str(p) for p in serve.model_dir.rglob("*") if p.stat().st_mode & 0o077]
    assert exposed == [], exposed
    assert serve.model_dir.stat().st_mode & 0o077 == 0


def test_binding_beyond_loopback_without_auth_is_warned_about(tmp_path: Path, serves: list[Serve]) -> None:
    assert exposure_warning(Settings(host="0.0.0.0")) is not None
    assert exposure_warning(Settings(host="127.0.0.1")) is None
    assert exposure_warning(Settings(host="0.0.0.0", basic_auth_user="u", basic_auth_pass="p")) is None
    serve = Serve(tmp_path, "--no-worker", HOST="0.0.0.0")
    serves.append(serve)
    serve.stop()
    assert "WARNING: listening on 0.0.0.0" in serve.log.read_text()


def test_a_chunked_body_over_the_limit_is_a_413_through_the_server(tmp_path: Path,
                                                                   serves: list[Serve]) -> None:
    serve = Serve(tmp_path, "--no-worker", REID_AL_MAX_BODY_BYTES="4096")
    serves.append(serve)
    body = b'{"action": "PROJECT_UPDATED", "pad": "' + b"x" * 20_000 + b'"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                      for i in range(0, len(body), 1000)) + b"0\r\n\r\n"
    request = (b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks)
    with socket.create_connection(("127.0.0.1", serve.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"REID_AL_MAX_BODY_BYTES" in answer
