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

from ml_backend.cli import main
from ml_backend.embedded import free_port
from ml_backend.pool import UnreadableImages
from ml_backend.settings import SETTINGS_HELP
from ml_backend.state import ProjectState
from ml_backend.state.cycles import push_outcome
from ml_backend.status import format_status

REPO = Path(__file__).resolve().parents[1]


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "worker", "connect", "ingest", "sync", "status", "export", "report", "simulate"):
        assert command in out
    for variable, *_ in SETTINGS_HELP:
        assert variable in out
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "REID_AL_RETRAIN_EVERY" in capsys.readouterr().out


def test_readme_settings_table_lists_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("### Settings") : readme.index("### Failures and hostile clients")]
    missing = [variable for variable, *_ in SETTINGS_HELP if f"`{variable}`" not in table]
    assert missing == []


def test_unknown_command_and_missing_project_fail(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["sync"])
    assert info.value.code == 2 and "--project" in capsys.readouterr().err


def test_status_prints_projects(
    redis_client: redis.Redis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
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


def test_status_shows_pushes_against_budget_refused_events_pending_answers_and_unreadable_images(
    redis_client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("REID_AL_RETRAIN_EVERY", "20")
    state = ProjectState(redis_client, "14")
    push = {"created": 4, "existing": 1, "implied_proposals": 1, "unservable": 2}
    summary = {
        "status": "finished",
        "duration_s": 3.0,
        "version": "v0002",
        "strategy": "hybrid",
        "budget": 10,
        "proposals": 8,
        "shortfall": 2,
        "sampler_exhausted": False,
        "sampler_pools": {"match": 5},
        "push": push,
    }
    state.cycles.record(summary)
    state.cycles.record({"status": "failed", "duration_s": 1.0, "error": "RuntimeError: boom"})  # newest
    state.pending.add(3)
    state.incr("webhook_rejected:401", 5)
    state.incr("webhook_rejected:422")
    UnreadableImages(tmp_path, "14").record([("id03/bad.png", "/x/id03/bad.png", "UnidentifiedImageError")])
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "answers pending until the next cycle: 3 (a cycle starts at 20" in out
    # the last finished cycle's push, although the newest cycle failed; the reasons add up to 10 - 4
    assert (
        "pushed 4 of 10 pairs (REID_AL_BUDGET): 2 not proposed: hybrid proposed 8 pair(s) (candidates: "
        "match 5); 1 implied by answers given while the cycle ran; 1 already open as tasks; 2 an image has "
        "no URL Label Studio can show" in out
    )
    assert "webhook events not recorded: 5 unauthorised (401" in out and "1 refused (422)" in out
    assert "1 unreadable image(s) left out of the pool: id03/bad.png (UnidentifiedImageError)" in out
    assert main(["status", "--project", "14", "--json"]) == 0
    project = json.loads(capsys.readouterr().out)["projects"][0]
    assert project["last_push"] == {
        "budget": 10,
        "pushed": 4,
        "shortfall": 6,
        "reasons": project["last_push"]["reasons"],
    }
    assert len(project["last_push"]["reasons"]) == 4
    assert project["webhook_rejected"] == {"401": 5, "422": 1}
    assert project["unreadable_images"]["count"] == 1 and project["pending_constraints"] == 3


def test_push_outcome_of_a_full_push_an_exhausted_pool_and_no_token() -> None:
    full = {"status": "finished", "budget": 5, "proposals": 5, "shortfall": 0, "push": {"created": 5}}
    assert push_outcome(full) == {"budget": 5, "pushed": 5, "shortfall": 0, "reasons": []}
    exhausted = {
        "status": "finished",
        "budget": 5,
        "proposals": 0,
        "shortfall": 5,
        "sampler_exhausted": True,
        "push": {"created": 0},
    }
    assert push_outcome(exhausted)["reasons"] == [
        "5 not proposed: the pool is exhausted: every pair is answered, implied or asked"
    ]
    stopped = {
        "status": "finished",
        "budget": 5,
        "proposals": 4,
        "shortfall": 1,
        "push": {"created": 0},
        "stopping": {"reached": True, "pushing": False},
        "strategy": "hybrid",
    }
    assert push_outcome(stopped)["reasons"] == [
        "1 not proposed: hybrid proposed 4 pair(s)",
        "4 withheld: the stopping rule is reached (REID_AL_KEEP_PUSHING=1 pushes them anyway)",
    ]
    no_token = {"status": "finished", "budget": 5, "push": None}
    assert push_outcome(no_token)["reasons"] == ["nothing pushed: LABEL_STUDIO_API_KEY is not set"]
    assert push_outcome({"status": "failed"}) is None and push_outcome(None) is None


def test_connect_needs_the_label_studio_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    assert main(["connect", "--project", "3"]) == 2
    assert "LABEL_STUDIO_API_KEY" in capsys.readouterr().err


def test_connect_names_an_unreachable_label_studio(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k")
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    assert main(["connect", "--project", "3", "--url", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "reid-al connect: reading project 3 failed: Label Studio is not reachable" in err


def test_connect_refuses_a_bad_backend_url_before_any_request(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k")
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    assert main(["connect", "--project", "3", "--url", "localhost:9090"]) == 2
    assert "url: the backend's URL" in capsys.readouterr().err


def test_status_without_redis_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
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
    env.update(
        {
            "MODEL_DIR": str(tmp_path / "model"),
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "BASIC_AUTH_USER": "u",
            "BASIC_AUTH_PASS": "p",
            "WORKERS": "1",
            "THREADS": "2",
            "REID_AL_RETRAIN_EVERY": "100",
            "LOG_LEVEL": "WARNING",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ml_backend.cli", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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
        event = {
            "action": "ANNOTATION_CREATED",
            "project": {"id": 1},
            "annotation": {
                "id": 1,
                "was_cancelled": False,
                "result": [
                    {
                        "from_name": "answer",
                        "to_name": "image_a",
                        "type": "choices",
                        "value": {"choices": ["different"]},
                    }
                ],
            },
            "task": {"id": 1, "data": {"id_a": "x", "id_b": "y"}},
        }
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
        p.name.startswith("appendonly") for p in (tmp_path / "model" / "redis").iterdir()
    )
    with pytest.raises(requests.RequestException):
        requests.get(f"{base}/health", timeout=1)
