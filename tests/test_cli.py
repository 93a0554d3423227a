"""The `reid-al` CLI: help, status, simulate forwarding, and `serve` as a real process tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from ml_backend.cli import format_status, main
from ml_backend.embedded import free_port
from ml_backend.settings import SETTINGS_HELP
from ml_backend.state import ProjectState

REPO = Path(__file__).resolve().parents[1]


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "worker", "ingest", "sync", "status", "export", "report", "simulate"):
        assert command in out
    for variable, *_ in SETTINGS_HELP:
        assert variable in out
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "REID_AL_RETRAIN_EVERY" in capsys.readouterr().out


def test_readme_settings_table_lists_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("### Settings"):readme.index("### Failures and hostile clients")]
    missing = [variable for variable, *_ in SETTINGS_HELP if f"`{variable}`" not in table]
    assert missing == []


def test_unknown_command_and_missing_project_fail(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["sync"])
    assert info.value.code == 2 and "--project" in capsys.readouterr().err


def test_status_prints_projects(redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    state = ProjectState(redis_client, "12")
    state.touch()
    state.cycles.add_version("v0001-20260101T0000")
    state.cycles.record({"status": "finished", "duration_s": 2.5, "version": "v0001-20260101T0000"})
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "project 12: version v0001-20260101T0000" in out and "last cycle: finished in 2.5 s" in out
    assert main(["status", "--project", "12", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["projects"][0]["current_version"] == "v0001-20260101T0000"


def test_status_without_redis_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    assert main(["status"]) == 2
    assert "REDIS_URL" in capsys.readouterr().err


def test_bad_setting_is_reported(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PORT", "many")
    assert main(["status"]) == 2
    assert "PORT" in capsys.readouterr().err


def test_format_status_empty() -> None:
    assert "no project" in format_status({"queue": "q", "queue_depth": 0, "projects": []})


def test_simulate_forwards_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower() and "reid-al serve" not in out


@pytest.mark.integration
def test_serve_runs_redis_worker_and_web_server_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"MODEL_DIR": str(tmp_path / "model"), "PORT": str(port), "HOST": "127.0.0.1",
                "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p", "WORKERS": "1", "THREADS": "2",
                "REID_AL_RETRAIN_EVERY": "100", "LOG_LEVEL": "WARNING"})
    proc = subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "serve"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if requests.get(f"{base}/health", timeout=1).json()["status"] == "UP":
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "reid-al serve did not answer /health"
            time.sleep(0.3)
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 1},
                 "annotation": {"id": 1, "was_cancelled": False, "result": [
                     {"from_name": "answer", "to_name": "image_a", "type": "choices",
                      "value": {"choices": ["different"]}}]},
                 "task": {"id": 1, "data": {"id_a": "x", "id_b": "y"}}}
        assert requests.post(f"{base}/webhook", json=event, timeout=5).status_code == 401
        answer = requests.post(f"{base}/webhook", json=event, auth=("u", "p"), timeout=5)
        assert answer.status_code == 200 and answer.json()["outcome"] == "created"
        url = (tmp_path / "model" / "redis" / "redis.url").read_text().strip()
        client = redis.Redis.from_url(url)
        assert ProjectState(client, "1").annotations.all()[0]["answer"] == "different"
        deadline = time.monotonic() + 60
        while not client.smembers("rq:workers") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(client.smembers("rq:workers")) == 1  # the RQ worker process registered itself
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = proc.stdout.read() if proc.stdout else ""
    assert code == 0, output
    assert "reid-al: stopped" in output
    assert not (tmp_path / "model" / "redis" / "redis.url").exists()
    assert (tmp_path / "model" / "redis" / "appendonlydir").exists() or any(
        p.name.startswith("appendonly") for p in (tmp_path / "model" / "redis").iterdir())
    with pytest.raises(requests.RequestException):
        requests.get(f"{base}/health", timeout=1)
