"""What an annotator sees: a real Label Studio's labelling screen for a pair task, as a PNG.

    .venv/bin/python scripts/annotator_screenshot.py [--out docs/annotator.png]

Starts Label Studio 1.23.2 from the test suite's cached venv (installed on first use, as the tests do),
creates a project from ml_backend/label_config.xml, imports pair tasks and predictions built by the
backend's own helpers (task data with each crop's caption and its queue place, proposed choice and
P(answer), the "Most informative first" view),
logs in and photographs the first task of that view in headless Chromium from Debian's packages
(`apt-get install chromium`). Chromium is driven over its DevTools protocol, with a small WebSocket
client below, because its command line cannot log in.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from e2e.label_studio import start_label_studio  # noqa: E402

from ml_backend.pairs import task_data  # noqa: E402
from ml_backend.pool import local_files_url  # noqa: E402
from ml_backend.push import (  # noqa: E402
    QUEUE_FIELD,
    VIEW_ORDERING,
    VIEW_TITLE,
    prediction,
    queue_key,
    score_of,
)

LABEL_CONFIG = (REPO / "ml_backend" / "label_config.xml").read_text()
# (shape, colour) per individual; two views of each differ in size, angle and position
INDIVIDUALS = [("ellipse", (220, 40, 40)), ("triangle", (50, 70, 220)), ("rectangle", (40, 180, 60))]
COLOUR_WORDS = {(220, 40, 40): "red", (50, 70, 220): "blue", (40, 180, 60): "green"}


def draw_view(shape: str, colour: tuple[int, int, int], view: int) -> Image.Image:
    img = Image.new("RGB", (256, 256), (238, 236, 230))
    d = ImageDraw.Draw(img)
    s, o = 70 + 25 * view, 40 + 30 * view
    box = (o, o + 10 * view, o + s * 1.6, o + s * 1.4)
    if shape == "ellipse":
        d.ellipse(box, fill=colour)
    elif shape == "rectangle":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(o, o + s * 1.5), (o + s * 1.7, o + s * 1.2), (o + s * 0.6, o)], fill=colour)
    return img.rotate(12 * view, fillcolor=(238, 236, 230))


# --------------------------------------------------------------------------- a minimal CDP client
class DevTools:
    """Chrome DevTools protocol over one WebSocket (RFC 6455 text frames; client frames masked)."""

    def __init__(self, ws_url: str) -> None:
        parts = urlsplit(ws_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"DevTools refused the WebSocket: {head[:200]!r}")
        self.next_id = 0

    def _recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            out += chunk
        return out

    def _recv_message(self) -> str:
        data = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            data += self._recv_exact(n)
            if b0 & 0x80:  # FIN
                return data.decode()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(c ^ mask[k % 4] for k, c in enumerate(payload)))
        while True:  # events arrive in between; keep the answer to this call
            message = json.loads(self._recv_message())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("headless Chromium is needed: apt-get install chromium")


def login_cookies(url: str, email: str, password: str) -> dict[str, str]:
    """A Label Studio browser session, through its own login form (CSRF included)."""
    session = requests.Session()
    page = session.get(f"{url}/user/login/", timeout=30)
    token = page.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    answer = session.post(f"{url}/user/login/", timeout=30, allow_redirects=False,
                          data={"email": email, "password": password, "csrfmiddlewaretoken": token},
                          headers={"Referer": f"{url}/user/login/"})
    if "sessionid" not in session.cookies:
        raise RuntimeError(f"Label Studio login failed ({answer.status_code})")
    return dict(session.cookies)


def photograph(url: str, cookies: dict[str, str], page: str, out: Path, width: int, height: int,
               settle_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="reid-al-chromium-") as profile:
        port = _free_port()
        proc = subprocess.Popen(
            [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            targets = _wait_json(f"http://127.0.0.1:{port}/json", 60)
            tab = next(t for t in targets if t.get("type") == "page")
            cdp = DevTools(tab["webSocketDebuggerUrl"])
            cdp.call("Network.enable")
            for name, value in cookies.items():
                cdp.call("Network.setCookie", name=name, value=value, url=url)
            cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                     mobile=False)
            cdp.call("Page.enable")
            cdp.call("Page.navigate", url=page)
            time.sleep(settle_s)  # the labelling app loads its bundle and both images after the page
            shot = cdp.call("Page.captureScreenshot", format="png")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_json(url: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=2).json()
        except (requests.RequestException, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "annotator.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--settle", type=float, default=12.0, help="seconds the page gets to render")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="reid-al-screenshot-") as tmp:
        print("starting Label Studio ...", flush=True)
        ls = start_label_studio(Path(tmp))
        try:
            client = ls.client()
            project = client.create_project("reid-al: same individual?", LABEL_CONFIG)
            pid = project["id"]
            pool = ls.document_root / "pool"
            pool.mkdir(parents=True)
            ids = []
            for k, (shape, colour) in enumerate(INDIVIDUALS):
                for view in (0, 1):
                    name = f"ind{k}_view{view}.png"
                    draw_view(shape, colour, view).save(pool / name)
                    ids.append(name)
            pairs = [  # (a, b, P(same), priority, strategy, reason) as the backend proposes them
                (ids[0], ids[1], 0.62, 0.76, "hybrid", "boundary:across",
                 "inferred to be two individuals, P(same) 0.62"),
                (ids[2], ids[3], 0.91, 0.18, "hybrid", "match_first",
                 "most likely match between two unlinked identities: P(same) 0.91"),
                (ids[0], ids[4], 0.07, 0.14, "uncertainty", "uncertainty", "far apart: P(same) 0.07"),
            ]
            client.add_local_storage(pid, pool)  # what `reid-al ingest` adds: Label Studio serves the pool

            def caption_of(name: str) -> str:
                """A manifest's caption for the image: the attributes a camera operator would note."""
                shape, colour = INDIVIDUALS[int(name[3])]
                return f"{COLOUR_WORDS[colour]} {shape}"
            tasks = [{"data": {**task_data(a, b, local_files_url(pool / a, ls.document_root),
                                           local_files_url(pool / b, ls.document_root),
                                           caption_a=caption_of(a), caption_b=caption_of(b),
                                           strategy=strategy, pool=why, reason=reason),
                               QUEUE_FIELD: queue_key(score_of(priority))}}
                     for a, b, _, priority, strategy, why, reason in pairs]
            task_ids = client.create_tasks(pid, tasks)
            client.import_predictions(pid, [  # a calibrator that has learned from answers: pre-filled
                {"task": t, **prediction(p, prefill=True, from_name="answer", to_name="image_a",
                                         model_version="v0001")}
                for t, (_, _, p, *_rest) in zip(task_ids, pairs, strict=True)])
            client.patch_project(pid, model_version="v0001", show_collab_predictions=True)
            view = client.ensure_view(pid, title=VIEW_TITLE, ordering=list(VIEW_ORDERING))
            first = task_ids[0]  # the lowest queue value: served first
            page = f"{ls.url}/projects/{pid}/data?tab={view}&task={first}"
            print(f"photographing {page} ...", flush=True)
            photograph(ls.url, login_cookies(ls.url, ls.username, ls.password), page, args.out,
                       args.width, args.height, args.settle)
        finally:
            ls.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
