"""gunicorn's threaded worker, but a thread is taken only by a request that has fully arrived.

Why: in gunicorn's gthread worker the thread that serves a request also reads it, so a dozen clients
sending their headers a byte at a time held all THREADS threads, and /health and /webhook timed out for
as long as they liked (Label Studio sends each webhook once, with a 1 s timeout). Here the worker's
event loop (its main thread, which already accepts connections and waits on kept-alive ones) reads each
request without blocking: headers, then a Content-Length or chunked body, up to REQUEST_LIMIT bytes and
within REQUEST_SECONDS (slower: closed). Only then does a thread parse and serve it, from memory. A slow
client costs a socket and a few kilobytes, up to --worker-connections of them.

The request handling itself is gunicorn's (the bytes read ahead are handed to its parser), so this is
as fast as plain gthread for normal clients.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import selectors
import time
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

REQUEST_SECONDS = 30.0  # a request (headers and body) not received by then is dropped
HEAD_LIMIT = 64 * 1024  # gunicorn's own header limits are below this
NOTIFY_SECONDS = 1.0  # heartbeat to the arbiter; its --timeout is 120 s
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)
_EXPECT = re.compile(rb"\r\nexpect:[ \t]*100-continue", re.IGNORECASE)


def body_limit() -> int:
    """REID_AL_MAX_BODY_BYTES (the app answers 413 past it); read from the environment the worker was
    started with, so this module needs no settings object."""
    try:
        return int(os.environ.get("REID_AL_MAX_BODY_BYTES", "") or 10 * 1024 * 1024)
    except ValueError:
        return 10 * 1024 * 1024


def request_complete(buffer: bytes | bytearray, limit: int) -> bool:
    """True once ``buffer`` holds a whole request (or more than can be useful: the app sees the rest)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return len(buffer) > HEAD_LIMIT
    head = bytes(buffer[: end + 2])
    body = len(buffer) - end - 4
    if _CHUNKED.search(head):
        return buffer.endswith(b"0\r\n\r\n") or body > limit
    match = _CONTENT_LENGTH.search(head)
    length = int(match.group(1)) if match else 0
    return body >= length or length > limit


class PrereadThreadWorker(ThreadWorker):
    """gthread worker whose main loop reads each request completely before a thread serves it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit = body_limit()
        self.reading: dict[int, TConn] = {}
        self._beat = float("-inf")

    def notify(self) -> None:
        """Tell the arbiter we are alive at most once a second: gunicorn's loop beats on every turn
        (several per request), and each beat is a utime() call, about 5% of the worker's CPU at 200
        webhooks/s. The arbiter only needs one beat per --timeout."""
        now = time.monotonic()
        if now - self._beat >= NOTIFY_SECONDS:
            self._beat = now
            super().notify()

    # --- new connections and kept-alive ones both start by being read here ------------------------
    def accept(self, listener: Any) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking
        self._read_ahead(conn)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_ahead(conn)

    def _read_ahead(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        conn.preread = bytearray()
        conn.read_deadline = time.monotonic() + REQUEST_SECONDS
        conn.continued = False
        self.reading[id(conn)] = conn
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_request_bytes, conn))

    def _on_request_bytes(self, conn: TConn, client: Any) -> None:
        try:
            data = client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # closed by the client
            self._drop(conn)
            return
        conn.preread += data
        head_done = b"\r\n\r\n" in conn.preread
        if not conn.continued and head_done and _EXPECT.search(bytes(conn.preread[:HEAD_LIMIT])):
            conn.continued = True  # the client waits for this before it sends the body
            try:
                client.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                self._drop(conn)
                return
        if request_complete(conn.preread, self.limit):
            self.poller.unregister(client)
            del self.reading[id(conn)]
            conn.data_ready = True
            self.enqueue_req(conn)

    def _drop(self, conn: TConn) -> None:
        self.reading.pop(id(conn), None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Also close connections whose request did not arrive within REQUEST_SECONDS."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c in self.reading.values() if c.read_deadline < now]:
            self._drop(conn)

    # --- a thread serves the request from the bytes read ahead ------------------------------------------
    def handle(self, conn: TConn) -> Any:
        preread = getattr(conn, "preread", None)
        if preread:
            conn.preread = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(preread))
        return super().handle(conn)
