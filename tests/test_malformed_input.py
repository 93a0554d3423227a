"""Every malformed input is a 4xx naming the field and changes nothing; timestamps are bounded; a creation
event never overwrites a newer update; /predict is capped and answers with one model version."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from flask.testing import FlaskClient

from ml_backend.app import create_app, parse_json_body
from ml_backend.errors import InputError
from ml_backend.predict import Predictor, ServingModel
from ml_backend.settings import Settings
from ml_backend.state import GLOBAL_COUNTERS_KEY, ProjectState, parse_timestamp

LABEL_CONFIG = (Path(__file__).resolve().parents[1] / "label_config.xml").read_text()


@pytest.fixture()
def http(redis_client: redis.Redis, tmp_path: Path) -> FlaskClient:
    settings = Settings(model_dir=tmp_path, retrain_every=100, predict_max_tasks=50)
    app = create_app(settings, redis=redis_client, predictor=Predictor(settings, load_model=lambda _s: None))
    return app.test_client()


def state_keys(client: redis.Redis) -> list[bytes]:
    return sorted(k for k in client.keys("*") if k != GLOBAL_COUNTERS_KEY.encode())


def annotation(ann_id: int = 1, answer: str = "same", updated_at: Any = "2024-01-01T00:00:00Z",
               action: str = "ANNOTATION_CREATED", image_a: str = "a") -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": action, "project": {"id": 3},
        "annotation": {"id": ann_id, "result": [{"type": "choices", "value": {"choices": [answer]}}]},
        "task": {"id": 5, "data": {"id_a": image_a, "id_b": "b"}}}
    if updated_at is not None:
        body["annotation"]["updated_at"] = updated_at
    return body


def post_raw(http: FlaskClient, text: str | bytes, path: str = "/webhook") -> Any:
    return http.post(path, data=text, content_type="application/json")


@pytest.mark.parametrize("depth", [65, 1_000, 100_000])
def test_deep_nesting_is_a_400(http: FlaskClient, redis_client: redis.Redis, depth: int) -> None:
    body = '{"action": "ANNOTATION_CREATED", "x": ' + "[" * depth + "]" * depth + "}"
    response = post_raw(http, body)
    assert response.status_code == 400 and "nested deeper" in response.json["error"]
    assert state_keys(redis_client) == []


def test_nesting_inside_task_data_is_refused_before_anything_is_stored(http: FlaskClient,
                                                                      redis_client: redis.Redis) -> None:
    body = annotation()
    nested: Any = "x"
    for _ in range(200):
        nested = [nested]
    body["task"]["data"]["image_a"] = nested
    response = http.post("/webhook", json=body)
    assert response.status_code == 400 and response.json["field"].startswith("task.data.image_a")
    assert state_keys(redis_client) == []


def test_lone_surrogate_in_an_image_id_is_a_422_naming_the_field(http: FlaskClient,
                                                                  redis_client: redis.Redis) -> None:
    text = (r'{"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": {"id": 1, "result": '
            r'[{"type": "choices", "value": {"choices": ["same"]}}]}, '
            r'"task": {"id": 5, "data": {"id_a": "a\ud800", "id_b": "b"}}}')
    response = post_raw(http, text)
    assert response.status_code == 422 and response.json["field"] == "task.data.id_a"
    assert state_keys(redis_client) == []
    # A proper surrogate pair (an emoji) is valid Unicode and accepted.
    ok = post_raw(http, text.replace(r"a\ud800", r"a\ud83d\ude00"))
    assert ok.status_code == 200, ok.json


@pytest.mark.parametrize("updated_at", ["1" + "0" * 400, "1e400", "-1e400", "Infinity", "NaN", "-Infinity"])
def test_numbers_no_float_holds_are_4xx(http: FlaskClient, redis_client: redis.Redis,
                                        updated_at: str) -> None:
    text = (r'{"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": {"id": 1, "updated_at": '
            + updated_at + r', "result": []}, "task": {"id": 5, "data": {"id_a": "a", "id_b": "b"}}}')
    response = post_raw(http, text)
    assert 400 <= response.status_code < 500 and response.json["field"] == "body", response.json
    assert state_keys(redis_client) == []


def test_invalid_utf8_and_non_objects_are_400(http: FlaskClient) -> None:
    assert post_raw(http, b'{"action": "\xff"}').status_code == 400
    assert post_raw(http, "[1, 2]").status_code == 400
    assert post_raw(http, "").status_code == 400


def test_parse_json_body_directly() -> None:
    assert parse_json_body(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    with pytest.raises(InputError) as info:
        parse_json_body(b'{"a": {"b": [{"c": 9223372036854775808}]}}')
    assert info.value.status == 422 and "64-bit" in info.value.message


def test_chunked_body_over_the_limit_is_a_413(redis_client: redis.Redis, tmp_path: Path) -> None:
    """A body without Content-Length (chunked), which the server hands over as a terminated stream."""
    import json

    from werkzeug.test import EnvironBuilder, run_wsgi_app

    settings = Settings(model_dir=tmp_path, max_body_bytes=4096)
    app = create_app(settings, redis=redis_client, predictor=Predictor(settings, load_model=lambda _s: None))
    payload = b'{"action": "PROJECT_UPDATED", "project": 3, "pad": "' + b"x" * 10_000 + b'"}'
    environ = EnvironBuilder(path="/webhook", method="POST", data=payload,
                             content_type="application/json").get_environ()
    del environ["CONTENT_LENGTH"]
    environ.update({"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    body, status, _headers = run_wsgi_app(app, environ)
    assert status.startswith("413"), status
    assert "REID_AL_MAX_BODY_BYTES" in json.loads(b"".join(body))["error"]
    assert state_keys(redis_client) == []


# --- timestamps --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0, 2**62, "9999-12-31T23:59:59Z",
                                   "0001-01-01T00:00:00", time.time() + 3 * 86400])
def test_parse_timestamp_refuses_times_that_would_freeze_an_annotation(value: Any) -> None:
    with pytest.raises(InputError) as info:
        parse_timestamp(value)
    assert info.value.field == "updated_at"


def test_parse_timestamp_accepts_real_times() -> None:
    assert parse_timestamp("2024-01-01T00:00:00Z") == 1704067200.0
    assert parse_timestamp(10) == 10.0 and parse_timestamp(None) is None
    assert parse_timestamp(time.time() + 3600) is not None  # a clock a little ahead


def test_an_update_dated_year_9999_is_refused_and_later_updates_still_apply(
        http: FlaskClient, redis_client: redis.Redis) -> None:
    assert http.post("/webhook", json=annotation(answer="same")).status_code == 200
    frozen = http.post("/webhook", json=annotation(answer="different", updated_at="9999-01-01T00:00:00Z",
                                                   action="ANNOTATION_UPDATED"))
    assert frozen.status_code == 422 and frozen.json["field"] == "annotation.updated_at"
    later = http.post("/webhook", json=annotation(answer="different", updated_at="2024-02-01T00:00:00Z",
                                                  action="ANNOTATION_UPDATED"))
    assert later.json["outcome"] == "updated"
    assert ProjectState(redis_client, "3").annotations.get(1)["answer"] == "different"


def test_a_created_event_without_timestamps_never_overwrites_a_newer_update(
        http: FlaskClient, redis_client: redis.Redis) -> None:
    update = annotation(answer="different", updated_at="2024-02-01T00:00:00Z", action="ANNOTATION_UPDATED")
    assert http.post("/webhook", json=update).json["outcome"] == "created"
    late = http.post("/webhook", json=annotation(answer="same", updated_at=None))
    assert late.status_code == 200 and late.json["outcome"] == "unchanged"
    assert ProjectState(redis_client, "3").annotations.get(1)["answer"] == "different"
    # An update without a timestamp still applies (it follows whatever is stored).
    untimed = annotation(answer="same", updated_at=None, action="ANNOTATION_UPDATED")
    again = http.post("/webhook", json=untimed)
    assert again.json["outcome"] == "updated"


# --- /predict --------------------------------------------------------------------------------------------
def test_predict_refuses_more_tasks_than_the_cap(http: FlaskClient, redis_client: redis.Redis) -> None:
    tasks = [{"id": i, "data": {"id_a": f"a{i}", "id_b": "b"}} for i in range(51)]
    response = http.post("/predict", json={"project": 3, "tasks": tasks})
    assert response.status_code == 413 and response.json["field"] == "tasks"
    assert "REID_AL_PREDICT_MAX_TASKS" in response.json["error"]
    assert http.post("/predict", json={"project": 3, "tasks": tasks[:50]}).status_code == 200
    assert state_keys(redis_client) == []


def test_one_model_version_per_predict_answer_when_a_cycle_finishes_mid_call(redis_client: redis.Redis,
                                                                             tmp_path: Path) -> None:
    state = ProjectState(redis_client, "3")
    state.cycles.add_version("v0001")

    def loader(loaded: ProjectState) -> ServingModel:
        version = loaded.cycles.current_version()
        loaded.cycles.add_version("v0002")  # the cycle's push lands while this call is scoring
        return ServingModel(version=str(version), row_of={"a": 0, "b": 1},
                            embeddings=np.eye(2, dtype=np.float32))

    settings = Settings(model_dir=tmp_path)
    app = create_app(settings, redis=redis_client, predictor=Predictor(settings, load_model=loader))
    body = app.test_client().post("/predict", json={
        "project": 3, "tasks": [{"id": 1, "data": {"id_a": "a", "id_b": "b"}}],
        "label_config": LABEL_CONFIG}).json
    assert {r["model_version"] for r in body["results"]} == {body["model_version"]} == {"v0001"}
