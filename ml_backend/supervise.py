"""`reid-al serve`'s supervisor: the children it starts come back by themselves when they die.

Why: the web server, the RQ workers and the embedded redis-server are separate processes, and one of
them dying (a kill -9, an out-of-memory kill, a crash) used to stop everything and restart nothing.
Now a dead child is restarted after a back-off (doubling from BACKOFF_MIN to BACKOFF_MAX, reset once it
has stayed up STABLE_S), each exit and return is printed, and the state of every child is written to
MODEL_DIR/serve.json, which /health and `reid-al status` show. Redis comes back on the same port with
the same password and its data, so no other child needs a restart for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

BACKOFF_MIN = 0.25
BACKOFF_MAX = 8.0
STABLE_S = 30.0
STATUS_FILE = "serve.json"

Process = Any  # subprocess.Popen[bytes]


@dataclass
class Child:
    """One supervised process: how to start and stop it, and what happened to it."""

    name: str
    start: Callable[[], Process]
    stop: Callable[[Process], Any]
    process: Process | None = None
    restarts: int = 0
    backoff: float = BACKOFF_MIN
    restart_at: float | None = None
    started_at: float = 0.0
    last_exit: int | None = None
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if self.process is not None and self.process.poll() is None:
            return "up"
        return "restarting" if self.restart_at is not None else "down"

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "pid": self.process.pid if self.process is not None else None,
                "restarts": self.restarts, "last_exit": self.last_exit, "last_error": self.last_error,
                "up_since": self.started_at if self.state == "up" else None, **self.extra}


class Supervisor:
    """Start children, restart the ones that die, stop them in reverse order."""

    def __init__(self, status_path: Path | None = None, out: TextIO | None = None) -> None:
        self.children: list[Child] = []
        self.status_path = status_path
        self.out = out

    def say(self, message: str) -> None:
        print(f"reid-al: {message}", file=self.out, flush=True)

    def add(self, child: Child) -> Child:
        """Start ``child`` now (a failure to start at all propagates) and supervise it."""
        child.process = child.start()
        child.started_at = time.time()
        self.children.append(child)
        self.write_status()
        return child

    def poll(self, now: float | None = None) -> None:
        """One supervision round: notice deaths, restart what is due, reset back-offs of stable children."""
        now = time.monotonic() if now is None else now
        changed = False
        for child in self.children:
            process = child.process
            if process is not None and process.poll() is not None and child.restart_at is None:
                child.last_exit = process.returncode
                child.restart_at = now + child.backoff
                self.say(f"{child.name} (pid {process.pid}) exited with {process.returncode}; "
                         f"restarting in {child.backoff:g} s")
                child.backoff = min(child.backoff * 2, BACKOFF_MAX)
                changed = True
            if child.restart_at is not None and now >= child.restart_at:
                changed = True
                if process is not None:
                    with contextlib.suppress(Exception):
                        child.stop(process)  # reap what the dead child left in its session
                try:
                    child.process = child.start()
                except Exception as exc:  # e.g. its port is taken: try again later
                    child.last_error = f"{type(exc).__name__}: {exc}"
                    child.restart_at = now + child.backoff
                    self.say(f"{child.name} failed to start ({child.last_error}); "
                             f"retrying in {child.backoff:g} s")
                    child.backoff = min(child.backoff * 2, BACKOFF_MAX)
                    continue
                child.restart_at = None
                child.restarts += 1
                child.started_at = time.time()
                child.last_error = None
                self.say(f"{child.name} is back (pid {child.process.pid}, restart {child.restarts})")
            elif (child.state == "up" and child.backoff > BACKOFF_MIN
                  and time.time() - child.started_at > STABLE_S):
                child.backoff = BACKOFF_MIN
        if changed:
            self.write_status()

    def stop_all(self) -> None:
        """Stop every child, the last started first; no restart after this."""
        for child in reversed(self.children):
            child.restart_at = None
            if child.process is not None:
                child.stop(child.process)
        if self.status_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.status_path.unlink()

    def status(self) -> dict[str, Any]:
        return {"supervisor_pid": os.getpid(), "updated_at": time.time(),
                "children": {child.name: child.describe() for child in self.children}}

    def write_status(self) -> None:
        if self.status_path is None:
            return
        tmp = self.status_path.with_name(self.status_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.status(), handle)
        os.replace(tmp, self.status_path)


def read_status(model_dir: Path) -> dict[str, Any] | None:
    """What a running `reid-al serve` wrote about its children; None when no supervisor runs there."""
    try:
        status = json.loads((model_dir / STATUS_FILE).read_text())
        os.kill(int(status["supervisor_pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return status if isinstance(status, dict) else None


def status_lines(status: dict[str, Any] | None) -> list[str]:
    """One line per child for `reid-al status`."""
    if not status:
        return []
    lines = []
    for name, child in sorted(status.get("children", {}).items()):
        line = f"{name}: {child['state']}"
        if child.get("pid"):
            line += f" (pid {child['pid']})"
        if child.get("restarts"):
            line += f", restarted {child['restarts']} time(s), last exit {child.get('last_exit')}"
        if child.get("last_error"):
            line += f", {child['last_error']}"
        lines.append(line)
    return lines
