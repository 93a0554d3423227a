"""A real Label Studio 1.23.2 for tests: installed into its own cached venv, started headless.

Used as a pytest plugin (``pytest_plugins = ["e2e.label_studio"]``) so that every test module that
needs Label Studio shares ONE session-scoped instance. The venv lives in ``<repo>/.cache/
label-studio-venv`` (override: ``REID_AL_LS_VENV``); it is created with ``pip install
label-studio==1.23.2`` (about 65 s, about 1 GB) the first time and reused afterwards, so the README's
single test command works on a fresh CI machine. Label Studio pins Django 5.2, ``rq<2.7`` and
``redis<5.3``: it can never share the backend's venv.

The environment is exactly the one in LABEL_STUDIO.md: a fixed legacy API token, local-files serving
under a temp document root, and the default banned subnets off so a backend on 127.0.0.1 can connect.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from ml_backend.labelstudio import LabelStudioClient

LABEL_STUDIO_VERSION = "1.23.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".cache" / "label-studio-venv"
INSTALL_TIMEOUT_S = 1200.0
START_TIMEOUT_S = float(os.environ.get("REID_AL_LS_START_TIMEOUT", "240"))
TOKEN = "5eed0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b"  # 40 hex chars: LABEL_STUDIO_USER_TOKEN
USERNAME = "admin@example.com"
PASSWORD = "reid-al-e2e-password"
# Variables of the calling environment that must not leak into Label Studio's Django process.
_SCRUB = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE", "REDIS_URL", "DATABASE_URL")


def venv_dir() -> Path:
    return Path(os.environ.get("REID_AL_LS_VENV", str(DEFAULT_VENV)))


def _marker(venv: Path) -> Path:
    return venv / f".reid-al-label-studio-{LABEL_STUDIO_VERSION}"


def _installed_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    proc = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_label_studio(venv: Path | None = None) -> Path:
    """Path of the ``label-studio`` executable, installing it into ``venv`` first when missing.

    A file lock makes concurrent test processes wait for one install instead of racing two.
    """
    venv = venv_dir() if venv is None else venv
    exe = venv / "bin" / "label-studio"
    if _marker(venv).exists() and exe.exists():
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _marker(venv).exists() and exe.exists():
            return exe
        if exe.exists() and _installed_version(venv) == LABEL_STUDIO_VERSION:
            _marker(venv).write_text(LABEL_STUDIO_VERSION + "\n")
            return exe
        if venv.exists():
            shutil.rmtree(venv)  # a half-finished or different install: start clean
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        log_path = venv.parent / "label-studio-install.log"
        with open(log_path, "w") as log_fh:
            subprocess.run([base_python, "-m", "venv", str(venv)], check=True, stdout=log_fh, stderr=log_fh)
            proc = subprocess.run(
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    f"label-studio=={LABEL_STUDIO_VERSION}",
                ],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        if proc.returncode != 0 or not exe.exists():
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"pip install label-studio=={LABEL_STUDIO_VERSION} failed (log {log_path}):\n{tail}"
            )
        _marker(venv).write_text(LABEL_STUDIO_VERSION + "\n")
    return exe


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LabelStudioServer:
    """A running Label Studio; ``document_root`` is where test images must live to be served."""

    url: str
    token: str
    username: str
    password: str
    data_dir: Path
    document_root: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    _pat: str | None = field(default=None, repr=False)

    def client(self, **kwargs: float) -> LabelStudioClient:
        return LabelStudioClient(self.url, self.token, **kwargs)

    def personal_access_token(self) -> str:
        """The admin's Personal Access Token (a JWT refresh token), as Account & Settings creates it:
        ``POST /api/token/``. Label Studio keeps one per user (409 while one is valid), so it is
        created once per server and kept."""
        if self._pat is None:
            resp = requests.post(
                f"{self.url}/api/token/", headers={"Authorization": f"Token {self.token}"}, timeout=30
            )
            if resp.status_code != 201:
                raise RuntimeError(f"creating a Personal Access Token: HTTP {resp.status_code} {resp.text}")
            self._pat = str(resp.json()["token"])
        return self._pat

    def rotate_personal_access_token(self) -> tuple[str, str]:
        """Revoke the PAT and create a new one (``POST /api/token/rotate/``); returns (old, new)."""
        old = self.personal_access_token()
        resp = requests.post(
            f"{self.url}/api/token/rotate/",
            json={"refresh": old},
            headers={"Authorization": f"Token {self.token}"},
            timeout=30,
        )
        if resp.status_code != 200:
            raise RuntimeError(f"rotating the Personal Access Token: HTTP {resp.status_code} {resp.text}")
        self._pat = str(resp.json()["refresh"])
        return old, self._pat

    @contextlib.contextmanager
    def legacy_tokens_disabled(self) -> Iterator[None]:
        """Label Studio's default since 1.20: ``Authorization: Token`` refused (the organization's
        ``legacy_api_tokens_enabled`` off, ``/api/jwt/settings``); turned back on afterwards for the
        other tests, which use the legacy token."""
        from ml_backend.labelstudio import LabelStudioAuth

        def set_legacy(enabled: bool) -> None:
            bearer = LabelStudioAuth(self.url, self.personal_access_token()).header()
            resp = requests.post(
                f"{self.url}/api/jwt/settings",
                json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": enabled},
                headers={"Authorization": bearer},
                timeout=30,
            )
            if resp.status_code != 200 or resp.json().get("legacy_api_tokens_enabled") is not enabled:
                raise RuntimeError(f"/api/jwt/settings legacy={enabled}: HTTP {resp.status_code} {resp.text}")

        set_legacy(False)
        try:
            yield
        finally:
            set_legacy(True)

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def label_studio_env(data_dir: Path, document_root: Path, venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith("LABEL_STUDIO_")}
    env.update(
        {
            "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": USERNAME,
            "LABEL_STUDIO_PASSWORD": PASSWORD,
            "LABEL_STUDIO_USER_TOKEN": TOKEN,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
            "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "false",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        }
    )
    return env


def start_label_studio(
    root: Path, *, venv: Path | None = None, port: int | None = None, timeout: float = START_TIMEOUT_S
) -> LabelStudioServer:
    """Start Label Studio headless with its data and document root under ``root``; wait for /health."""
    venv = venv_dir() if venv is None else venv
    exe = ensure_label_studio(venv)
    data_dir = root / "data"
    document_root = root / "files"
    data_dir.mkdir(parents=True, exist_ok=True)
    document_root.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    log_path = root / "label-studio.log"
    server = LabelStudioServer(
        url=f"http://127.0.0.1:{port}",
        token=TOKEN,
        username=USERNAME,
        password=PASSWORD,
        data_dir=data_dir,
        document_root=document_root.resolve(),
        log_path=log_path,
    )
    cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log_fh:
        server.process = subprocess.Popen(
            cmd,
            cwd=root,
            env=label_studio_env(data_dir, server.document_root, venv),
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends it and its children only
        )
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            code = server.process.returncode
            raise RuntimeError(f"Label Studio exited with code {code} while starting:\n{server.log_tail()}")
        try:
            if requests.get(f"{server.url}/health", timeout=2).json().get("status") == "UP":
                break
        except (requests.RequestException, ValueError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"Label Studio did not answer /health within {timeout:.0f}s:\n{server.log_tail()}"
            )
        time.sleep(0.5)
    return server


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """One real Label Studio for the whole test session (installed on first use)."""
    server = start_label_studio(tmp_path_factory.mktemp("label-studio"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ls_client(label_studio: LabelStudioServer) -> Iterator[LabelStudioClient]:
    client = label_studio.client()
    try:
        yield client
    finally:
        client.close()
