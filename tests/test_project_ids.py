"""Project ids from clients: ASCII digits only, bounded, and a call that records nothing registers nothing.

A project id names Redis keys, MODEL_DIR folders and /metrics labels, and the cycle converts it with int().
One id that ``str.isdigit`` accepts but int() does not ("²") used to break /metrics and /status for good.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from ml_backend.app import create_app
from ml_backend.errors import InputError
from ml_backend.predict import Predictor
from ml_backend.settings import Settings
from ml_backend.state import GLOBAL_COUNTERS_KEY, PROJECTS_KEY, ProjectState, list_projects, project_key
from ml_backend.state.base import UNREGISTERED_META_TTL
from ml_backend.status import format_status
from ml_backend.webhook import project_id_of

LABEL_CONFIG = (Path(__file__).resolve().parents[1] / "label_config.xml").read_text()
MONITORING = ("/metrics", "/status", "/jobs", "/versions", "/status?project=3")


@pytest.fixture()
def http(redis_client: redis.Redis, tmp_path: Path) -> FlaskClient:
    settings = Settings(model_dir=tmp_path / "models", retrain_every=100)
    app = create_app(settings, redis=redis_client, predictor=Predictor(settings, load_model=lambda _s: None))
    return app.test_client()


def project_keys(client: redis.Redis) -> list[bytes]:
    """Every key but the global counters (where rejected and unregistered calls are counted)."""
    return sorted(k for k in client.keys("*") if k != GLOBAL_COUNTERS_KEY.encode())


def annotation(project: Any) -> dict[str, Any]:
    return {"action": "ANNOTATION_CREATED", "project": project,
            "annotation": {"id": 1, "result": [{"type": "choices", "value": {"choices": ["same"]}}]},
            "task": {"id": 2, "data": {"id_a": "a", "id_b": "b"}}}


def monitoring_works(http: FlaskClient) -> None:
    for path in MONITORING:
        response = http.get(path)
        assert response.status_code == 200, (path, response.data[:300])


@pytest.mark.parametrize("bad", ["\u00b2", "\u2460", "\u0663", "12\u00b2", "x1", "-1", "1e3", " ", "٣٤"])
def test_project_key_accepts_ascii_digits_only(bad: str) -> None:
    with pytest.raises(InputError) as info:
        project_key(bad)
    assert info.value.field == "project" and info.value.status == 422


def test_project_key_normalises_and_bounds() -> None:
    assert project_key("007") == "7" and project_key(12) == "12" and project_key(" 5 ") == "5"
    assert project_id_of("5.1700000000") == "5" and project_id_of({"id": 9}) == "9"
    for bad in ("9" * 19, 10**18, -1, "1" * 5000, 10**4000):
        with pytest.raises(InputError) as info:
            project_id_of(bad)
        assert len(str(info.value)) < 200  # a junk id is not echoed whole


@pytest.mark.parametrize("project", ["\u00b2", "\u2460", "1" * 5000, "\u00b2.1700000000"])
def test_setup_with_a_non_ascii_digit_project_is_refused_and_monitoring_keeps_working(
        http: FlaskClient, redis_client: redis.Redis, project: str) -> None:
    response = http.post("/setup", json={"project": project, "schema": LABEL_CONFIG})
    assert response.status_code == 422 and response.json["field"] == "project"
    assert project_keys(redis_client) == []
    monitoring_works(http)


def test_start_training_with_a_circled_digit_is_a_422_not_a_500(http: FlaskClient,
                                                                 redis_client: redis.Redis) -> None:
    response = http.post("/webhook", json={"action": "START_TRAINING", "project": "\u2460"})
    assert response.status_code == 422 and response.json["field"] == "project"
    assert project_keys(redis_client) == []


def test_huge_integer_project_ids_are_refused(http: FlaskClient, redis_client: redis.Redis) -> None:
    body = '{"action": "ANNOTATION_CREATED", "project": {"id": ' + "9" * 4001 + "}}"
    response = http.post("/webhook", data=body, content_type="application/json")
    assert 400 <= response.status_code < 500
    response = http.post("/webhook", json=annotation({"id": 10**18}))
    assert response.status_code == 422 and response.json["field"] == "project.id"
    assert project_keys(redis_client) == []


def test_a_bad_member_of_the_project_set_does_not_break_monitoring(http: FlaskClient,
                                                                   redis_client: redis.Redis) -> None:
    redis_client.sadd(PROJECTS_KEY, "\u00b2", "3", "x" * 5000)
    assert list_projects(redis_client) == ["3"]
    monitoring_works(http)
    assert [p["project"] for p in http.get("/status").json["projects"]] == ["3"]


def test_setup_of_an_unknown_project_keeps_nothing_for_good(http: FlaskClient,
                                                           redis_client: redis.Redis) -> None:
    """Label Studio calls /setup when it connects, before anything is recorded: the label config's names
    are kept, for a day, and the project is not registered; recording something for it keeps them."""
    response = http.post("/setup", json={"project": "12.1700000000", "schema": LABEL_CONFIG})
    assert response.status_code == 200 and response.json == {"model_version": "initial"}
    assert redis_client.keys("*") == [b"reid-al:12:meta"]
    assert 0 < redis_client.ttl("reid-al:12:meta") <= UNREGISTERED_META_TTL
    assert http.get("/status").json["projects"] == [] and list_projects(redis_client) == []
    assert ProjectState(redis_client, "12").meta() == {"from_name": "answer", "to_name": "image_a"}
    assert http.post("/webhook", json=annotation({"id": 12})).status_code == 200
    assert redis_client.ttl("reid-al:12:meta") == -1  # registered: kept
    assert list_projects(redis_client) == ["12"]


def test_predict_and_ignored_events_of_unknown_projects_register_nothing(http: FlaskClient,
                                                                          redis_client: redis.Redis) -> None:
    tasks = [{"id": 1, "data": {"id_a": "a", "id_b": "b"}}]
    assert http.post("/predict", json={"project": "41.17", "tasks": tasks,
                                       "label_config": LABEL_CONFIG}).status_code == 200
    assert http.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 42}}).status_code == 200
    assert http.post("/webhook", json={"action": "NO_SUCH_EVENT", "project": {"id": 43}}).status_code == 200
    assert project_keys(redis_client) == [b"reid-al:41:meta"]  # the label config's names, for a day
    assert redis_client.ttl("reid-al:41:meta") > 0 and list_projects(redis_client) == []
    counters = {k.decode(): int(v) for k, v in redis_client.hgetall(GLOBAL_COUNTERS_KEY).items()}
    assert counters == {"predictions_served": 1, "events:PROJECT_UPDATED": 1, "events:unknown": 1}
    metrics = http.get("/metrics").data.decode()
    assert 'reid_al_unregistered_calls_total{what="predictions_served"} 1' in metrics
    assert 'reid_al_webhook_events_total{event="unknown",project=""} 1' in metrics


def test_start_training_of_an_unknown_project_is_a_404_that_registers_nothing(
        http: FlaskClient, redis_client: redis.Redis, tmp_path: Path) -> None:
    for path, body in (("/webhook", {"action": "START_TRAINING", "project": {"id": 77}}),
                       ("/train", {"project": 77, "annotations": []})):
        response = http.post(path, json=body)
        assert response.status_code == 404 and response.json["field"] == "project", response.json
    assert project_keys(redis_client) == []
    # A project with a pool under MODEL_DIR (Redis lost, say) may be trained.
    (tmp_path / "models" / "77").mkdir(parents=True)
    response = http.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 77}})
    assert response.status_code == 200 and response.json["cycle"] == "enqueued"


def test_rejected_requests_are_counted_and_shown(http: FlaskClient, redis_client: redis.Redis) -> None:
    assert http.post("/webhook", json=annotation({"id": "\u00b2"})).status_code == 422
    assert http.post("/webhook", data="{", content_type="application/json").status_code == 400
    assert http.post("/webhook", json={"action": "START_TRAINING", "project": 5}).status_code == 404
    assert http.get("/nowhere").status_code == 404
    metrics = http.get("/metrics").data.decode()
    for route, status in (("POST /webhook", 422), ("POST /webhook", 400), ("POST /webhook", 404),
                          ("GET unmatched", 404)):
        assert f'reid_al_requests_rejected_total{{route="{route}",status="{status}"}} 1' in metrics
    status = http.get("/status").json
    assert status["unregistered"]["rejected:POST /webhook:422"] == 1
    text = format_status(status)
    assert "rejected requests: " in text and "POST /webhook -> 422 x1" in text
    assert json.dumps(status)  # JSON all the way (reid-al status --json)
