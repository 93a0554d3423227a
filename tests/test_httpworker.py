"""The web worker's own behaviour, apart from a running server (tests/test_serve_faults.py runs one)."""

from __future__ import annotations

import pytest

from ml_backend import httpworker
from ml_backend.httpworker import PrereadThreadWorker, request_complete


class _Beats:
    def __init__(self) -> None:
        self.n = 0

    def notify(self) -> None:
        self.n += 1


def test_the_arbiter_is_told_once_a_second_not_on_every_loop_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(httpworker.time, "monotonic", lambda: clock[0])
    worker = PrereadThreadWorker.__new__(PrereadThreadWorker)  # no arbiter, no sockets: notify() only
    worker.tmp, worker._beat = _Beats(), float("-inf")
    for _ in range(500):  # a burst of requests: several loop turns each
        worker.notify()
        clock[0] += 0.001
    assert worker.tmp.n == 1
    clock[0] += httpworker.NOTIFY_SECONDS
    worker.notify()
    assert worker.tmp.n == 2


@pytest.mark.parametrize(("raw", "done"), [
    (b"POST /webhook HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", False),
    (b"POST /webhook HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd", True),
    (b"POST /webhook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n", False),
    (b"POST /webhook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", True),
    (b"GET /health HTTP/1.1\r\nHost: x\r\n", False),
])
def test_a_request_is_served_only_once_it_has_fully_arrived(raw: bytes, done: bool) -> None:
    assert request_complete(raw, limit=1024) is done
