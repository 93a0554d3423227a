"""Flask 3 app factory speaking Label Studio's ML-backend protocol, plus /metrics and /status.

Why not the PyPI `label-studio-ml` package: its last release (1.0.9, 2023) pins Flask 1.1.2 and
Werkzeug 2.0.2 and cannot be installed beside Flask 3 / rq 2; the protocol is five small routes,
implemented here. Every route but /health requires basic auth when BASIC_AUTH_USER is set. Bad input
always gets a 4xx JSON `{"error": ..., "field": ...}` and changes no state.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import redis as redis_lib
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ml_backend.embedded import read_url_file
from ml_backend.errors import InputError, SettingsError
from ml_backend.predict import Predictor, label_names
from ml_backend.prom import CONTENT_TYPE, render_metrics
from ml_backend.queue import CycleQueue
from ml_backend.settings import Settings
from ml_backend.state import ProjectState, list_projects
from ml_backend.webhook import WebhookHandler, project_id_of

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health"})
MODEL_CLASS = "ReidAL"


def redis_from_settings(settings: Settings) -> redis_lib.Redis:
    """REDIS_URL, else the embedded server that `reid-al serve` started under MODEL_DIR/redis."""
    url = settings.redis_url or read_url_file(settings.model_dir / "redis")
    if not url:
        raise SettingsError("REDIS_URL", "not set and no embedded redis-server is running under "
                                         f"{settings.model_dir / 'redis'}: start `reid-al serve` or set it")
    return redis_lib.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)


def _json_body() -> Any:
    """The request's JSON, or an InputError: 415 wrong content type, 400 malformed, 413 too large."""
    if not request.is_json:
        raise InputError(
            "body", f"Content-Type must be application/json, got {request.mimetype or 'none'!r}", status=415)
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    if not raw.strip():
        raise InputError("body", "empty body: expected a JSON object", status=400)
    body = request.get_json(silent=True)
    if body is None:
        raise InputError("body", "malformed JSON", status=400)
    if not isinstance(body, dict):
        raise InputError("body", f"expected a JSON object, got {type(body).__name__}", status=400)
    return body


def create_app(settings: Settings | None = None, *, redis: redis_lib.Redis | None = None,
               predictor: Predictor | None = None) -> Flask:
    """Build the app. `redis`/`predictor` default to ones built from `settings` (tests inject theirs)."""
    settings = settings or Settings.from_env()
    redis = redis if redis is not None else redis_from_settings(settings)
    queue = CycleQueue.for_settings(redis, settings)
    handler = WebhookHandler(redis, queue, retrain_every=settings.retrain_every)
    predictor = predictor or Predictor(settings)

    app = Flask("reid_al")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["reid_al"] = {"settings": settings, "redis": redis, "queue": queue, "predictor": predictor}

    @app.errorhandler(InputError)
    def _input_error(exc: InputError) -> tuple[Response, int]:
        # The message reads on its own ("annotation.id: must be int, got str"), the field is for machines.
        message = exc.message if exc.field in exc.message else f"{exc.field}: {exc.message}"
        body: dict[str, Any] = {"error": message, "field": exc.field}
        headers = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="reid-al"'
        response = jsonify(body)
        response.headers.update(headers)
        return response, exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        field = "body" if status in (400, 413, 415) else None
        message = {413: f"request body larger than REID_AL_MAX_BODY_BYTES={settings.max_body_bytes}"}.get(
            status, exc.description or exc.name)
        return jsonify({"error": message, "field": field}), status

    @app.errorhandler(redis_lib.exceptions.ConnectionError)
    def _redis_down(exc: Exception) -> tuple[Response, int]:
        log.error("redis unavailable: %s", exc)
        return jsonify({"error": f"redis unavailable: {exc}", "field": None}), 503

    @app.before_request
    def _auth() -> None:
        g.started = time.perf_counter()
        if not settings.auth_enabled or request.path in PUBLIC_PATHS:
            return
        auth = request.authorization
        ok = (auth is not None and auth.type == "basic"
              and hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
              and hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode()))
        if not ok:
            raise InputError("Authorization", "basic authentication required", status=401)

    @app.get("/health")
    def health() -> tuple[Response, int]:
        try:
            redis.ping()
        except redis_lib.exceptions.RedisError as exc:
            return jsonify({"status": "DOWN", "model_class": MODEL_CLASS, "error": f"redis: {exc}"}), 503
        return jsonify({"status": "UP", "model_class": MODEL_CLASS}), 200

    @app.post("/setup")
    def setup() -> Response:
        body = _json_body()
        project = _project(body)
        schema = body.get("schema")
        state = ProjectState(redis, project)
        if schema is not None:
            if not isinstance(schema, str):
                raise InputError("schema",
                                 f"must be the label config XML string, got {type(schema).__name__}")
            try:
                from_name, to_name = label_names(schema)
            except InputError as exc:
                raise exc.at("schema") from None
            if state.meta().get("from_name") != from_name or state.meta().get("to_name") != to_name:
                state.set_meta(from_name=from_name, to_name=to_name)
        state.touch()
        return jsonify({"model_version": state.cycles.current_version() or "initial"})

    @app.post("/predict")
    def predict() -> Response:
        body = _json_body()
        project = _project(body)
        tasks = body.get("tasks")
        if tasks is None:
            raise InputError("tasks", "missing", status=400)
        if not isinstance(tasks, list):
            raise InputError("tasks", f"must be a list of tasks, got {type(tasks).__name__}")
        label_config = body.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise InputError("label_config",
                             f"must be the label config XML string, got {type(label_config).__name__}")
        state = ProjectState(redis, project)
        results = predictor.predict(
            tasks, label_config, state, on_missing=lambda items: queue.request_embedding(project, items))
        return jsonify({"results": results, "model_version": state.cycles.current_version() or "initial"})

    @app.post("/webhook")
    def webhook() -> Response:
        return jsonify(handler.handle(_json_body()))

    @app.post("/train")
    def train() -> Response:
        """Label Studio's legacy "Start training" call (when its webhook feature flag is off).

        The annotations in the body are ignored: the webhook (or `reid-al sync`) already recorded
        them, and the cycle reads them from Redis. This only requests a (coalesced) cycle."""
        body = _json_body()
        project = _project(body)
        state = ProjectState(redis, project)
        state.incr("events:TRAIN")
        request_ = queue.request_cycle(project, reason="train")
        return jsonify({"status": "ok", "project": project, "cycle": request_.outcome,
                        "job_id": request_.job_id})

    @app.get("/versions")
    def versions() -> Response:
        project = request.args.get("project")
        if project is not None:
            state = ProjectState(redis, _project({"project": project}))
            return jsonify({"versions": state.cycles.versions()})
        out: list[str] = []
        for name in list_projects(redis):
            out.extend(ProjectState(redis, name).cycles.versions())
        return jsonify({"versions": out})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(render_metrics(redis, queue), mimetype=None, content_type=CONTENT_TYPE)

    @app.get("/status")
    def status() -> Response:
        project = request.args.get("project")
        if project is None:
            return jsonify(queue.status_all())
        return jsonify(queue.status(_project({"project": project})))

    @app.get("/jobs")
    def jobs() -> Response:
        return jsonify(queue.status_all())

    return app


def _project(body: dict[str, Any]) -> str:
    if "project" not in body or body["project"] in (None, ""):
        raise InputError("project", "missing", status=400)
    return project_id_of(body["project"])
