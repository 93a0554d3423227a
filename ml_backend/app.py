"""Flask 3 app factory speaking Label Studio's ML-backend protocol, plus /metrics and /status.

Why not the PyPI `label-studio-ml` package: its last release (1.0.9, 2023) pins Flask 1.1.2 and
Werkzeug 2.0.2 and cannot be installed beside Flask 3 / rq 2; the protocol is five small routes,
implemented here. Every route but /health requires basic auth when BASIC_AUTH_USER is set. Bad input
always gets a 4xx JSON `{"error": ..., "field": ...}` and changes no state.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from typing import Any

import redis as redis_lib
from flask import Flask, Response, g, jsonify, request
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ml_backend.embedded import read_url_file
from ml_backend.errors import InputError, SettingsError
from ml_backend.predict import Predictor, label_names
from ml_backend.prom import CONTENT_TYPE, render_metrics
from ml_backend.queue import CycleQueue
from ml_backend.settings import Settings
from ml_backend.state import ProjectState, incr_global, list_projects
from ml_backend.supervise import read_status
from ml_backend.webhook import WebhookHandler, known_project, project_id_of

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health"})
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MODEL_CLASS = "ReidAL"


def redis_from_settings(settings: Settings) -> redis_lib.Redis:
    """REDIS_URL, else the embedded server that `reid-al serve` started under MODEL_DIR/redis."""
    url = settings.redis_url or read_url_file(settings.model_dir / "redis")
    if not url:
        raise SettingsError(
            "REDIS_URL",
            "not set and no embedded redis-server is running under "
            f"{settings.model_dir / 'redis'}: start `reid-al serve` or set it",
        )
    # A few quick retries: a connection pooled before a Redis restart fails once and is replaced, so
    # requests answer 503 only while Redis is really down, and within Label Studio's 1 s webhook timeout.
    retry = Retry(ExponentialBackoff(cap=0.1, base=0.02), 3)
    return redis_lib.Redis.from_url(
        url,
        socket_timeout=5,
        socket_connect_timeout=1,
        health_check_interval=30,
        retry=retry,
        retry_on_error=[redis_lib.exceptions.ConnectionError, redis_lib.exceptions.TimeoutError],
    )


MAX_JSON_DEPTH = 64  # Label Studio's payloads nest about 6 deep
_INT_LIMIT = 2**63  # Label Studio's ids are 64-bit; a larger integer is nobody's id or timestamp


def _bounded_int(text: str) -> int:
    value = int(text)
    if not -_INT_LIMIT <= value < _INT_LIMIT:
        raise InputError("body", f"integer {text[:20]}... ({len(text)} digits) is outside the 64-bit range")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise InputError("body", f"number {text[:20]} is too large for a float")
    return value


def _no_constant(name: str) -> Any:
    raise InputError("body", f"{name} is not JSON (RFC 8259)")


def _path(chain: tuple[Any, ...] | None) -> str:
    """The field a value sits at ("task.data.id_a", "tasks[3].id") from the walk's parent chain."""
    parts: list[str] = []
    while chain is not None:
        chain, key = chain
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return "".join(reversed(parts)).lstrip(".") or "body"


def check_json_tree(body: Any, max_depth: int = MAX_JSON_DEPTH, text: str | None = None) -> None:
    """Refuse what json.loads accepts but the handlers cannot store: nesting deeper than ``max_depth``
    (a recursive repr or dump would overflow the stack) and lone UTF-16 surrogates (Redis and file
    names need UTF-8). Iterative, so the walk itself cannot overflow.

    With the JSON ``text``, most bodies need no walk: a surrogate can only come from a \\uD8xx-\\uDFxx
    escape, and a body with fewer brackets than ``max_depth`` cannot nest deeper."""
    if (
        text is not None
        and _SURROGATE_ESCAPE.search(text) is None
        and text.count("[") + text.count("{") <= max_depth
    ):
        return
    stack: list[tuple[Any, int, tuple[Any, ...] | None]] = [(body, 1, None)]
    while stack:
        value, depth, chain = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                raise InputError(_path(chain), "contains a lone UTF-16 surrogate (not valid Unicode)")
            continue
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            continue
        if depth > max_depth:
            raise InputError(_path(chain), f"JSON nested deeper than {max_depth} levels", status=400)
        for key, item in items:
            if isinstance(key, str) and not key.isascii() and _SURROGATE.search(key):
                raise InputError(_path((chain, "?")), "a key contains a lone UTF-16 surrogate")
            if isinstance(item, (dict, list, str)):
                stack.append((item, depth + 1, (chain, key)))


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or an InputError (400 malformed, 422 a value no handler can use)."""
    if not raw.strip():
        raise InputError("body", "empty body: expected a JSON object", status=400)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("body", f"not UTF-8 (byte {exc.start})", status=400) from None
    try:
        body = json.loads(
            text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant
        )
    except InputError:
        raise
    except RecursionError:
        raise InputError("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels", status=400) from None
    except ValueError as exc:
        raise InputError("body", f"malformed JSON: {exc}", status=400) from None
    if not isinstance(body, dict):
        raise InputError("body", f"expected a JSON object, got {type(body).__name__}", status=400)
    check_json_tree(body, text=text)
    return body


def _json_body() -> dict[str, Any]:
    """The request's JSON, or an InputError: 415 wrong content type, 400 malformed, 413 too large."""
    if not request.is_json:
        raise InputError(
            "body", f"Content-Type must be application/json, got {request.mimetype or 'none'!r}", status=415
        )
    raw = request.get_data(cache=True)  # raises 413 when Content-Length is past MAX_CONTENT_LENGTH
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit and request.stream.read(1):
        # A chunked body is cut at the limit without an error: one more byte means it was longer.
        raise RequestEntityTooLarge()
    return parse_json_body(raw)


def create_app(
    settings: Settings | None = None,
    *,
    redis: redis_lib.Redis | None = None,
    predictor: Predictor | None = None,
) -> Flask:
    """Build the app. `redis`/`predictor` default to ones built from `settings` (tests inject theirs)."""
    settings = settings or Settings.from_env()
    redis = redis if redis is not None else redis_from_settings(settings)
    queue = CycleQueue.for_settings(redis, settings)
    handler = WebhookHandler(redis, queue, retrain_every=settings.retrain_every, model_dir=settings.model_dir)
    predictor = predictor or Predictor(settings)

    app = Flask("reid_al")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["reid_al"] = {"settings": settings, "redis": redis, "queue": queue, "predictor": predictor}

    def _count_rejected(status: int, message: str) -> None:
        """Every 4xx is logged and counted (by route and status, never by anything the client chose)."""
        method = request.method if request.method in _METHODS else "OTHER"
        route = f"{method} {request.url_rule.rule if request.url_rule is not None else 'unmatched'}"
        project = _registered_project_of_body() if route == "POST /webhook" else None
        about = f" (project {project})" if project is not None else ""
        log.warning("rejected %s%s: %d %s", route, about, status, message)
        try:
            incr_global(redis, f"rejected:{route}:{status}")
            if project is not None:
                # An event about a known project that is not recorded must show on that project: a
                # webhook without the Authorization header loses every answer otherwise unnoticed.
                ProjectState(redis, project).incr(f"webhook_rejected:{status}")
        except redis_lib.exceptions.RedisError as exc:  # the answer still goes out
            log.error("cannot count a rejected request: %s", exc)

    def _registered_project_of_body() -> str | None:
        """The registered project a rejected request's JSON body names, if any.

        Read leniently (the body may be why it was rejected); a project with no state is not named, so a
        client cannot register ids or create counters by sending events that fail."""
        try:
            body = parse_json_body(request.get_data(cache=True))
            project = project_id_of(body.get("project"))
        except (InputError, HTTPException):
            return None
        try:
            return project if ProjectState(redis, project).exists() else None
        except redis_lib.exceptions.RedisError:
            return None

    @app.errorhandler(InputError)
    def _input_error(exc: InputError) -> tuple[Response, int]:
        # The message reads on its own ("annotation.id: must be int, got str"), the field is for machines.
        message = exc.message if exc.field in exc.message else f"{exc.field}: {exc.message}"
        if 400 <= exc.status < 500:
            _count_rejected(exc.status, message)
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
            status, exc.description or exc.name
        )
        if 400 <= status < 500:
            _count_rejected(status, message)
        return jsonify({"error": message, "field": field}), status

    @app.errorhandler(redis_lib.exceptions.ConnectionError)
    @app.errorhandler(redis_lib.exceptions.TimeoutError)
    def _redis_down(exc: Exception) -> tuple[Response, int]:
        log.error("redis unavailable: %s", exc)
        return jsonify({"error": f"redis unavailable: {exc}", "field": None}), 503

    @app.before_request
    def _auth() -> None:
        g.started = time.perf_counter()
        if not settings.auth_enabled or request.path in PUBLIC_PATHS:
            return
        auth = request.authorization
        ok = (
            auth is not None
            and auth.type == "basic"
            and hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
            and hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode())
        )
        if not ok:
            raise InputError("Authorization", "basic authentication required", status=401)

    @app.get("/health")
    def health() -> tuple[Response, int]:
        """UP while Redis answers (webhooks are recorded); with `reid-al serve`, also each child's state,
        so a restarting worker or Redis shows here."""
        body: dict[str, Any] = {"status": "UP", "model_class": MODEL_CLASS}
        children = read_status(settings.model_dir)
        if children is not None:
            body["components"] = {name: child["state"] for name, child in children["children"].items()}
        try:
            redis.ping()
        except redis_lib.exceptions.RedisError as exc:
            body.update(status="DOWN", error=f"redis: {exc}")
            return jsonify(body), 503
        return jsonify(body), 200

    @app.post("/setup")
    def setup() -> Response:
        """Checks the label config and stores its names (for a project with no state yet, for a day).

        Why not register the project here: Label Studio repeats /setup before every prediction round and
        for any project connected to the backend, and an id registered by it would stay listed for good."""
        body = _json_body()
        project = _project(body)
        schema = body.get("schema")
        state = ProjectState(redis, project)
        if schema is not None:
            if not isinstance(schema, str):
                raise InputError(
                    "schema", f"must be the label config XML string, got {type(schema).__name__}"
                )
            try:
                from_name, to_name = label_names(schema)
            except InputError as exc:
                raise exc.at("schema") from None
            meta = state.meta()
            if (meta.get("from_name"), meta.get("to_name")) != (from_name, to_name) or not state.exists():
                state.set_meta(from_name=from_name, to_name=to_name)  # refreshes the day of an unknown one
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
            raise InputError(
                "label_config", f"must be the label config XML string, got {type(label_config).__name__}"
            )
        if len(tasks) > settings.predict_max_tasks:
            raise InputError(
                "tasks",
                f"{len(tasks)} tasks in one call; at most REID_AL_PREDICT_MAX_TASKS="
                f"{settings.predict_max_tasks}: send them in batches",
                status=413,
            )
        state = ProjectState(redis, project)
        results = predictor.predict(
            tasks, label_config, state, on_missing=lambda items: queue.request_embedding(project, items)
        )
        # The version the results were scored with, not a re-read: a cycle may finish during the call.
        version = results[0]["model_version"] if results else state.cycles.current_version() or "initial"
        return jsonify({"results": results, "model_version": version})

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
        state = known_project(redis, project, settings.model_dir)
        state.incr("events:TRAIN")
        request_ = queue.request_cycle(project, reason="train")
        return jsonify(
            {"status": "ok", "project": project, "cycle": request_.outcome, "job_id": request_.job_id}
        )

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

    @app.get("/export")
    def export() -> Response:
        """Every pool image's identity under the latest version (ml_backend.export): CSV or JSON."""
        from ml_backend.export import build_export, export_format

        if "project" not in request.args:
            raise InputError("project", "missing", status=400)
        project = _project({"project": request.args["project"]})
        fmt = export_format(request.args.get("format", "csv"))
        result = build_export(settings, project, redis=redis, version=request.args.get("version"))
        headers = {
            "X-Reid-Al-Version": result.version,
            "X-Reid-Al-Answers-Changed": str(result.answers_changed).lower(),
            "X-Reid-Al-Answers-After-Version": str(result.answers_after_version),
        }
        if fmt == "json":
            response = jsonify(result.to_dict())
        else:
            response = Response(result.to_csv(), content_type="text/csv; charset=utf-8")
            headers["Content-Disposition"] = (
                f'attachment; filename="identities-{result.project}-{result.version}.csv"'
            )
        response.headers.update(headers)
        return response

    @app.get("/jobs")
    def jobs() -> Response:
        return jsonify(queue.status_all())

    return app


def _project(body: dict[str, Any]) -> str:
    if "project" not in body or body["project"] in (None, ""):
        raise InputError("project", "missing", status=400)
    return project_id_of(body["project"])
