"""The stopping rule in the backend: judged answers kept in Redis, pushes paused, status and metrics."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import redis

from ml_backend.app import create_app
from ml_backend.cli import main
from ml_backend.pool import Pool, PoolItem
from ml_backend.queue import CycleQueue
from ml_backend.settings import Settings, SettingsError
from ml_backend.state import ProjectState
from ml_backend.status import format_status
from ml_backend.stopping import INFERRED_KEY, project_stopping
from tests.test_push import LabelStudioDouble
from trainer.store import EmbeddingStore

ROWS = {f"im{k}": k for k in range(6)}


def _record(state: ProjectState, ann: int, a: str, b: str, answer: str, ts: float) -> None:
    state.annotations.record(ann, task_id=None, image_a=a, image_b=b, answer=answer, updated_at=ts)


def test_answers_are_judged_against_the_identities_of_their_time(redis_client: redis.Redis) -> None:
    settings = Settings(stop_window=1, stop_patience=1, stop_threshold=0.5)
    state = ProjectState(redis_client, "4")
    _record(state, 1, "im0", "im1", "same", 1_700_000_000)
    _record(state, 2, "im2", "im3", "different", 1_700_000_001)
    together = np.array([0, 1, 2, 2, 3, 4])  # the assignment in service had im2 and im3 together
    first = project_stopping(settings, state, ROWS.get, together)
    assert (first.answers, first.label_changing) == (2, 2) and not first.reached
    # a later cycle with other identities keeps the judgement of each answer's own time
    _record(state, 3, "im4", "im5", "different", 1_700_000_002)
    _record(state, 4, "im0", "im1", "same", 1_700_000_003)  # already implied
    second = project_stopping(settings, state, ROWS.get, np.arange(6))
    assert second.answers == 4 and second.label_changing == 2
    assert second.reached  # window 1, patience 1: the last answer changed nothing
    assert set(redis_client.hkeys(state.key(INFERRED_KEY))) == {b"1", b"2", b"3", b"4"}
    # a changed answer is judged again; a deleted one is forgotten
    state.annotations.remove(3)
    _record(state, 2, "im2", "im3", "same", 1_700_000_005)
    third = project_stopping(settings, state, ROWS.get, np.arange(6))
    assert third.answers == 3 and third.label_changing == 2
    assert set(redis_client.hkeys(state.key(INFERRED_KEY))) == {b"1", b"2", b"4"}
    # answers about images outside the store are left out; no version yet: nothing inferred
    _record(state, 5, "im0", "elsewhere", "same", 1_700_000_006)
    assert project_stopping(settings, state, ROWS.get, None).answers == 3


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REID_AL_STOP_THRESHOLD": "1.5"}, "REID_AL_STOP_THRESHOLD"),
        ({"REID_AL_STOP_THRESHOLD": "0"}, "REID_AL_STOP_THRESHOLD"),
        ({"REID_AL_STOP_PATIENCE": "0"}, "REID_AL_STOP_PATIENCE"),
        ({"REID_AL_STOP_WINDOW": "x"}, "REID_AL_STOP_WINDOW"),
        ({"REID_AL_KEEP_PUSHING": "2"}, "REID_AL_KEEP_PUSHING"),
    ],
)
def test_bad_stopping_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable


def _pool(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 16))
    feats = np.repeat(centres, 5, axis=0) + 0.3 * rng.normal(size=(30, 16))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"im{k:02d}" for k in range(30)]
    EmbeddingStore(tmp_path / "3" / "features").append(ids, feats, encoder="synthetic")
    Pool([PoolItem(id=i, path=f"/imgs/{i}.jpg", url=f"/data/local-files/?d={i}.jpg") for i in ids]).save(
        tmp_path, "3"
    )
    return ids


@pytest.mark.parametrize("keep_pushing", [0, 1])
def test_reached_rule_stops_new_pairs_unless_told_to_keep_pushing(
    redis_client: redis.Redis, tmp_path: Path, keep_pushing: int, caplog: pytest.LogCaptureFixture
) -> None:
    from ml_backend.jobs import run_project_cycle

    ids = _pool(tmp_path)
    state = ProjectState(redis_client, "3")
    state.set_meta(from_name="answer", to_name="image_a")
    _record(state, 1, ids[0], ids[1], "same", 1_700_000_000)
    _record(state, 2, ids[1], ids[2], "same", 1_700_000_001)
    _record(state, 3, ids[0], ids[2], "same", 1_700_000_002)  # implied: the rule (window 1) is reached
    settings = Settings(
        model_dir=tmp_path,
        budget=6,
        strategy="random",
        torch_threads=1,
        stop_window=1,
        stop_patience=1,
        stop_threshold=0.5,
        keep_pushing=keep_pushing,
    )
    client = LabelStudioDouble()
    with caplog.at_level("INFO", logger="ml_backend.jobs"):
        summary = run_project_cycle(settings, redis_client, "3", client=client)
    stop = summary["stopping"]
    assert stop["reached"] and stop["answers"] == 3 and stop["label_changing"] == 2
    assert "stopping rule reached" in caplog.text
    if keep_pushing:
        assert stop["pushing"] and stop["held_back"] == 0 and summary["push"]["created"] > 0
    else:
        assert not stop["pushing"] and stop["held_back"] == summary["proposals"] > 0
        assert summary["push"]["created"] == 0 and client.tasks == {}
        assert "not pushed" in caplog.text

    # an answer that merges two identities: the rule is no longer reached and pairs flow again
    _record(state, 4, ids[10], ids[20], "same", 1_700_000_003)
    again = run_project_cycle(settings, redis_client, "3", client=client)
    assert not again["stopping"]["reached"] and again["stopping"]["pushing"]
    assert again["push"]["created"] > 0


STOP = {
    "answers": 90,
    "label_changing": 12,
    "rate": 0.001,
    "p_any_change": 0.07,
    "reached": True,
    "window": 20,
    "patience": 72,
    "threshold": 0.1,
    "pushing": False,
    "held_back": 50,
}
AUTH = {"Authorization": "Basic " + base64.b64encode(b"ann:secret").decode()}


def test_status_and_metrics_show_the_stopping_rule(
    redis_client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = ProjectState(redis_client, "12")
    state.touch()
    state.cycles.record(
        {"status": "finished", "duration_s": 1.0, "version": "v0001-20260101T0000", "stopping": STOP}
    )
    state.cycles.record({"status": "failed", "duration_s": 1.0, "error": "boom"})  # the newest records none
    settings = Settings(model_dir=tmp_path, basic_auth_user="ann", basic_auth_pass="secret")
    status = CycleQueue.for_settings(redis_client, settings).status("12")
    assert status["stopping"] == STOP
    text = format_status({"queue": "q", "queue_depth": 0, "projects": [status]})
    assert "P(any of the next 72 answers changes the identities) = 0.070" in text
    assert "12 of 90 answers" in text and "REACHED: new pairs are no longer pushed" in text

    app = create_app(settings, redis=redis_client)
    app.testing = True
    http = app.test_client()
    assert http.get("/status?project=12", headers=AUTH).json["stopping"]["reached"] is True
    metrics = http.get("/metrics", headers=AUTH).get_data(as_text=True)
    assert 'reid_al_stop_p_any_change{project="12"} 0.07' in metrics
    assert 'reid_al_stop_reached{project="12"} 1' in metrics
    assert 'reid_al_new_pairs_paused{project="12"} 1' in metrics
    assert 'reid_al_answers_label_changing{project="12"} 12' in metrics

    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["status", "--project", "12"]) == 0
    assert "stopping rule" in capsys.readouterr().out
