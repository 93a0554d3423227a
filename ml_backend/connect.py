"""`reid-al connect`: make a project's ML-backend connection and webhook in Label Studio what they must be.

Why a command: by hand it takes two settings pages, and with basic auth on the second step is easy to
miss. Label Studio connects the backend only when the connection itself carries the credentials (its
/health and /setup calls are refused otherwise), and it creates the webhook to ``<backend>/webhook``
without any: every answer then gets a 401 and is lost. Here the ML backend and the webhook are
compared with what they must be and changed only where they differ, so a second run changes nothing
and says so. Label Studio never shows a stored password, but the webhook's ``Authorization`` header
holds it: when that header is current, so is the password the ML backend was given with it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ml_backend.errors import ConnectError, LabelStudioError
from ml_backend.labelstudio import as_project_id

if TYPE_CHECKING:
    from ml_backend.labelstudio import LabelStudioClient

__all__ = [
    "TITLE",
    "Change",
    "ConnectError",
    "ConnectReport",
    "basic_auth_header",
    "connect_project",
    "connected_backends",
]

TITLE = "reid-al"
CONNECTED = "Connected"


@dataclass
class Change:
    """What happened to one object in Label Studio: ``created``, ``updated`` or ``unchanged``."""

    what: str
    id: int
    action: str
    details: list[str] = field(default_factory=list)

    def line(self, project: int, url: str) -> str:
        detail = f" ({'; '.join(self.details)})" if self.details else ""
        return f"project {project}: {self.what} {self.id} at {url} {self.action}{detail}"


@dataclass
class ConnectReport:
    """The outcome for one project; ``state`` is Label Studio's view of the connection afterwards."""

    project: int
    url: str
    auth: str
    ml_backend: Change
    webhooks: list[Change]
    state: str
    error_message: str | None = None
    others: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in (self.ml_backend, *self.webhooks))

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED

    def lines(self) -> list[str]:
        out = [self.ml_backend.line(self.project, self.url)]
        out += [hook.line(self.project, f"{self.url}/webhook") for hook in self.webhooks]
        out.append(
            f"project {self.project}: Label Studio reports the backend {self.state}"
            + (f": {self.error_message}" if self.error_message else "")
            + f"; {self.auth}"
        )
        if self.others:
            out.append(
                f"project {self.project}: also connected to {', '.join(self.others)} (left as they are)"
            )
        if not self.changed:
            out.append(f"project {self.project}: already connected as configured, nothing changed")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed, "connected": self.connected}


def basic_auth_header(user: str, password: str) -> str:
    """The ``Authorization`` value the webhook must carry for the backend's basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _url_of(obj: Mapping[str, Any]) -> str:
    return str(obj.get("url") or "").rstrip("/")


def _check_url(url: str) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValueError(
            f"url: the backend's URL as Label Studio reaches it must be http(s)://host[:port], "
            f"got {url!r} (REID_AL_BACKEND_URL or --url)"
        )
    return url.rstrip("/")


def connected_backends(client: LabelStudioClient, project: int | str) -> list[str]:
    """URLs of the ML backends the project is connected to."""
    return [_url_of(m) for m in client.list_ml_backends(as_project_id(project))]


def connect_project(
    client: LabelStudioClient,
    project: int | str,
    url: str,
    *,
    auth: tuple[str, str] | None = None,
    title: str = TITLE,
) -> ConnectReport:
    """Create or update the project's ML backend at ``url`` (with basic auth when ``auth`` is given)
    and its webhook to ``url/webhook`` (with the matching ``Authorization`` header); idempotent."""
    pid = as_project_id(project)
    url = _check_url(url)
    if auth is not None and not (isinstance(auth, tuple) and len(auth) == 2 and all(auth)):
        raise ValueError("auth: basic auth needs a user and a password (BASIC_AUTH_USER, BASIC_AUTH_PASS)")
    header = basic_auth_header(*auth) if auth is not None else None
    hook_url = f"{url}/webhook"
    _step(
        f"reading project {pid}",
        lambda: client.get_project(pid),
        not_found=(
            f"project: Label Studio at {client.url} has no project {pid}; create it first (label_config.xml)"
        ),
    )
    hooks = _step(
        "listing webhooks", lambda: [h for h in client.list_webhooks(pid) if _url_of(h) == hook_url]
    )
    credentials_current = auth is None or (
        bool(hooks) and all((h.get("headers") or {}).get("Authorization") == header for h in hooks)
    )
    backends = _step("listing ML backends", lambda: client.list_ml_backends(pid))
    others = [_url_of(m) for m in backends if _url_of(m) != url]
    existing = [m for m in backends if _url_of(m) == url]
    ml_backend, backend = _ensure_ml_backend(client, pid, url, title, auth, existing, credentials_current)
    if not hooks:  # Label Studio created one with a new ML backend, unless one to that URL existed
        hooks = _step(
            "listing webhooks", lambda: [h for h in client.list_webhooks(pid) if _url_of(h) == hook_url]
        )
        made_by_label_studio = bool(hooks)
    else:
        made_by_label_studio = False
    webhooks = _ensure_webhooks(client, pid, hook_url, header, hooks, made_by_label_studio)
    return ConnectReport(
        project=pid,
        url=url,
        auth=f"basic auth as {auth[0]!r}" if auth else "no auth (BASIC_AUTH_USER unset)",
        ml_backend=ml_backend,
        webhooks=webhooks,
        state=str(backend.get("readable_state") or "unknown"),
        error_message=backend.get("error_message") or None,
        others=others,
    )


def _ensure_ml_backend(
    client: LabelStudioClient,
    pid: int,
    url: str,
    title: str,
    auth: tuple[str, str] | None,
    existing: list[dict[str, Any]],
    credentials_current: bool,
) -> tuple[Change, dict[str, Any]]:
    wanted: dict[str, Any] = {"url": url, "title": title, "auth_method": "BASIC_AUTH" if auth else "NONE"}
    if auth is not None:
        wanted.update(basic_auth_user=auth[0], basic_auth_pass=auth[1])
    if not existing:
        backend = _step(f"connecting the ML backend at {url}", lambda: client.create_ml_backend(pid, wanted))
        return Change(
            "ML backend", int(backend["id"]), "created", ["basic auth" if auth else "no auth"]
        ), backend
    current = existing[0]
    details = []
    if current.get("title") != title:
        details.append(f"title {current.get('title')!r} -> {title!r}")
    if (current.get("auth_method") or "NONE") != wanted["auth_method"]:
        details.append(f"auth_method {current.get('auth_method') or 'NONE'} -> {wanted['auth_method']}")
    if auth is not None:
        if current.get("basic_auth_user") != auth[0]:
            details.append("basic_auth_user")
        if not current.get("basic_auth_pass_is_set") or not credentials_current:
            details.append("basic_auth_pass")
    ml_id = int(current["id"])
    if details:
        backend = _step(
            f"updating ML backend {ml_id} at {url}", lambda: client.update_ml_backend(ml_id, pid, wanted)
        )
        return Change("ML backend", ml_id, "updated", details), backend
    # Unchanged: read it again, which makes Label Studio check /health and /setup now.
    backend = _step(f"reading ML backend {ml_id}", lambda: client.get_ml_backend(ml_id))
    return Change("ML backend", ml_id, "unchanged"), backend


def _ensure_webhooks(
    client: LabelStudioClient,
    pid: int,
    hook_url: str,
    header: str | None,
    hooks: list[dict[str, Any]],
    made_by_label_studio: bool,
) -> list[Change]:
    if not hooks:
        headers = {"Authorization": header} if header else {}
        hook = _step(
            f"creating the webhook to {hook_url}",
            lambda: client.create_webhook(pid, hook_url, headers=headers),
        )
        return [Change("webhook", int(hook["id"]), "created", ["Authorization header set"] if header else [])]
    out = []
    for hook in hooks:
        hook_id = int(hook["id"])
        headers = dict(hook.get("headers") or {})
        patch: dict[str, Any] = {}
        details = ["by Label Studio with the ML backend"] if made_by_label_studio else []
        if headers.get("Authorization") != header:
            if header is None:
                headers.pop("Authorization", None)
                details.append("Authorization header removed")
            else:
                headers["Authorization"] = header
                details.append("Authorization header set")
            patch["headers"] = headers
        for key, value in (("is_active", True), ("send_payload", True), ("send_for_all_actions", True)):
            if hook.get(key) is not value:
                patch[key] = value
                details.append(f"{key} on")
        if patch:
            _step(f"updating webhook {hook_id}", lambda h=hook_id, p=patch: client.update_webhook(h, **p))
        action = "created" if made_by_label_studio else "updated" if patch else "unchanged"
        out.append(Change("webhook", hook_id, action, details))
    return out


def _step(what: str, call: Any, *, not_found: str | None = None) -> Any:
    """Run one Label Studio call; a failure says which step failed and what Label Studio answered."""
    try:
        return call()
    except LabelStudioError as exc:
        if exc.status == 404 and not_found is not None:
            raise ValueError(not_found) from exc
        if exc.status == 401:
            reason = "LABEL_STUDIO_API_KEY was refused (401): check the token"
        elif exc.status is None:
            reason = f"Label Studio is not reachable: {exc.body}"
        else:
            reason = f"Label Studio answered {exc.status}: {exc.body[:500]}"
        raise ConnectError(f"{what} failed: {reason}") from exc
