"""Every route through Flask's test client: happy paths, auth, and 4xx answers that change nothing."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from ml_backend.app import create_app
from ml_backend.predict import Predictor, ServingModel
from ml_backend.settings import Settings
from ml_backend.state import GLOBAL_COUNTERS_KEY, ProjectState

LABEL_CONFIG = (Path(__file__).resolve().parents[1] / "label_config.xml").read_text()
AUTH = {"Authorization": "Basic " + base64.b64encode(b"ann:secret").decode()}


class Learned:
    """A calibrator that has learned from answers (so /predict pre-fills a choice): cosine to P(same)."""

    is_prior = False

    def predict(self, similarities: np.ndarray) -> np.ndarray:
        return (np.asarray(similarities, dtype=np.float64) + 1.0) / 2.0


def serving_model(_state: ProjectState) -> ServingModel:
    emb = np.eye(3, dtype=np.float32)
    emb[1] = np.array([0.8, 0.6, 0.0], dtype=np.float32)
    return ServingModel(version="v0001-20260101T0000", row_of={"a": 0, "b": 1, "c": 2}, embeddings=emb,
                        calibrator=Learned())


def make_app(client: redis.Redis, tmp_path: Path, **overrides: Any) -> Flask:
    settings = Settings(
        model_dir=tmp_path,
        basic_auth_user="ann",
        basic_auth_pass="secret",
        max_body_bytes=4096,
        retrain_every=100,
        **overrides,
    )
    app = create_app(settings, redis=client, predictor=Predictor(settings, load_model=serving_model))
    app.testing = True
    return app


@pytest.fixture()
def http(redis_client: redis.Redis, tmp_path: Path) -> FlaskClient:
    return make_app(redis_client, tmp_path).test_client()


def event(ann_id: int = 1, answer: str = "same") -> dict[str, Any]:
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 3},
        "annotation": {
            "id": ann_id,
            "was_cancelled": False,
            "updated_at": "2024-01-01T00:00:00Z",
            "result": [
                {
                    "from_name": "answer",
                    "to_name": "image_a",
                    "type": "choices",
                    "value": {"choices": [answer]},
                }
            ],
        },
        "task": {"id": 5, "data": {"id_a": "a", "id_b": "b", "image_a": "/a", "image_b": "/b"}},
    }


def keys(client: redis.Redis) -> dict[bytes, Any]:
    """Every key but the counters of rejected requests (global, and a registered project's webhook ones)."""
    return {
        k: (
            {f: v for f, v in client.hgetall(k).items() if not f.startswith(b"webhook_rejected:")}
            if client.type(k) == b"hash"
            else client.type(k)
        )
        for k in client.keys("*")
        if k != GLOBAL_COUNTERS_KEY.encode()
    }


def rejected_on(client: redis.Redis, project: str) -> dict[str, int]:
    return {
        k: v for k, v in ProjectState(client, project).counters().items() if k.startswith("webhook_rejected:")
    }


def test_health_needs_no_auth(http: FlaskClient) -> None:
    response = http.get("/health")
    assert response.status_code == 200 and response.json["status"] == "UP"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/setup"),
        ("post", "/predict"),
        ("post", "/webhook"),
        ("post", "/train"),
        ("get", "/versions"),
        ("get", "/metrics"),
        ("get", "/status"),
        ("get", "/jobs"),
    ],
)
def test_every_other_route_needs_basic_auth(http: FlaskClient, method: str, path: str) -> None:
    response = getattr(http, method)(path, json={})
    assert response.status_code == 401
    assert response.json["field"] == "Authorization"
    assert "Basic" in response.headers["WWW-Authenticate"]
    bad = {"Authorization": "Basic " + base64.b64encode(b"ann:wrong").decode()}
    assert getattr(http, method)(path, json={}, headers=bad).status_code == 401


def test_no_auth_configured_means_open(redis_client: redis.Redis, tmp_path: Path) -> None:
    app = create_app(Settings(model_dir=tmp_path), redis=redis_client)
    assert app.test_client().get("/versions").status_code == 200


def test_setup_reads_label_config(http: FlaskClient, redis_client: redis.Redis) -> None:
    ProjectState(redis_client, "3").touch()  # an unknown project's /setup stores nothing (test_project_ids)
    response = http.post("/setup", json={"project": "3.1712345678", "schema": LABEL_CONFIG}, headers=AUTH)
    assert response.status_code == 200 and response.json == {"model_version": "initial"}
    assert ProjectState(redis_client, "3").meta() == {"from_name": "answer", "to_name": "image_a"}
    ProjectState(redis_client, "3").cycles.add_version("v0002-20260101T0000")
    assert (
        http.post("/setup", json={"project": 3}, headers=AUTH).json["model_version"] == "v0002-20260101T0000"
    )


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"schema": LABEL_CONFIG}, 400, "project"),
        ({"project": [3], "schema": LABEL_CONFIG}, 422, "project"),
        ({"project": 3, "schema": 5}, 422, "schema"),
        ({"project": 3, "schema": "<View><Image name='x' value='$x'/></View>"}, 422, "schema"),
        ({"project": 3, "schema": "<View"}, 422, "schema"),
    ],
)
def test_setup_errors(
    http: FlaskClient, redis_client: redis.Redis, body: dict, status: int, field: str
) -> None:
    before = keys(redis_client)
    response = http.post("/setup", json=body, headers=AUTH)
    assert (response.status_code, response.json["field"]) == (status, field)
    assert response.json["error"]
    assert keys(redis_client) == before


def test_predict_answers_every_task_in_order(http: FlaskClient) -> None:
    tasks = [
        {"id": 1, "data": {"id_a": "a", "id_b": "b", "image_a": "/a", "image_b": "/b"}},
        {"id": 2, "data": {"id_a": "a", "id_b": "c", "image_a": "/a", "image_b": "/c"}},
    ]
    response = http.post(
        "/predict", json={"tasks": tasks, "project": "3.17", "label_config": LABEL_CONFIG}, headers=AUTH
    )
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == 2
    for r in results:
        assert r["model_version"] == "v0001-20260101T0000"
        assert r["result"][0]["from_name"] == "answer" and r["result"][0]["to_name"] == "image_a"
        assert 0.5 <= r["score"] <= 1.0  # P(answer)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"project": 3}, 400, "tasks"),
        ({"project": 3, "tasks": {"id": 1}}, 422, "tasks"),
        ({"project": 3, "tasks": [5]}, 422, "tasks[0]"),
        ({"project": 3, "tasks": [{"id": 1}]}, 422, "tasks[0].data"),
        ({"project": 3, "tasks": [{"id": 1, "data": {"image_a": "/a"}}]}, 422, "tasks[0].data"),
        ({"project": 3, "tasks": [], "label_config": 7}, 422, "label_config"),
        ({"project": 3, "tasks": [], "label_config": "<View/>"}, 422, "label_config"),
        ({"tasks": []}, 400, "project"),
    ],
)
def test_predict_errors(
    http: FlaskClient, redis_client: redis.Redis, body: dict, status: int, field: str
) -> None:
    before = keys(redis_client)
    response = http.post("/predict", json=body, headers=AUTH)
    assert (response.status_code, response.json["field"]) == (status, field), response.json
    assert keys(redis_client) == before


def test_webhook_records_and_acknowledges(http: FlaskClient, redis_client: redis.Redis) -> None:
    response = http.post("/webhook", json=event(), headers=AUTH)
    assert response.status_code == 200 and response.json["outcome"] == "created"
    assert (
        http.post("/webhook", json={"action": "NEW_THING", "project": {"id": 3}}, headers=AUTH).json["status"]
        == "ignored"
    )
    assert len(ProjectState(redis_client, "3").annotations.all()) == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "body"),
        ({"data": "", "content_type": "application/json"}, 400, "body"),
        ({"data": "[1, 2]", "content_type": "application/json"}, 400, "body"),
        ({"data": "action=x", "content_type": "application/x-www-form-urlencoded"}, 415, "body"),
        ({"data": "{}", "content_type": "text/plain"}, 415, "body"),
        ({"json": {"project": {"id": 3}}}, 400, "action"),
        ({"json": {"action": ["ANNOTATION_CREATED"]}}, 422, "action"),
        ({"json": {**event(), "annotation": {"id": "1"}}}, 422, "annotation.id"),
        ({"json": {**event(), "task": {"id": 5}}}, 400, "task.data"),
        ({"data": '{"action": "' + "x" * 5000 + '"}', "content_type": "application/json"}, 413, "body"),
    ],
)
def test_webhook_rejects_bad_requests_without_state_change(
    http: FlaskClient, redis_client: redis.Redis, kwargs: dict, status: int, field: str
) -> None:
    http.post("/webhook", json=event(9), headers=AUTH)
    before = keys(redis_client)
    response = http.post("/webhook", headers=AUTH, **kwargs)
    assert response.status_code == status, response.data
    assert response.json["field"] == field and response.json["error"]
    if field != "body":  # the human-readable message names the field too, not only the JSON key
        assert field in response.json["error"], response.json
    assert keys(redis_client) == before
    # counted on the project the refused event names (project 3 is registered), else nowhere
    names_project = "project" in kwargs.get("json", {})
    assert rejected_on(redis_client, "3") == ({f"webhook_rejected:{status}": 1} if names_project else {})


def test_oversized_body_named_in_error(http: FlaskClient) -> None:
    response = http.post(
        "/predict", data="{" + " " * 10_000 + "}", content_type="application/json", headers=AUTH
    )
    assert response.status_code == 413 and "REID_AL_MAX_BODY_BYTES" in response.json["error"]


def test_versions_metrics_status_jobs(http: FlaskClient, redis_client: redis.Redis) -> None:
    ProjectState(redis_client, "3").cycles.add_version("v0001-20260101T0000")
    http.post("/webhook", json=event(), headers=AUTH)
    assert http.get("/versions?project=3", headers=AUTH).json == {"versions": ["v0001-20260101T0000"]}
    assert http.get("/versions", headers=AUTH).json == {"versions": ["v0001-20260101T0000"]}
    metrics = http.get("/metrics", headers=AUTH)
    assert metrics.status_code == 200 and metrics.content_type.startswith("text/plain; version=0.0.4")
    assert 'reid_al_webhook_events_total{event="ANNOTATION_CREATED",project="3"} 1' in metrics.data.decode()
    http.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}, headers=AUTH)
    status = http.get("/status?project=3", headers=AUTH).json
    assert status["project"] == "3" and status["active_job_status"] == "queued"
    assert http.get("/jobs", headers=AUTH).json["queue_depth"] == 1
    assert http.get("/status", headers=AUTH).json["projects"][0]["project"] == "3"
    assert http.get("/status?project=a:b", headers=AUTH).status_code == 422


def test_legacy_train_requests_a_coalesced_cycle(http: FlaskClient, redis_client: redis.Redis) -> None:
    ProjectState(redis_client, "3").touch()  # an unknown project's /train is a 404 (test_project_ids)
    body = {"annotations": [], "project": "3.1712345678", "label_config": LABEL_CONFIG, "params": {}}
    first = http.post("/train", json=body, headers=AUTH)
    assert first.status_code == 200 and first.json["cycle"] == "enqueued"
    assert http.post("/train", json=body, headers=AUTH).json["cycle"] == "queued"
    assert http.post("/train", json={"annotations": []}, headers=AUTH).json["field"] == "project"
    assert http.post("/train", json=body).status_code == 401


def test_unknown_route_and_method_are_json(http: FlaskClient) -> None:
    assert http.get("/nope", headers=AUTH).status_code == 404
    response = http.get("/webhook", headers=AUTH)
    assert response.status_code == 405 and response.json["error"]


def test_health_reports_redis_down(tmp_path: Path) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    app = create_app(Settings(model_dir=tmp_path), redis=dead)
    response = app.test_client().get("/health")
    assert response.status_code == 503 and response.json["status"] == "DOWN"
    assert app.test_client().post("/webhook", json=event()).status_code == 503


def test_missing_redis_is_a_settings_error(tmp_path: Path) -> None:
    from ml_backend.settings import SettingsError

    with pytest.raises(SettingsError, match="REDIS_URL"):
        create_app(Settings(model_dir=tmp_path))


def test_unauthorised_webhook_is_counted_on_the_project_it_names(
    http: FlaskClient, redis_client: redis.Redis
) -> None:
    http.post("/webhook", json=event(9), headers=AUTH)  # project 3 is registered by its first answer
    state = ProjectState(redis_client, "3")
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ann:wrong").decode()}
    assert http.post("/webhook", json=event(10)).status_code == 401  # no header: Label Studio's default
    assert http.post("/webhook", json=event(11), headers=wrong).status_code == 401
    assert state.annotations.get(10) is None and state.annotations.get(11) is None
    assert state.counters()["webhook_rejected:401"] == 2
    metrics = http.get("/metrics", headers=AUTH).data.decode()
    assert 'reid_al_webhook_rejected_total{project="3",status="401"} 2' in metrics
    assert http.get("/status?project=3", headers=AUTH).json["webhook_rejected"] == {"401": 2}
    # an id nobody registered gets no state: counted globally, by route and status only
    stranger = {**event(12), "project": {"id": 77}}
    assert http.post("/webhook", json=stranger).status_code == 401
    assert not ProjectState(redis_client, "77").exists() and not redis_client.keys("reid-al:77:*")
    assert "webhook_rejected:401" not in ProjectState(redis_client, "77").counters()
    assert redis_client.hget(GLOBAL_COUNTERS_KEY, "rejected:POST /webhook:401") == b"3"
    # a body that names no project, or is no JSON at all, is counted globally as before
    assert http.post("/webhook", data="{not json", content_type="application/json").status_code == 401
    assert state.counters()["webhook_rejected:401"] == 2
