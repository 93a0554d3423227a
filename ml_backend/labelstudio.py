# Long on purpose: one client for every Label Studio endpoint the backend calls, each a few lines.
"""A small HTTP client for the Label Studio 1.23 REST API: the dozen calls the backend makes.

Two kinds of API token work. Since Label Studio 1.20 a user's default token is a Personal Access Token
(PAT): a JWT refresh token that Label Studio exchanges at ``/api/token/refresh/`` for a short-lived
(5 minutes) access token sent as ``Authorization: Bearer``. The legacy token (40 hex characters,
``Authorization: Token``) works only where legacy tokens are enabled. ``LabelStudioAuth`` tells them
apart by shape and keeps the access token fresh; both the client and image downloads use it.

Plain ``requests`` rather than ``label-studio-sdk``: the SDK pulls pandas, OpenCV and nltk for what is
a handful of JSON calls. Every endpoint used here was checked against a running Label Studio 1.23.2
(see tests/test_labelstudio.py, which drives a real one).

Errors carry the HTTP status and the start of the response body so a failing push says *why*
(e.g. "Absolute local path ... must be a subdirectory of LOCAL_FILES_DOCUMENT_ROOT").
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from ml_backend.errors import LabelStudioAuthError, LabelStudioConnectionError, LabelStudioError

log = logging.getLogger(__name__)

# The queue: tasks carry their place as data.queue (ml_backend.push writes it), and the backend's view
# serves the lowest first.
QUEUE_FIELD = "queue"
DEFAULT_VIEW_TITLE = "Most informative first"
DEFAULT_VIEW_ORDERING: tuple[str, ...] = (f"tasks:data.{QUEUE_FIELD}",)
PAGE_SIZE = 100
BULK_CHUNK = 500  # tasks / predictions / ids per request: keeps each request well under LS's body limits
_RETRY_STATUSES = frozenset({502, 503, 504})
TOKEN_REFRESH_PATH = "/api/token/refresh/"  # jwt_auth/urls.py: simplejwt's TokenRefreshView
ACCESS_MARGIN_S = 30.0  # refresh an access token this long before it expires (clock skew, slow calls)
PAT = "personal access token"
LEGACY = "legacy token"
_HINTS = {
    PAT: "exchanged at /api/token/refresh/ for a Bearer access token; check it is the token shown under "
    "Account & Settings > Personal Access Token and that it was not revoked",
    LEGACY: "sent as 'Authorization: Token ...', which Label Studio >= 1.20 accepts only while legacy "
    "tokens are enabled (Organization > API Tokens Settings, or LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true); "
    "else use the Personal Access Token",
}


def _jwt_payload(token: str) -> dict[str, Any] | None:
    """The claims of a JWT (unverified: only Label Studio can check the signature), None if not one."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        decoded = [json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in parts[:2]]
    except (binascii.Error, ValueError):
        return None
    header, payload = decoded
    if not isinstance(header, dict) or "alg" not in header or not isinstance(payload, dict):
        return None
    return payload


def token_kind(token: str) -> str:
    """``PAT`` for a JWT refresh token, ``LEGACY`` for anything else; a JWT that is not a refresh token is
    refused with a message naming LABEL_STUDIO_API_KEY (an access token expires within minutes)."""
    if not isinstance(token, str) or not token.strip():
        raise ValueError("LABEL_STUDIO_API_KEY must be a non-empty Label Studio API token")
    payload = _jwt_payload(token.strip())
    if payload is None:
        return LEGACY
    kind = payload.get("token_type")
    if kind != "refresh":
        raise ValueError(
            f"LABEL_STUDIO_API_KEY is a JWT of token_type {kind!r}, not a Personal Access Token (a JWT "
            "refresh token): an access token expires within minutes; use the token shown under "
            "Account & Settings > Personal Access Token"
        )
    return PAT


class LabelStudioAuth:
    """The ``Authorization`` header for one Label Studio and one token, shared by threads.

    A legacy token is sent as is. A Personal Access Token is exchanged for an access token, which is
    reused until ``ACCESS_MARGIN_S`` before its ``exp`` and refreshed then, or at once after Label Studio
    refused it (``invalidate``): the PAT itself lives for years, the access token for minutes.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 10) -> None:
        self.url = url.strip().rstrip("/")
        self.token = token.strip()
        self.kind = token_kind(self.token)
        self.timeout = timeout
        self._access: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"LabelStudioAuth(url={self.url!r}, kind={self.kind!r})"

    @property
    def hint(self) -> str:
        return _HINTS[self.kind]

    def header(self) -> str:
        """The header value to send now (may call Label Studio's refresh endpoint)."""
        if self.kind == LEGACY:
            return f"Token {self.token}"
        with self._lock:
            if self._access is None or time.time() >= self._expires - ACCESS_MARGIN_S:
                self._refresh()
            return f"Bearer {self._access}"

    def invalidate(self, header: str) -> bool:
        """Forget the access token in ``header`` after Label Studio refused it; False when there is nothing
        to refresh (a legacy token, or another thread refreshed it already, so a retry may still pass)."""
        if self.kind == LEGACY:
            return False
        with self._lock:
            if self._access is not None and header == f"Bearer {self._access}":
                self._access = None
        return True

    def _refresh(self) -> None:
        url = self.url + TOKEN_REFRESH_PATH
        try:
            resp = requests.post(url, json={"refresh": self.token}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise LabelStudioConnectionError("POST", url, None, f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code in (400, 401, 403):
            raise LabelStudioAuthError(
                "POST", url, resp.status_code, resp.text, token_kind=self.kind, hint=self.hint
            )
        access = None
        if resp.status_code == 200:
            with contextlib.suppress(ValueError, AttributeError):  # not JSON, not an object
                access = resp.json().get("access")
        if not isinstance(access, str) or _jwt_payload(access) is None:
            raise LabelStudioError(
                "POST", url, resp.status_code, f"expected {{'access': <JWT>}}, got {resp.text}"
            )
        exp = (_jwt_payload(access) or {}).get("exp")
        self._access = access
        # Without an exp claim, refresh every minute rather than never.
        self._expires = float(exp) if isinstance(exp, int | float) else time.time() + 60 + ACCESS_MARGIN_S
        self.refreshes += 1
        log.debug("Label Studio access token refreshed (valid until %s)", self._expires)


_SHARED: dict[tuple[str, str], LabelStudioAuth] = {}
_SHARED_LOCK = threading.Lock()


def shared_auth(url: str, token: str) -> LabelStudioAuth:
    """One ``LabelStudioAuth`` per (url, token) in this process, so every client and image download
    shares one access token instead of refreshing it for each."""
    key = (url.strip().rstrip("/"), token.strip())
    with _SHARED_LOCK:
        auth = _SHARED.get(key)
        if auth is None:
            auth = _SHARED[key] = LabelStudioAuth(*key)
        return auth


class LabelStudioClient:
    """Talks to one Label Studio instance with a Personal Access Token or a legacy API token.

    A request Label Studio answers 401 with an access token is sent once more with a fresh one (a 401
    means the request was refused before anything ran, so even a POST may be resent); a second 401, or
    any 401 with a legacy token, is a ``LabelStudioAuthError`` saying which kind of token was tried.

    Errors where the connection was never opened (refused, unresolvable, connect timeout) are retried
    for every method (``retries`` times, exponential backoff from ``backoff`` seconds): the request
    cannot have reached Label Studio. Anything that may have happened after the request was sent (the
    server dropped the connection, a read timeout, 502/503/504) is retried only for GET/HEAD: a
    retried POST/PATCH/DELETE that Django had already processed would e.g. import the tasks twice.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10,
        retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ValueError("url must be the Label Studio base URL, e.g. http://localhost:8080; got empty")
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be an http(s) URL such as http://localhost:8080, got {url!r}")
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key must be a non-empty Label Studio API token (LABEL_STUDIO_API_KEY)")
        token_kind(api_key)  # a JWT access token is refused here, before any request
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, got {retries!r}")
        if isinstance(backoff, bool) or not isinstance(backoff, int | float) or backoff < 0:
            raise ValueError(f"backoff must be a non-negative number of seconds, got {backoff!r}")
        self.url = url.strip().rstrip("/")
        self.api_key = api_key.strip()
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.session = session if session is not None else requests.Session()
        self.session.headers.update({"Accept": "application/json"})
        self.auth = shared_auth(self.url, self.api_key)

    @property
    def token_kind(self) -> str:
        """``PAT`` or ``LEGACY``: the kind of LABEL_STUDIO_API_KEY this client sends."""
        return self.auth.kind

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r}, token={self.auth.kind})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        expected: Iterable[int] = (200, 201, 204),
    ) -> requests.Response:
        """One call with retries; raises LabelStudioError unless the status is in ``expected``."""
        url = f"{self.url}/{path.lstrip('/')}"
        method = method.upper()
        expected = frozenset(expected)
        idempotent = method in ("GET", "HEAD")
        attempt = 0
        reauthorised = False
        while True:
            try:
                authorization = self.auth.header()
            except LabelStudioConnectionError:
                # The token exchange did not get through, so the call was never sent: both may be retried.
                if attempt >= self.retries:
                    raise
                self._pause(method, url, attempt)
                attempt += 1
                continue
            try:
                resp = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    timeout=self.timeout,
                    headers={"Authorization": authorization},
                )
            except requests.ConnectionError as exc:
                # Refused/unresolvable/connect timeout: never sent. "Connection aborted" and the like:
                # maybe processed, so only an idempotent call may be sent again.
                if not (idempotent or _never_sent(exc)) or attempt >= self.retries:
                    raise LabelStudioConnectionError(
                        method, url, None, f"{type(exc).__name__}: {exc}"
                    ) from exc
            except requests.Timeout as exc:
                if not idempotent or attempt >= self.retries:
                    raise LabelStudioConnectionError(
                        method, url, None, f"timed out after {self.timeout:g}s ({exc})"
                    ) from exc
            else:
                if resp.status_code in expected:
                    return resp
                if resp.status_code == 401 and 401 not in expected:
                    if not reauthorised and self.auth.invalidate(authorization):
                        reauthorised = True  # the access token expired or was revoked: one fresh one
                        log.info("Label Studio refused the access token; refreshing it once")
                        continue
                    raise LabelStudioAuthError(
                        method, url, 401, resp.text, token_kind=self.auth.kind, hint=self.auth.hint
                    )
                if not (idempotent and resp.status_code in _RETRY_STATUSES and attempt < self.retries):
                    raise LabelStudioError(method, url, resp.status_code, resp.text)
            self._pause(method, url, attempt)
            attempt += 1

    def _pause(self, method: str, url: str, attempt: int) -> None:
        """The back-off before retry ``attempt + 1``: ``backoff`` seconds, doubling."""
        delay = self.backoff * (2**attempt)
        log.warning(
            "Label Studio %s %s failed, retry %d/%d in %.1fs", method, url, attempt + 1, self.retries, delay
        )
        time.sleep(delay)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise LabelStudioError(
                method, resp.url, resp.status_code, f"response is not JSON: {resp.text}"
            ) from exc

    # -- instance / projects -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``: ``{"status": "UP"}`` once Label Studio is ready."""
        return self._json("GET", "/health")

    def current_user(self) -> dict[str, Any]:
        """Whoever the token belongs to: a cheap way to tell a bad token (401) from a bad URL."""
        return self._json("GET", "/api/current-user/whoami")

    def get_project(self, pid: int | str) -> dict[str, Any]:
        return self._json("GET", f"/api/projects/{as_project_id(pid)}")

    def create_project(self, title: str, label_config: str, **fields: Any) -> dict[str, Any]:
        if not isinstance(title, str) or len(title.strip()) < 3:
            raise ValueError(
                f"title must be a string of at least 3 characters (Label Studio's rule), got {title!r}"
            )
        if not isinstance(label_config, str) or "<View" not in label_config:
            raise ValueError("label_config must be a Label Studio XML config string starting with <View>")
        return self._json(
            "POST", "/api/projects", json={"title": title, "label_config": label_config, **fields}
        )

    def patch_project(self, pid: int | str, **fields: Any) -> dict[str, Any]:
        if not fields:
            raise ValueError("patch_project needs at least one field to change, e.g. model_version='v3'")
        return self._json("PATCH", f"/api/projects/{as_project_id(pid)}", json=fields)

    def delete_project(self, pid: int | str) -> None:
        self.request("DELETE", f"/api/projects/{as_project_id(pid)}")

    # -- tasks ---------------------------------------------------------------------------------------

    def create_tasks(self, pid: int | str, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Import tasks; returns the new task ids in input order.

        Each task is ``{"data": {...}, "predictions": [...]?}``; a mapping without ``"data"`` is taken
        to be the data itself. Inline predictions keep their ``model_version``.
        """
        project = as_project_id(pid)
        payload = [_as_task(t, index=k) for k, t in enumerate(tasks)]
        ids: list[int] = []
        for chunk in _chunks(payload, BULK_CHUNK):
            body = self._json(
                "POST", f"/api/projects/{project}/import", params={"return_task_ids": "true"}, json=chunk
            )
            got = body.get("task_ids") if isinstance(body, dict) else None
            if not isinstance(got, list) or len(got) != len(chunk):
                raise LabelStudioError(
                    "POST",
                    f"{self.url}/api/projects/{project}/import",
                    201,
                    f"expected {len(chunk)} task ids in the answer, got {body!r}",
                )
            ids.extend(int(i) for i in got)
        return ids

    def update_task_data(self, task_id: int, data: Mapping[str, Any]) -> dict[str, Any]:
        """Replace a task's ``data`` (Label Studio stores it whole: pass every field)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"data must be a mapping, got {type(data).__name__}")
        return self._json("PATCH", f"/api/tasks/{_int_id(task_id, 'task_id')}", json={"data": dict(data)})

    def get_task(self, task_id: int) -> dict[str, Any]:
        return self._json("GET", f"/api/tasks/{_int_id(task_id, 'task_id')}")

    def iter_tasks(
        self,
        pid: int | str,
        *,
        view: int | None = None,
        fields: str | None = None,
        page_size: int = PAGE_SIZE,
        updated_after: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every task of the project (Data Manager listing, paginated).

        Each task has ``id``, ``data``, ``total_annotations``, ``cancelled_annotations``,
        ``total_predictions``; ``fields="all"`` adds the full ``annotations`` and ``predictions``.
        With ``view`` the view's ordering/filters apply (e.g. lowest prediction score first).
        ``updated_after`` (epoch seconds) keeps the tasks whose ``updated_at`` is later: the Data Manager
        filter ``filter:tasks:updated_at``; creating, changing or deleting an annotation, or a
        prediction, moves its task's ``updated_at`` (checked against Label Studio 1.23.2).
        """
        project = as_project_id(pid)
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        params: dict[str, Any] = {"project": project, "page_size": page_size}
        if view is not None:
            params["view"] = _int_id(view, "view")
        if fields is not None:
            params["fields"] = fields
        if updated_after is not None:
            params["query"] = json.dumps({"filters": updated_after_filter(updated_after)})
        page = 1
        seen = 0
        while True:
            try:
                body = self._json("GET", "/api/tasks", params={**params, "page": page})
            except LabelStudioError as exc:
                if exc.status == 404 and "Invalid page" in exc.body:
                    return  # the listing shrank under us (tasks deleted while paging)
                raise
            tasks = body.get("tasks", []) if isinstance(body, dict) else []
            yield from tasks
            seen += len(tasks)
            total = body.get("total", 0) if isinstance(body, dict) else 0
            if not tasks or seen >= total:
                return
            page += 1

    def task_ids_by_pair(self, pid: int | str) -> dict[str, int]:
        """``data.pair_id`` -> task id, for idempotent pushes (the oldest task wins on a duplicate)."""
        out: dict[str, int] = {}
        for task in self.iter_tasks(pid):
            pair = (task.get("data") or {}).get("pair_id")
            if pair is None:
                continue
            tid = int(task["id"])
            key = str(pair)
            if key not in out or tid < out[key]:
                out[key] = tid
        return out

    def delete_tasks(self, pid: int | str, task_ids: Iterable[int]) -> int:
        """Delete tasks (Data Manager bulk action); returns how many Label Studio deleted."""
        project = as_project_id(pid)
        ids = [_int_id(t, "task_ids[]") for t in task_ids]
        deleted = 0
        for chunk in _chunks(ids, BULK_CHUNK):
            body = self._json(
                "POST",
                "/api/dm/actions",
                params={"id": "delete_tasks", "project": project},
                json={"selectedItems": {"all": False, "included": chunk}},
            )
            deleted += int((body or {}).get("processed_items", 0))
        return deleted

    def get_next_task(self, pid: int | str, view: int | None = None) -> dict[str, Any] | None:
        """The task Label Studio would serve this user next (None when the queue is empty).

        Note that Label Studio locks the served task for this user (24 h).
        """
        params = {"view": _int_id(view, "view")} if view is not None else None
        try:
            return self._json("GET", f"/api/projects/{as_project_id(pid)}/next", params=params)
        except LabelStudioError as exc:
            if exc.status == 404:
                return None
            raise

    # -- predictions and views -----------------------------------------------------------------------

    def import_predictions(self, pid: int | str, predictions: Sequence[Mapping[str, Any]]) -> int:
        """Bulk-create predictions ``{"task", "result", "score", "model_version"}``; returns the count.

        Re-importing under the same model_version *adds* rows (Label Studio averages their scores),
        so callers use a fresh model_version per retrain.
        """
        project = as_project_id(pid)
        payload = []
        for k, pred in enumerate(predictions):
            if not isinstance(pred, Mapping):
                raise TypeError(f"predictions[{k}] must be a dict, got {type(pred).__name__}")
            for key in ("task", "result", "model_version"):
                if key not in pred:
                    raise ValueError(f"predictions[{k}] is missing {key!r}")
            if not isinstance(pred["result"], list):
                raise ValueError(f"predictions[{k}]['result'] must be a list of regions")
            payload.append(dict(pred))
        created = 0
        for chunk in _chunks(payload, BULK_CHUNK):
            body = self._json("POST", f"/api/projects/{project}/import/predictions", json=chunk)
            created += int((body or {}).get("created", 0))
        return created

    def list_views(self, pid: int | str) -> list[dict[str, Any]]:
        return self._json("GET", "/api/dm/views", params={"project": as_project_id(pid)})

    def ensure_view(
        self,
        pid: int | str,
        title: str = DEFAULT_VIEW_TITLE,
        ordering: Sequence[str] = DEFAULT_VIEW_ORDERING,
    ) -> int:
        """Id of the Data Manager view with this title, created (or its ordering fixed) if needed."""
        project = as_project_id(pid)
        if not isinstance(title, str) or not title.strip():
            raise ValueError("title must be a non-empty string")
        if isinstance(ordering, str) or not all(isinstance(o, str) for o in ordering):
            raise ValueError(
                f"ordering must be a list of column names, e.g. ['tasks:data.queue'], got {ordering!r}"
            )
        wanted = list(ordering)
        for view in self.list_views(project):
            data = view.get("data") or {}
            if data.get("title") == title:
                if list(data.get("ordering") or []) != wanted:
                    self._json(
                        "PATCH",
                        f"/api/dm/views/{int(view['id'])}",
                        json={"project": project, "data": {**data, "ordering": wanted}},
                    )
                return int(view["id"])
        body = self._json(
            "POST",
            "/api/dm/views",
            json={
                "project": project,
                "data": {"title": title, "ordering": wanted, "filters": {"conjunction": "and", "items": []}},
            },
        )
        return int(body["id"])

    # -- annotations ---------------------------------------------------------------------------------

    def iter_annotations(self, pid: int | str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Every annotation of the project, skipped ones (``was_cancelled``) included, with its task."""
        for task in self.iter_tasks(pid, fields="all"):
            for annotation in task.get("annotations") or []:
                yield annotation, task

    def create_annotation(
        self, task_id: int, result: list[dict[str, Any]], *, was_cancelled: bool = False, **fields: Any
    ) -> dict[str, Any]:
        """What an annotator's "Submit" (or "Skip", with ``was_cancelled=True``) does."""
        if not isinstance(result, list):
            raise ValueError("result must be a list of regions")
        body = {"result": result, "was_cancelled": bool(was_cancelled), **fields}
        return self._json("POST", f"/api/tasks/{_int_id(task_id, 'task_id')}/annotations", json=body)

    def update_annotation(self, annotation_id: int, **fields: Any) -> dict[str, Any]:
        return self._json("PATCH", f"/api/annotations/{_int_id(annotation_id, 'annotation_id')}", json=fields)

    def delete_annotation(self, annotation_id: int) -> None:
        self.request("DELETE", f"/api/annotations/{_int_id(annotation_id, 'annotation_id')}")

    # -- ML backend, webhooks, storage ---------------------------------------------------------------

    def list_ml_backends(self, pid: int | str) -> list[dict[str, Any]]:
        return self._json("GET", "/api/ml", params={"project": as_project_id(pid)})

    def get_ml_backend(self, ml_backend_id: int) -> dict[str, Any]:
        """One ML backend; Label Studio checks its ``/health`` first, so ``readable_state`` is current."""
        return self._json("GET", f"/api/ml/{_int_id(ml_backend_id, 'ml_backend_id')}")

    def create_ml_backend(self, pid: int | str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Connect an ML backend. Label Studio calls its ``/health`` and ``/setup`` (with the basic-auth
        credentials in ``fields``) and answers 400 naming what failed; on success it also creates a
        webhook to ``<url>/webhook``, without credentials, unless one to that URL exists."""
        body = {"project": as_project_id(pid), **_ml_backend_fields(fields)}
        return self._json("POST", "/api/ml", json=body)

    def update_ml_backend(
        self, ml_backend_id: int, pid: int | str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Change an ML backend; Label Studio checks ``/health`` and ``/setup`` again."""
        body = {"project": as_project_id(pid), **_ml_backend_fields(fields)}
        return self._json("PATCH", f"/api/ml/{_int_id(ml_backend_id, 'ml_backend_id')}", json=body)

    def train(self, ml_backend_id: int) -> None:
        """The UI's "Start training": Label Studio sends START_TRAINING to the backend's /webhook."""
        self.request("POST", f"/api/ml/{_int_id(ml_backend_id, 'ml_backend_id')}/train")

    def list_webhooks(self, pid: int | str) -> list[dict[str, Any]]:
        return self._json("GET", "/api/webhooks", params={"project": as_project_id(pid)})

    def create_webhook(
        self, pid: int | str, url: str, *, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """A webhook for every action, with payloads (what Label Studio creates for an ML backend)."""
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        body = {
            "project": as_project_id(pid),
            "url": url,
            "send_payload": True,
            "send_for_all_actions": True,
            "is_active": True,
            "headers": dict(headers or {}),
        }
        return self._json("POST", "/api/webhooks", json=body)

    def update_webhook(self, webhook_id: int, **fields: Any) -> dict[str, Any]:
        if not fields:
            raise ValueError("update_webhook needs at least one field to change, e.g. headers={...}")
        return self._json("PATCH", f"/api/webhooks/{_int_id(webhook_id, 'webhook_id')}", json=fields)

    def list_local_storages(self, pid: int | str) -> list[dict[str, Any]]:
        return self._json("GET", "/api/storages/localfiles", params={"project": as_project_id(pid)})

    def add_local_storage(
        self, pid: int | str, path: str | Path, *, title: str | None = None
    ) -> dict[str, Any]:
        """Make sure a local-files storage for ``path`` exists (idempotent by path); returns it.

        Label Studio serves ``/data/local-files/?d=...`` only for files under such a storage, and only
        if ``path`` is inside its LOCAL_FILES_DOCUMENT_ROOT (it answers 400 otherwise).
        """
        project = as_project_id(pid)
        wanted = str(Path(path).resolve())
        for storage in self.list_local_storages(project):
            if str(storage.get("path", "")).rstrip("/") == wanted.rstrip("/"):
                return storage
        body: dict[str, Any] = {"project": project, "path": wanted, "use_blob_urls": True}
        if title is not None:
            body["title"] = title
        return self._json("POST", "/api/storages/localfiles", json=body)


# -- helpers -------------------------------------------------------------------------------------------


ML_BACKEND_FIELDS = frozenset(
    {"url", "title", "auth_method", "basic_auth_user", "basic_auth_pass", "is_interactive", "timeout"}
)


def _ml_backend_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an ML backend we set, checked before any request."""
    unknown = sorted(set(fields) - ML_BACKEND_FIELDS)
    if unknown:
        raise ValueError(f"unknown ML backend field(s) {unknown}; known: {sorted(ML_BACKEND_FIELDS)}")
    url = fields.get("url")
    if url is not None and (not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https")):
        raise ValueError(f"url must be the backend's http(s) URL, got {url!r}")
    if fields.get("auth_method") == "BASIC_AUTH" and not (
        fields.get("basic_auth_user") and fields.get("basic_auth_pass")
    ):
        raise ValueError("auth_method BASIC_AUTH needs basic_auth_user and basic_auth_pass")
    return dict(fields)


def updated_after_filter(when: float) -> dict[str, Any]:
    """Data Manager filters for tasks updated after ``when`` (epoch seconds), in the datetime format
    Label Studio's filter parser reads (``%Y-%m-%dT%H:%M:%S.%fZ``, UTC)."""
    if isinstance(when, bool) or not isinstance(when, int | float) or not when >= 0:
        raise ValueError(f"updated_after must be epoch seconds >= 0, got {when!r}")
    value = datetime.fromtimestamp(float(when), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "conjunction": "and",
        "items": [
            {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": value}
        ],
    }


def _never_sent(exc: requests.ConnectionError) -> bool:
    """Whether the error happened while opening the connection, so the server cannot have seen the request.

    requests raises ConnectTimeout for a connect timeout and ConnectionError(MaxRetryError(reason=...))
    for a refused or unresolvable host (urllib3's NewConnectionError/NameResolutionError, both
    ConnectTimeoutError subclasses); a connection dropped after sending comes as ProtocolError instead.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return True
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, MaxRetryError):
        cause = cause.reason
    return isinstance(cause, ConnectTimeoutError)


def as_project_id(pid: int | str) -> int:
    """Project ids are ints in Label Studio and strings in our state; accept both, reject the rest."""
    if isinstance(pid, bool):
        raise TypeError("pid must be a Label Studio project id (int or digit string), got bool")
    if isinstance(pid, int):
        value = pid
    elif isinstance(pid, str) and pid.strip().isdigit():
        value = int(pid.strip())
    else:
        raise ValueError(f"pid must be a Label Studio project id (int or digit string), got {pid!r}")
    if value < 1:
        raise ValueError(f"pid must be positive, got {pid!r}")
    return value


def _int_id(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{name} must be an int id, got {type(value).__name__}")
    try:
        out = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an int id, got {value!r}") from None
    if out < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return out


def _as_task(task: Any, *, index: int) -> dict[str, Any]:
    if not isinstance(task, Mapping):
        raise TypeError(f"tasks[{index}] must be a dict, got {type(task).__name__}")
    out = dict(task) if "data" in task else {"data": dict(task)}
    if not isinstance(out["data"], Mapping) or not out["data"]:
        raise ValueError(f"tasks[{index}]['data'] must be a non-empty dict")
    return out


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
