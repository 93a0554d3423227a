"""LabelStudioClient: argument checks and retry policy locally, every endpoint against a real Label Studio."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.client import RemoteDisconnected
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from PIL import Image
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from ml_backend.connect import ConnectError, basic_auth_header, connect_project
from ml_backend.errors import LabelStudioAuthError
from ml_backend.labelstudio import (
    LEGACY,
    PAT,
    TOKEN_REFRESH_PATH,
    LabelStudioAuth,
    LabelStudioClient,
    LabelStudioConnectionError,
    LabelStudioError,
    token_kind,
)
from ml_backend.pool import local_files_url

CONFIG = """<View>
  <View style="display: flex; gap: 1em">
    <Image name="image_a" value="$image_a"/>
    <Image name="image_b" value="$image_b"/>
  </View>
  <Choices name="answer" toName="image_a" choice="single" required="true">
    <Choice value="same" hotkey="1"/>
    <Choice value="different" hotkey="2"/>
    <Choice value="unsure" hotkey="3"/>
  </Choices>
</View>"""


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def choice(value: str) -> list[dict[str, Any]]:
    return [{"from_name": "answer", "to_name": "image_a", "type": "choices", "value": {"choices": [value]}}]


def jwt(kind: str | None, *, expires_in: float = 300.0, **claims: Any) -> str:
    """A JWT shaped like Label Studio's (HS256 header, simplejwt claims); the signature is never checked
    by the client, so any bytes do. A fresh jti keeps every token distinct."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    payload = {
        "token_type": kind,
        "exp": int(time.time() + expires_in),
        "iat": int(time.time()),
        "jti": uuid.uuid4().hex,
        "user_id": "1",
        **claims,
    }
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


def pair_task(k: int) -> dict[str, Any]:
    return {"data": {"image_a": f"/a/{k}.png", "image_b": f"/b/{k}.png", "pair_id": f"pair-{k:04d}"}}


# -- a scripted local HTTP server: retry policy without Label Studio ------------------------------------


DROP = 0  # a scripted "status": close the connection after reading the request, with no answer


class _Scripted(BaseHTTPRequestHandler):
    script: ClassVar[list[tuple[int, str]]] = []
    calls: ClassVar[list[tuple[str, str, dict[str, str]]]] = []
    bodies: ClassVar[list[bytes]] = []

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).bodies.append(self.rfile.read(length) if length else b"")
        type(self).calls.append((self.command, self.path, dict(self.headers)))
        status, body = type(self).script.pop(0) if type(self).script else (200, "{}")
        if status == DROP:  # read the request, then hang up without answering (a crashed/restarting server)
            self.close_connection = True
            return
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _serve

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[_Scripted]]]:
    handler = type("Handler", (_Scripted,), {"script": [], "calls": [], "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="url"):
        LabelStudioClient("", "k")
    with pytest.raises(ValueError, match="url"):
        LabelStudioClient("localhost:8080", "k")
    with pytest.raises(ValueError, match="api_key"):
        LabelStudioClient("http://localhost:8080", " ")
    with pytest.raises(ValueError, match="timeout"):
        LabelStudioClient("http://localhost:8080", "k", timeout=0)
    with pytest.raises(ValueError, match="retries"):
        LabelStudioClient("http://localhost:8080", "k", retries=-1)
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY is a JWT of token_type 'access'"):
        LabelStudioClient("http://localhost:8080", jwt("access"))
    client = LabelStudioClient("http://localhost:8080/", "key")
    assert client.url == "http://localhost:8080"
    assert (client.token_kind, client.auth.header()) == (LEGACY, "Token key")


def test_arguments_are_checked_before_any_request(scripted: tuple[str, type[_Scripted]]) -> None:
    url, handler = scripted
    client = LabelStudioClient(url, "k")
    with pytest.raises(ValueError, match="pid"):
        client.get_project("abc")
    with pytest.raises(TypeError, match="pid"):
        client.get_project(True)
    with pytest.raises(ValueError, match="pid"):
        client.create_tasks(0, [pair_task(1)])
    with pytest.raises(TypeError, match=r"tasks\[1\]"):
        client.create_tasks(1, [pair_task(0), "not a task"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"tasks\[0\]\['data'\]"):
        client.create_tasks(1, [{"data": {}}])
    with pytest.raises(ValueError, match=r"predictions\[0\] is missing 'model_version'"):
        client.import_predictions(1, [{"task": 1, "result": []}])
    with pytest.raises(ValueError, match="ordering"):
        client.ensure_view(1, ordering="tasks:predictions_score")
    with pytest.raises(ValueError, match="title"):
        client.create_project("ab", CONFIG)
    with pytest.raises(ValueError, match="basic_auth"):
        client.create_ml_backend(
            1, {"url": "http://x:9090", "auth_method": "BASIC_AUTH", "basic_auth_user": "u"}
        )
    with pytest.raises(ValueError, match="unknown ML backend field"):
        client.update_ml_backend(1, 1, {"url": "http://x:9090", "password": "p"})
    with pytest.raises(ValueError, match="url"):
        client.create_webhook(1, "ftp://x/webhook")
    with pytest.raises(ValueError, match="patch_project"):
        client.patch_project(1)
    assert handler.calls == []


def test_get_is_retried_on_503_then_succeeds(scripted: tuple[str, type[_Scripted]]) -> None:
    url, handler = scripted
    handler.script[:] = [(503, "busy"), (503, "busy"), (200, '{"status": "UP"}')]
    client = LabelStudioClient(url, "k", retries=3, backoff=0)
    assert client.health() == {"status": "UP"}
    assert len(handler.calls) == 3


def test_post_is_not_retried_on_server_error_and_error_names_status_and_body(
    scripted: tuple[str, type[_Scripted]],
) -> None:
    url, handler = scripted
    handler.script[:] = [(503, '{"detail": "database is locked"}')]
    client = LabelStudioClient(url, "k", retries=3, backoff=0)
    with pytest.raises(LabelStudioError, match="database is locked") as info:
        client.create_tasks(7, [pair_task(1)])
    assert info.value.status == 503
    assert "/api/projects/7/import" in str(info.value)
    assert len(handler.calls) == 1  # a retried POST could create the tasks twice


def test_import_answer_without_ids_is_an_error(scripted: tuple[str, type[_Scripted]]) -> None:
    url, handler = scripted
    handler.script[:] = [(201, '{"task_count": 1}')]
    with pytest.raises(LabelStudioError, match="expected 1 task ids"):
        LabelStudioClient(url, "k").create_tasks(1, [pair_task(1)])


def test_listing_that_shrinks_while_paging_ends_cleanly(scripted: tuple[str, type[_Scripted]]) -> None:
    url, handler = scripted
    page1 = json.dumps({"total": 3, "tasks": [{"id": 1, "data": {"pair_id": "p1"}}, {"id": 2, "data": {}}]})
    handler.script[:] = [(200, page1), (404, '{"detail": "Invalid page."}')]  # tasks deleted meanwhile
    client = LabelStudioClient(url, "k", backoff=0)
    assert [t["id"] for t in client.iter_tasks(3, page_size=2)] == [1, 2]
    assert [c[1] for c in handler.calls] == [
        "/api/tasks?project=3&page_size=2&page=1",
        "/api/tasks?project=3&page_size=2&page=2",
    ]
    handler.script[:] = [(404, '{"detail": "Not found."}')]
    with pytest.raises(LabelStudioError) as other_404:
        list(client.iter_tasks(3))
    assert other_404.value.status == 404


def test_next_task_none_on_empty_queue_but_errors_still_raise(scripted: tuple[str, type[_Scripted]]) -> None:
    url, handler = scripted
    handler.script[:] = [(404, '{"detail": "There are no tasks for x"}'), (500, "boom")]
    client = LabelStudioClient(url, "k", retries=0)
    assert client.get_next_task(2, view=5) is None
    assert handler.calls[0][1] == "/api/projects/2/next?view=5"
    with pytest.raises(LabelStudioError, match="boom"):
        client.get_next_task(2)


def test_connection_refused_is_retried_then_raises() -> None:
    client = LabelStudioClient(f"http://127.0.0.1:{free_port()}", "k", retries=2, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(LabelStudioConnectionError) as info:
        client.get_project(1)
    assert info.value.status is None
    assert time.monotonic() - t0 < 5


def test_ensure_view_is_idempotent_by_title(scripted: tuple[str, type[_Scripted]]) -> None:
    """push_cycle calls it on every push: an existing view costs one GET, a deleted one is recreated."""
    url, handler = scripted
    mine = {"id": 4, "data": {"title": "Most informative first", "ordering": ["tasks:data.queue"]}}
    other = {"id": 2, "data": {"title": "Default", "ordering": []}}
    handler.script[:] = [(200, json.dumps([other, mine]))]
    client = LabelStudioClient(url, "k", backoff=0)
    assert client.ensure_view(3) == 4
    assert [(c[0], c[1]) for c in handler.calls] == [("GET", "/api/dm/views?project=3")]
    handler.script[:] = [(200, json.dumps([other])), (201, '{"id": 9}')]  # the user deleted it
    assert client.ensure_view(3) == 9
    assert [c[0] for c in handler.calls] == ["GET", "GET", "POST"]


def test_post_is_not_resent_after_the_server_dropped_the_connection(
    scripted: tuple[str, type[_Scripted]],
) -> None:
    """ "Connection aborted" comes after the request was sent: Label Studio may have imported the tasks."""
    url, handler = scripted
    handler.script[:] = [(DROP, ""), (201, '{"task_ids": [1]}')]
    client = LabelStudioClient(url, "k", retries=3, backoff=0)
    with pytest.raises(LabelStudioConnectionError, match="Connection aborted"):
        client.create_tasks(7, [pair_task(1)])
    assert [c[0] for c in handler.calls] == ["POST"]  # sent once: no duplicate import
    handler.script[:] = [(DROP, ""), (DROP, ""), (200, "[]")]
    assert client.list_views(7) == []  # a GET is safe to send again
    assert [c[0] for c in handler.calls] == ["POST", "GET", "GET", "GET"]


def test_post_is_retried_when_the_connection_was_never_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("ml_backend.labelstudio.time.sleep", sleeps.append)
    client = LabelStudioClient(f"http://127.0.0.1:{free_port()}", "k", retries=2, backoff=0.01)
    with pytest.raises(LabelStudioConnectionError, match=r"NewConnectionError|refused"):
        client.create_tasks(1, [pair_task(1)])  # refused: the request never left this machine
    assert len(sleeps) == 2


class _FailingSession(requests.Session):
    """Raises the given transport errors in turn, then answers 201 with one task id."""

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__()
        self.errors = errors
        self.sent = 0

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent += 1
        if self.errors:
            raise self.errors.pop(0)
        resp = requests.Response()
        resp.status_code, resp._content = 201, b'{"task_ids": [5]}'
        return resp


@pytest.mark.parametrize(
    ("error", "resent"),
    [
        (requests.ConnectTimeout("connect timed out"), True),
        (requests.ConnectionError(MaxRetryError(None, "/x", NewConnectionError(None, "refused"))), True),  # type: ignore[arg-type]
        (requests.ConnectionError(ProtocolError("Connection aborted.", RemoteDisconnected("closed"))), False),
        (requests.ReadTimeout("read timed out"), False),
    ],
)
def test_which_transport_errors_resend_a_post(error: Exception, resent: bool) -> None:
    session = _FailingSession([error])
    client = LabelStudioClient("http://ls.invalid", "k", retries=1, backoff=0, session=session)
    if resent:
        assert client.create_tasks(1, [pair_task(1)]) == [5]
        assert session.sent == 2
    else:
        with pytest.raises(LabelStudioConnectionError):
            client.create_tasks(1, [pair_task(1)])
        assert session.sent == 1


# -- the two kinds of API token, against the scripted server ---------------------------------------------


def test_token_kind_tells_a_personal_access_token_from_a_legacy_token() -> None:
    assert token_kind("5eed0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b") == LEGACY
    assert token_kind(jwt("refresh")) == PAT
    assert token_kind("a.b.c") == LEGACY  # three dotted parts are not yet a JWT
    with pytest.raises(ValueError, match=r"token_type 'access'.*Personal Access Token"):
        token_kind(jwt("access"))
    with pytest.raises(ValueError, match="token_type None"):
        token_kind(jwt(None))
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY"):
        token_kind(" ")


def test_a_pat_is_exchanged_once_and_its_access_token_sent_as_bearer(
    scripted: tuple[str, type[_Scripted]],
) -> None:
    url, handler = scripted
    pat, access = jwt("refresh", expires_in=3e9), jwt("access")
    handler.script = [(200, json.dumps({"access": access})), (200, "{}"), (201, "{}")]
    client = LabelStudioClient(url, pat)
    assert client.token_kind == PAT
    client.get_project(1)
    client.create_annotation(7, choice("same"))
    assert [(c[0], c[1].split("?")[0], c[2].get("Authorization")) for c in handler.calls] == [
        ("POST", TOKEN_REFRESH_PATH, None),  # the refresh call itself carries no Authorization
        ("GET", "/api/projects/1", f"Bearer {access}"),
        ("POST", "/api/tasks/7/annotations", f"Bearer {access}"),
    ]
    assert json.loads(handler.bodies[0]) == {"refresh": pat}
    assert client.auth.refreshes == 1


def test_an_access_token_about_to_expire_is_refreshed_before_the_call(
    scripted: tuple[str, type[_Scripted]],
) -> None:
    url, handler = scripted
    short, fresh = jwt("access", expires_in=10), jwt("access")  # 10 s < ACCESS_MARGIN_S
    handler.script = [(200, json.dumps({"access": short})), (200, json.dumps({"access": fresh})), (200, "{}")]
    client = LabelStudioClient(url, jwt("refresh", expires_in=3e9))
    assert client.auth.header() == f"Bearer {short}"
    client.get_project(1)
    assert handler.calls[-1][2]["Authorization"] == f"Bearer {fresh}"
    assert client.auth.refreshes == 2


def test_a_refused_access_token_is_refreshed_once_and_the_post_resent(
    scripted: tuple[str, type[_Scripted]],
) -> None:
    url, handler = scripted
    revoked, fresh = jwt("access"), jwt("access")
    handler.script = [
        (200, json.dumps({"access": revoked})),
        (401, '{"detail": "Authentication credentials were not provided."}'),
        (200, json.dumps({"access": fresh})),
        (201, '{"id": 5}'),
    ]
    client = LabelStudioClient(url, jwt("refresh", expires_in=3e9))
    assert client.create_annotation(7, choice("same")) == {"id": 5}
    assert [(c[0], c[2].get("Authorization")) for c in handler.calls] == [
        ("POST", None),
        ("POST", f"Bearer {revoked}"),
        ("POST", None),
        ("POST", f"Bearer {fresh}"),  # a 401 ran nothing, so the POST is sent again
    ]


def test_a_second_401_is_an_auth_error_naming_the_personal_access_token(
    scripted: tuple[str, type[_Scripted]],
) -> None:
    url, handler = scripted
    denied = (401, '{"detail": "Authentication credentials were not provided."}')
    handler.script = [
        (200, json.dumps({"access": jwt("access")})),
        denied,
        (200, json.dumps({"access": jwt("access")})),
        denied,
    ]
    client = LabelStudioClient(url, jwt("refresh", expires_in=3e9))
    with pytest.raises(LabelStudioAuthError, match="tried as a personal access token") as err:
        client.get_project(1)
    assert (err.value.status, err.value.token_kind) == (401, PAT)
    assert len(handler.calls) == 4  # refreshed once, not in a loop


def test_a_refused_pat_fails_at_the_refresh_endpoint_and_says_so(
    scripted: tuple[str, type[_Scripted]],
) -> None:
    url, handler = scripted
    handler.script = [(401, '{"detail": "Token is blacklisted", "code": "token_not_valid"}')]
    client = LabelStudioClient(url, jwt("refresh", expires_in=3e9))
    expected = r"/api/token/refresh/ -> HTTP 401: .*blacklisted.*as a personal access token.*not revoked"
    with pytest.raises(LabelStudioAuthError, match=expected):
        client.get_project(1)
    assert [c[1] for c in handler.calls] == [TOKEN_REFRESH_PATH]
    handler.script = [(200, '{"detail": "no access here"}')]
    with pytest.raises(LabelStudioError, match=re.escape("expected {'access': <JWT>}")):
        LabelStudioAuth(url, jwt("refresh", expires_in=3e9)).header()


def test_a_token_exchange_that_cannot_connect_is_retried_like_the_call(
    scripted: tuple[str, type[_Scripted]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = scripted
    access = jwt("access")
    handler.script = [(200, json.dumps({"access": access})), (200, "{}")]
    real_post, refused = requests.post, [0]

    def flaky_post(*args: Any, **kwargs: Any) -> requests.Response:
        if not refused[0]:  # Label Studio restarting: the first exchange finds the port closed
            refused[0] += 1
            raise requests.ConnectionError("connection refused")
        return real_post(*args, **kwargs)

    monkeypatch.setattr(requests, "post", flaky_post)
    client = LabelStudioClient(url, jwt("refresh", expires_in=3e9), retries=2, backoff=0.01)
    client.create_annotation(7, choice("same"))
    assert [(c[0], c[2].get("Authorization")) for c in handler.calls] == [
        ("POST", None),
        ("POST", f"Bearer {access}"),
    ]
    monkeypatch.setattr(
        requests, "post", lambda *a, **k: (_ for _ in ()).throw(requests.ConnectionError("down"))
    )
    with pytest.raises(LabelStudioConnectionError, match="/api/token/refresh/ -> no response"):
        LabelStudioClient(url, jwt("refresh", expires_in=3e9), retries=1, backoff=0.01).get_project(1)


def test_a_refused_legacy_token_is_not_retried_and_the_error_says_legacy(
    scripted: tuple[str, type[_Scripted]],
) -> None:
    url, handler = scripted
    handler.script = [(401, '{"detail": "legacy token authentication has been disabled"}')]
    expected = r"tried as a legacy token.*legacy tokens are enabled"
    with pytest.raises(LabelStudioAuthError, match=expected) as err:
        LabelStudioClient(url, "ab" * 20).delete_annotation(3)
    assert err.value.token_kind == LEGACY and len(handler.calls) == 1


# -- against a real Label Studio ---------------------------------------------------------------------


@pytest.fixture
def project(ls_client: LabelStudioClient) -> Iterator[int]:
    pid = int(ls_client.create_project("client test project", CONFIG)["id"])
    try:
        yield pid
    finally:
        ls_client.delete_project(pid)


@pytest.mark.e2e
def test_health_auth_and_project_crud(label_studio: Any, ls_client: LabelStudioClient, project: int) -> None:
    assert ls_client.health()["status"] == "UP"
    assert ls_client.current_user()["email"] == label_studio.username
    assert ls_client.get_project(project)["title"] == "client test project"
    patched = ls_client.patch_project(str(project), title="renamed project")
    assert patched["title"] == "renamed project"
    # Label Studio refuses a model_version nothing was predicted with: predictions first, then PATCH
    with pytest.raises(LabelStudioError, match="model_version") as unknown_version:
        ls_client.patch_project(project, model_version="never-predicted")
    assert unknown_version.value.status == 400
    with pytest.raises(LabelStudioError) as missing:
        ls_client.get_project(999_999)
    assert missing.value.status == 404
    with pytest.raises(LabelStudioError) as unauthorised:
        LabelStudioClient(label_studio.url, "0" * 40).get_project(project)
    assert unauthorised.value.status == 401


@pytest.mark.e2e
def test_a_personal_access_token_works_where_legacy_tokens_are_refused(
    label_studio: Any, ls_client: LabelStudioClient, project: int
) -> None:
    """Label Studio's default since 1.20: legacy tokens off. The PAT is exchanged at the real
    /api/token/refresh/, used as Bearer, refreshed after a 401, and every failure names the kind tried."""
    pat = label_studio.personal_access_token()
    with label_studio.legacy_tokens_disabled():
        client = LabelStudioClient(label_studio.url, pat)
        assert client.token_kind == PAT
        assert client.current_user()["email"] == label_studio.username
        (task,) = client.create_tasks(project, [pair_task(1)])
        annotation = client.create_annotation(task, choice("same"))
        assert client.get_task(task)["annotations"][0]["id"] == annotation["id"]
        # An access token Label Studio refuses (signed with another key: as good as expired): one refresh,
        # and the POST goes through once
        refreshes = client.auth.refreshes
        client.auth._access = jwt("access")
        client.update_annotation(annotation["id"], result=choice("different"))
        assert client.auth.refreshes == refreshes + 1
        assert client.get_task(task)["annotations"][0]["result"][0]["value"]["choices"] == ["different"]
        refused = "legacy token authentication has been disabled"
        with pytest.raises(LabelStudioAuthError, match=refused) as legacy:
            LabelStudioClient(label_studio.url, label_studio.token).get_project(project)
        assert (legacy.value.status, legacy.value.token_kind) == (401, LEGACY)
        assert "tried as a legacy token" in str(legacy.value)
    # A revoked (rotated) PAT fails at the refresh endpoint, and says it was tried as a PAT
    old, new = label_studio.rotate_personal_access_token()
    with pytest.raises(LabelStudioAuthError, match=r"/api/token/refresh/ -> HTTP 401.*personal access token"):
        LabelStudioAuth(label_studio.url, old).header()
    assert LabelStudioClient(label_studio.url, new).get_project(project)["id"] == project


@pytest.mark.e2e
def test_create_tasks_returns_ids_in_order_and_listing_pages(
    ls_client: LabelStudioClient, project: int
) -> None:
    tasks = [pair_task(k) for k in range(130)]
    ids = ls_client.create_tasks(project, tasks)
    assert len(ids) == 130 and len(set(ids)) == 130
    listed = list(ls_client.iter_tasks(project, page_size=40))  # 4 pages, the last one partial
    assert len(listed) == 130
    by_id = {t["id"]: t for t in listed}
    for k, tid in enumerate(ids):
        assert by_id[tid]["data"]["pair_id"] == f"pair-{k:04d}"
        assert by_id[tid]["total_annotations"] == 0
        assert by_id[tid]["total_predictions"] == 0
    assert ls_client.task_ids_by_pair(project) == {f"pair-{k:04d}": tid for k, tid in enumerate(ids)}
    # data given without the {"data": ...} wrapper is wrapped
    [extra] = ls_client.create_tasks(project, [{"image_a": "/x.png", "image_b": "/y.png", "pair_id": "bare"}])
    assert ls_client.get_task(extra)["data"]["pair_id"] == "bare"


@pytest.mark.e2e
def test_the_view_serves_by_the_queue_field_whatever_the_prediction_scores(
    ls_client: LabelStudioClient, project: int
) -> None:
    """The order is data.queue (fixed-width text, lowest first); the score shown is P(answer) and does
    not reorder anything; moving a task is one PATCH of its data."""
    queue = ["0.700000", "0.200000", "0.900000", "0.400000"]
    tasks = [{"data": {**pair_task(k)["data"], "queue": q}} for k, q in enumerate(queue)]
    ids = ls_client.create_tasks(project, tasks)
    confident = [0.99, 0.51, 0.6, 0.95]  # P(answer): unrelated to the order on purpose
    preds = [{"task": tid, "result": choice("same"), "score": s, "model_version": "m1"}
             for tid, s in zip(ids, confident, strict=True)]
    assert ls_client.import_predictions(project, preds) == 4
    ls_client.patch_project(project, model_version="m1")
    view = ls_client.ensure_view(project)
    assert ls_client.ensure_view(project) == view  # idempotent by title
    assert [v["data"]["title"] for v in ls_client.list_views(project)].count("Most informative first") == 1
    listed = list(ls_client.iter_tasks(project, view=view, fields="all"))
    assert [t["id"] for t in listed] == [ids[1], ids[3], ids[0], ids[2]]
    assert [t["predictions_score"] for t in listed] == [0.51, 0.95, 0.99, 0.6]  # what annotators read
    served = ls_client.get_next_task(project, view=view)
    assert served is not None and served["id"] == ids[1]
    data = ls_client.get_task(ids[2])["data"]
    ls_client.update_task_data(ids[2], {**data, "queue": "0.000000"})  # a review: to the top
    assert next(t["id"] for t in ls_client.iter_tasks(project, view=view)) == ids[2]
    assert ls_client.get_task(ids[2])["data"] == {**data, "queue": "0.000000"}
    # a changed ordering is repaired, not duplicated
    assert ls_client.ensure_view(project, ordering=["-tasks:data.queue"]) == view
    assert next(t["id"] for t in ls_client.iter_tasks(project, view=view)) == ids[0]


@pytest.mark.e2e
def test_next_task_follows_the_queue_field_answer_after_answer(ls_client: LabelStudioClient,
                                                               project: int) -> None:
    """40 tasks in random queue places: Label Studio serves them one by one in exactly that order."""
    rng = random.Random(0)
    queue = [f"{rng.random():.6f}" for _ in range(40)]
    ids = ls_client.create_tasks(project, [{"data": {**pair_task(k)["data"], "queue": q}}
                                           for k, q in enumerate(queue)])
    view = ls_client.ensure_view(project)
    served = []
    while (task := ls_client.get_next_task(project, view=view)) is not None:
        served.append(task["id"])
        ls_client.create_annotation(task["id"], choice("same"))
    assert served == [ids[k] for k in sorted(range(40), key=lambda k: queue[k])]


@pytest.mark.e2e
def test_next_task_is_none_when_queue_is_empty(ls_client: LabelStudioClient, project: int) -> None:
    assert ls_client.get_next_task(project) is None


@pytest.mark.e2e
def test_delete_tasks(ls_client: LabelStudioClient, project: int) -> None:
    ids = ls_client.create_tasks(project, [pair_task(k) for k in range(5)])
    assert ls_client.delete_tasks(project, ids[1:3]) == 2
    assert ls_client.delete_tasks(project, []) == 0
    assert sorted(t["id"] for t in ls_client.iter_tasks(project)) == [ids[0], ids[3], ids[4]]


@pytest.mark.e2e
def test_annotations_created_updated_skipped_deleted(ls_client: LabelStudioClient, project: int) -> None:
    ids = ls_client.create_tasks(project, [pair_task(k) for k in range(3)])
    a1 = ls_client.create_annotation(ids[0], choice("same"))
    a2 = ls_client.create_annotation(ids[1], [], was_cancelled=True)
    ls_client.update_annotation(a1["id"], result=choice("different"))
    seen = {ann["id"]: (ann, task) for ann, task in ls_client.iter_annotations(project)}
    assert set(seen) == {a1["id"], a2["id"]}
    ann, task = seen[a1["id"]]
    assert task["id"] == ids[0] and task["data"]["pair_id"] == "pair-0000"
    assert ann["result"][0]["value"]["choices"] == ["different"]
    assert ann["was_cancelled"] is False and ann["completed_by"] is not None
    assert seen[a2["id"]][0]["was_cancelled"] is True and seen[a2["id"]][0]["result"] == []
    ls_client.delete_annotation(a1["id"])
    assert [a["id"] for a, _ in ls_client.iter_annotations(project)] == [a2["id"]]
    with pytest.raises(LabelStudioError) as gone:
        ls_client.delete_annotation(a1["id"])
    assert gone.value.status == 404


@pytest.mark.e2e
def test_local_storage_is_idempotent_and_serves_local_files_urls(
    label_studio: Any, ls_client: LabelStudioClient, project: int
) -> None:
    folder: Path = label_studio.document_root / "client-test"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "red one.png")
    first = ls_client.add_local_storage(project, folder)
    assert ls_client.add_local_storage(project, str(folder) + "/")["id"] == first["id"]
    assert len(ls_client.list_local_storages(project)) == 1
    url = local_files_url(folder / "red one.png", label_studio.document_root)
    resp = requests.get(
        label_studio.url + url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=10
    )
    assert resp.status_code == 200 and resp.content[:4] == b"\x89PNG"
    with pytest.raises(LabelStudioError, match="LOCAL_FILES_DOCUMENT_ROOT") as outside:
        ls_client.add_local_storage(project, label_studio.data_dir)
    assert outside.value.status == 400


# -- connecting an ML backend: a recording stand-in on loopback (LS calls it over real HTTP) ----------


class _Backend(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None, dict[str, Any] | None]]] = []
    required: ClassVar[str | None] = None  # the Authorization header it demands (401 otherwise), like reid-al

    def _reply(self, payload: dict[str, Any]) -> None:
        required = type(self).required
        status = 401 if required is not None and self.headers.get("Authorization") != required else 200
        data = json.dumps(payload if status == 200 else {"error": "basic authentication required"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Authorization"), None))
        self._reply({"status": "UP", "model_class": "recorder"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        self._reply({"model_version": "rec-0"} if self.path == "/setup" else {"status": "ok"})

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def recording_backend() -> Iterator[tuple[str, type[_Backend]]]:
    handler = type("Recorder", (_Backend,), {"seen": [], "required": None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _hooks(client: LabelStudioClient, project: int) -> list[dict[str, Any]]:
    return [
        {k: h[k] for k in ("id", "url", "headers", "is_active", "updated_at")}
        for h in client.list_webhooks(project)
    ]


def _backends(client: LabelStudioClient, project: int) -> list[dict[str, Any]]:
    keys = ("id", "url", "title", "auth_method", "basic_auth_user", "basic_auth_pass_is_set")
    return [{k: m.get(k) for k in keys} for m in client.list_ml_backends(project)]


@pytest.mark.e2e
def test_connect_project_creates_then_changes_nothing_then_follows_every_change(
    ls_client: LabelStudioClient, project: int, recording_backend: tuple[str, type[_Backend]]
) -> None:
    url, handler = recording_backend
    expected_auth = basic_auth_header("u", "p w")
    handler.required = expected_auth  # Label Studio's /health and /setup calls must carry it
    first = connect_project(ls_client, project, url, auth=("u", "p w"))
    assert (first.ml_backend.action, first.connected, first.changed) == ("created", True, True)
    assert [(h.action, h.details) for h in first.webhooks] == [
        ("created", ["by Label Studio with the ML backend", "Authorization header set"])
    ]
    assert _backends(ls_client, project) == [
        {
            "id": first.ml_backend.id,
            "url": url,
            "title": "reid-al",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "u",
            "basic_auth_pass_is_set": True,
        }
    ]
    hooks = _hooks(ls_client, project)
    assert [(h["url"], h["headers"]) for h in hooks] == [(url + "/webhook", {"Authorization": expected_auth})]
    setup_body = next(b for p, _, b in handler.seen if p == "/setup")
    assert setup_body is not None and setup_body["project"].startswith(f"{project}.")

    # Again (a trailing slash is the same URL): nothing changes, and it says so.
    backends = _backends(ls_client, project)
    second = connect_project(ls_client, project, url + "/", auth=("u", "p w"))
    assert not second.changed and second.connected
    assert [second.ml_backend.action] + [h.action for h in second.webhooks] == ["unchanged", "unchanged"]
    assert second.lines()[-1] == f"project {project}: already connected as configured, nothing changed"
    assert _backends(ls_client, project) == backends and _hooks(ls_client, project) == hooks

    # Label Studio's events reach the backend with the credentials.
    handler.seen.clear()
    ls_client.train(first.ml_backend.id)
    ls_client.create_tasks(project, [pair_task(1)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len([p for p, _, _ in handler.seen if p == "/webhook"]) < 2:
        time.sleep(0.1)
    hooks_seen = [(auth, body) for p, auth, body in handler.seen if p == "/webhook"]
    assert {body["action"] for _, body in hooks_seen if body} >= {"START_TRAINING", "TASKS_CREATED"}
    assert all(auth == expected_auth for _, auth, _ in handler.seen)

    # A new password: Label Studio is given it (and checks it), and so is the webhook's header.
    handler.required = basic_auth_header("u", "new")
    third = connect_project(ls_client, project, url, auth=("u", "new"))
    assert (third.ml_backend.action, third.ml_backend.details, third.connected) == (
        "updated",
        ["basic_auth_pass"],
        True,
    )
    assert [(h.action, h.details) for h in third.webhooks] == [("updated", ["Authorization header set"])]
    assert ls_client.list_webhooks(project)[0]["headers"] == {"Authorization": handler.required}

    # A webhook deleted by hand comes back; one switched off is switched on.
    ls_client.request("DELETE", f"/api/webhooks/{hooks[0]['id']}")
    fourth = connect_project(ls_client, project, url, auth=("u", "new"))
    # Label Studio never shows the stored password: without a webhook header to compare, it is sent again.
    assert (fourth.ml_backend.action, fourth.ml_backend.details) == ("updated", ["basic_auth_pass"])
    assert [(h.action, h.details) for h in fourth.webhooks] == [("created", ["Authorization header set"])]
    ls_client.update_webhook(fourth.webhooks[0].id, is_active=False)
    fifth = connect_project(ls_client, project, url, auth=("u", "new"))
    assert [(h.action, h.details) for h in fifth.webhooks] == [("updated", ["is_active on"])]

    # Basic auth turned off on the backend: off in Label Studio too, header gone.
    handler.required = None
    sixth = connect_project(ls_client, project, url, auth=None)
    assert (sixth.ml_backend.action, sixth.ml_backend.details) == (
        "updated",
        ["auth_method BASIC_AUTH -> NONE"],
    )
    assert [(h.action, h.details) for h in sixth.webhooks] == [("updated", ["Authorization header removed"])]
    assert ls_client.list_webhooks(project)[0]["headers"] == {}
    assert not connect_project(ls_client, project, url, auth=None).changed


@pytest.mark.e2e
def test_connect_project_failures_name_the_step_and_change_nothing(
    label_studio: Any,
    ls_client: LabelStudioClient,
    project: int,
    recording_backend: tuple[str, type[_Backend]],
) -> None:
    url, handler = recording_backend
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        ConnectError, match=rf"connecting the ML backend at {dead} failed: Label Studio answered 400"
    ):
        connect_project(ls_client, project, dead, auth=("u", "p"))
    handler.required = basic_auth_header("u", "right")
    with pytest.raises(ConnectError, match="authentication parameters"):
        connect_project(ls_client, project, url, auth=("u", "wrong"))
    assert ls_client.list_ml_backends(project) == [] and ls_client.list_webhooks(project) == []
    with pytest.raises(ValueError, match="has no project 999999"):
        connect_project(ls_client, 999_999, url, auth=("u", "right"))
    with pytest.raises(ConnectError, match=r"LABEL_STUDIO_API_KEY was refused \(401\)"):
        connect_project(LabelStudioClient(label_studio.url, "0" * 40), project, url, auth=("u", "right"))
    with pytest.raises(ValueError, match="url"):
        connect_project(ls_client, project, "backend:9090")


@pytest.mark.e2e
def test_connect_to_unreachable_backend_is_a_clear_error(ls_client: LabelStudioClient, project: int) -> None:
    with pytest.raises(LabelStudioError, match="health check failed") as info:
        ls_client.create_ml_backend(project, {"url": f"http://127.0.0.1:{free_port()}", "title": "dead"})
    assert info.value.status == 400
