"""Image fetching through ml_backend.fetch only: allowed origins, no file:// or paths outside the document
root, a size cap, redirects re-checked, and one total deadline that a trickling server cannot stretch.

The servers are real sockets on 127.0.0.1 (two ports = two origins)."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from ml_backend.errors import InputError
from ml_backend.fetch import FetchPolicy, fetch_image, origin_of
from ml_backend.labelstudio import TOKEN_REFRESH_PATH
from ml_backend.predict import Predictor, ServingModel
from ml_backend.settings import Settings
from ml_backend.state import ProjectState

IMAGE = b"\x89PNG fake image bytes"


def _jwt(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


PAT_OK = _jwt({"token_type": "refresh", "exp": 8_000_000_000, "jti": "fetch-ok"})
PAT_REVOKED = _jwt({"token_type": "refresh", "exp": 8_000_000_000, "jti": "fetch-revoked"})
ACCESS = _jwt({"token_type": "access", "exp": 8_000_000_000, "jti": "fetch-access"})


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /img, /auth (echoes the Authorization header), /big (announced), /stream-big (no length),
    /trickle (a byte every 0.2 s), /slow-headers, /to-img, /to-other, /loop."""

    other = ""  # the other server's base URL, set by the fixture

    def log_message(self, *_args: object) -> None:
        pass

    def _send(self, body: bytes, status: int = 200, length: bool = True, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/img.png":
                self._send(IMAGE)
            elif path == "/auth":
                self._send((self.headers.get("Authorization") or "none").encode())
            elif path == "/big":
                self.send_response(200)
                self.send_header("Content-Length", str(50 * 1024 * 1024))
                self.end_headers()
            elif path == "/stream-big":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"x" * 65536)
            elif path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif path == "/slow-headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for k in range(100):
                    self.wfile.write(f"X-{k}: y\r\n".encode())
                    self.wfile.flush()
                    time.sleep(0.2)
            elif path == "/to-img":
                self._send(b"", 302, Location="/img.png")
            elif path == "/to-other":
                self._send(b"", 302, Location=f"{self.other}/auth")
            elif path == "/loop":
                self._send(b"", 302, Location="/loop")
            else:
                self._send(b"no", 404)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self) -> None:
        """Label Studio's token refresh: the PAT "pat-ok" gets an access token, any other a 401."""
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path == TOKEN_REFRESH_PATH and body.get("refresh") == PAT_OK:
            self._send(json.dumps({"access": ACCESS}).encode())
        else:
            self._send(b'{"detail": "Token is invalid"}', 401)


def serve() -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    """(Label Studio's URL, another origin)."""
    main, main_url = serve()
    other, other_url = serve()
    Handler.other = other_url
    yield main_url, other_url
    for server in (main, other):
        server.shutdown()
        server.server_close()


@pytest.fixture()
def policy(servers: tuple[str, str], tmp_path: Path) -> FetchPolicy:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x y.jpg").write_bytes(IMAGE)
    return FetchPolicy(
        label_studio_url=servers[0],
        api_key="secret-token",
        document_root=str(root),
        max_bytes=1024 * 1024,
        seconds=1.0,
    )


def test_local_files_inside_the_document_root(policy: FetchPolicy, tmp_path: Path) -> None:
    root = Path(policy.document_root)
    assert fetch_image("/data/local-files/?d=sub/x%20y.jpg", policy) == (root / "sub" / "x y.jpg").resolve()
    assert fetch_image(str(root / "sub" / "x y.jpg"), policy) == (root / "sub" / "x y.jpg").resolve()
    with pytest.raises(FileNotFoundError):
        fetch_image("/data/local-files/?d=sub/missing.jpg", policy)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "/etc/passwd",
        "/data/local-files/?d=../../../etc/passwd",
        "ftp://127.0.0.1/a.jpg",
        "relative/a.png",
        "data:image/png;base64,AAAA",
        "/data/local-files/?d=",
        "x" * 5000,
    ],
)
def test_what_is_never_read(policy: FetchPolicy, tmp_path: Path, url: str) -> None:
    with pytest.raises(InputError) as info:
        fetch_image(url, policy, tmp_path / "cache")
    assert info.value.field == "url"
    assert not (tmp_path / "cache").exists()


def test_a_symlink_out_of_the_document_root_is_refused(policy: FetchPolicy) -> None:
    (Path(policy.document_root) / "sub" / "escape.jpg").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match="outside"):
        fetch_image("/data/local-files/?d=sub/escape.jpg", policy)


def test_a_local_file_over_the_cap_is_refused(policy: FetchPolicy) -> None:
    (Path(policy.document_root) / "sub" / "huge.jpg").write_bytes(b"x" * (policy.max_bytes + 1))
    with pytest.raises(InputError, match="REID_AL_IMAGE_MAX_BYTES"):
        fetch_image("/data/local-files/?d=sub/huge.jpg", policy)


def test_downloads_from_label_studio_with_its_token_only(
    policy: FetchPolicy, servers: tuple[str, str], tmp_path: Path
) -> None:
    main, other = servers
    path = fetch_image(f"{main}/img.png", policy, tmp_path / "cache")
    assert path.read_bytes() == IMAGE and path.parent == tmp_path / "cache"
    assert fetch_image(f"{main}/auth", policy, tmp_path / "cache").read_bytes() == b"Token secret-token"
    # a relative Label Studio URL (/data/upload/...) goes to LABEL_STUDIO_URL
    with pytest.raises(OSError, match="404"):
        fetch_image("/data/upload/1/a.png", policy, tmp_path / "cache")
    with pytest.raises(InputError, match="REID_AL_IMAGE_ORIGINS"):
        fetch_image(f"{other}/img.png", policy, tmp_path / "cache")
    allowed = FetchPolicy(**{**policy.__dict__, "origins": (str(origin_of(other)),)})
    assert fetch_image(f"{other}/auth", allowed, tmp_path / "c2").read_bytes() == b"none"  # no token there


def test_a_personal_access_token_downloads_with_its_access_token(
    policy: FetchPolicy, servers: tuple[str, str], tmp_path: Path
) -> None:
    main, other = servers
    pat = FetchPolicy(**{**policy.__dict__, "api_key": PAT_OK, "origins": (str(origin_of(other)),)})
    assert fetch_image(f"{main}/auth", pat, tmp_path / "a").read_bytes() == f"Bearer {ACCESS}".encode()
    assert fetch_image(f"{other}/auth", pat, tmp_path / "b").read_bytes() == b"none"  # no token there
    revoked = FetchPolicy(**{**policy.__dict__, "api_key": PAT_REVOKED})
    with pytest.raises(PermissionError, match="tried as a personal access token"):
        fetch_image(f"{main}/auth", revoked, tmp_path / "c")


def test_redirects_are_checked_like_the_first_url(
    policy: FetchPolicy, servers: tuple[str, str], tmp_path: Path
) -> None:
    main, other = servers
    assert fetch_image(f"{main}/to-img", policy, tmp_path / "c").read_bytes() == IMAGE
    with pytest.raises(InputError, match="redirected"):
        fetch_image(f"{main}/to-other", policy, tmp_path / "c")
    allowed = FetchPolicy(**{**policy.__dict__, "origins": (str(origin_of(other)),)})
    # followed to an allowed origin, but the token stays with Label Studio
    assert fetch_image(f"{main}/to-other", allowed, tmp_path / "c2").read_bytes() == b"none"
    with pytest.raises(InputError, match="redirects"):
        fetch_image(f"{main}/loop", policy, tmp_path / "c")


def test_size_cap_announced_and_streamed(
    policy: FetchPolicy, servers: tuple[str, str], tmp_path: Path
) -> None:
    main, _ = servers
    for path in ("/big", "/stream-big"):
        with pytest.raises(InputError, match="REID_AL_IMAGE_MAX_BYTES"):
            fetch_image(f"{main}{path}", policy, tmp_path / "c")
    assert [p.name for p in (tmp_path / "c").glob("*")] == []  # no partial file left behind


@pytest.mark.parametrize("path", ["/trickle", "/slow-headers"])
def test_the_total_deadline_holds_against_a_trickling_server(
    policy: FetchPolicy, servers: tuple[str, str], tmp_path: Path, path: str
) -> None:
    main, _ = servers
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        fetch_image(f"{main}{path}", policy, tmp_path / "c")
    assert time.monotonic() - start < policy.seconds + 0.5
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        fetch_image(f"{main}{path}", policy, tmp_path / "c", deadline=time.monotonic() + 0.3)
    assert time.monotonic() - start < 0.8


def test_predict_holds_its_embedding_bound_against_slow_images(
    redis_client: redis.Redis, servers: tuple[str, str], tmp_path: Path
) -> None:
    """REID_AL_PREDICT_EMBED_SECONDS bounds the whole on-the-fly phase: fetching and embedding."""
    main, _ = servers
    settings = Settings(
        model_dir=tmp_path, label_studio_url=main, predict_embed_seconds=1.0, image_fetch_seconds=30.0
    )

    def model(_state: ProjectState) -> ServingModel:
        return ServingModel(version="v1", row_of={"a": 0}, embeddings=np.ones((1, 2), dtype=np.float32))

    def slow_embed(paths: list[Path]) -> np.ndarray:
        time.sleep(5)
        return np.ones((len(paths), 2), dtype=np.float32)

    tasks = [
        {"id": k, "data": {"id_a": "a", "id_b": f"slow{k}", "image_b": f"{main}/trickle?{k}"}}
        for k in range(3)
    ]
    tasks.append({"id": 9, "data": {"id_a": "a", "id_b": "fast", "image_b": f"{main}/img.png"}})
    state = ProjectState(redis_client, "3")
    # slow downloads: the first trickling image uses up the second; a slow encoder: the call stops waiting
    for batch in (tasks, tasks[3:]):
        predictor = Predictor(settings, load_model=model, embed_images=slow_embed)
        start = time.monotonic()
        results = predictor.predict(batch, None, state)
        assert time.monotonic() - start < 2.0, "the embedding bound was not enforced"
        assert len(results) == len(batch)
