"""The Flask app behind gunicorn's asyncio worker: requests are read by the event loop, then run in threads.

Why: with gunicorn's threaded worker, a thread reads the request it serves, so a dozen clients sending
their headers a byte at a time held all THREADS threads and /health and /webhook timed out for as long
as they cared to (Label Studio's webhooks, sent once with a 1 s timeout, would have been lost). Here the
asyncio worker reads headers and this adapter reads the whole body (at most REID_AL_MAX_BODY_BYTES, within
BODY_SECONDS) without holding a thread; only a complete request takes one of the THREADS threads. A slow
client costs a coroutine and a socket (up to gunicorn's --worker-connections).
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

BODY_SECONDS = 30.0  # a client that has not sent its whole body by then is answered 408
INTERNAL_ERROR = b'{"error": "internal error", "field": null}'

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WSGIInASGI:
    """An ASGI application running the WSGI ``app`` in a pool of ``threads`` threads."""

    def __init__(self, app: WSGIApp, *, threads: int, max_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reid-al-http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: not ours
            return
        try:
            body, declared = await asyncio.wait_for(self._body(scope, receive), BODY_SECONDS)
        except asyncio.TimeoutError:
            await _plain(send, 408, b'{"error": "request body not received in time", "field": "body"}')
            return
        except ConnectionError:
            return  # the client went away
        environ = self._environ(scope, body, declared)
        loop = asyncio.get_running_loop()
        status, headers, payload = await loop.run_in_executor(self.pool, self._call, environ)
        if declared is not None and declared > len(body):
            headers.append((b"connection", b"close"))  # the unread rest of an oversized body
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.pool.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _body(self, scope: Scope, receive: Receive) -> tuple[bytes, int | None]:
        """(body, declared length): past max_body, stop reading and report the length seen so far, so
        the app answers its own 413 (logged and counted like every rejection)."""
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit():
                declared = int(value)
        if declared is not None and declared > self.max_body:
            return b"", declared
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", size
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    def _environ(self, scope: Scope, body: bytes, declared: int | None) -> dict[str, Any]:
        server = scope.get("server") or ("localhost", 80)
        client = scope.get("client") or ("", 0)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope["method"],
            "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
            "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "SERVER_NAME": str(server[0]),
            "SERVER_PORT": str(server[1]),
            "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
            "REMOTE_ADDR": str(client[0]),
            "REMOTE_PORT": str(client[1]),
            "CONTENT_LENGTH": str(declared if declared is not None else len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.get("scheme", "http"),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").upper().replace("-", "_")
            value = raw_value.decode("latin-1")
            if name in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                continue  # the body is complete: its length is known
            if name == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
                continue
            key = f"HTTP_{name}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run the WSGI app in a pool thread; (status, headers, body)."""
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer["status"] = int(status.split(" ", 1)[0])
            answer["headers"] = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
            return lambda _data: None  # the legacy write() callable; Flask never uses it

        try:
            iterable = self.app(environ, start_response)
            try:
                payload = b"".join(iterable)
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        except Exception:
            log.exception("unhandled error in %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"])
            return 500, [(b"content-type", b"application/json")], INTERNAL_ERROR
        return answer["status"], answer["headers"], payload


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
