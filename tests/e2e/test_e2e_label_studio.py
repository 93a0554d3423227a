"""The whole loop against a real Label Studio 1.23.2 and a real `reid-al serve`, as an annotator sees it.

Run alone with `pytest -m e2e` (or this file). The Label Studio venv is installed on first use into
.cache/label-studio-venv (see label_studio.py); after that the test takes a few minutes on 2 cores.

Steps, as README's "Connecting Label Studio" gives them: Label Studio up -> `reid-al serve` (embedded
Redis + RQ worker + gunicorn, basic auth on) -> project from label_config.xml -> `reid-al connect`
(twice: the second changes nothing) -> `reid-al ingest` of 6 identities x 5 tiny
images -> first cycle pushes pair tasks with predictions, the project's model_version and the
"Most informative first" view -> annotations through Label Studio's API reach /webhook and become
constraints -> "Start training" runs a cycle in the worker -> new model_version, new tasks, open tasks
re-scored, the implied pair retired -> a contradicting answer becomes a review task served first ->
deleting an annotation in Label Studio removes its constraint
-> `reid-al sync` agrees with what the webhooks recorded -> a webhook without the Authorization header
is refused and `reid-al status` shows it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import redis as redis_lib
import requests
from PIL import Image, ImageDraw

from ml_backend.embedded import free_port
from ml_backend.errors import LabelStudioError
from ml_backend.labelstudio import LabelStudioClient
from ml_backend.pairs import pair_id, task_data
from ml_backend.pool import local_files_url
from ml_backend.state import ProjectState

if TYPE_CHECKING:
    from e2e.label_studio import LabelStudioServer  # a pytest plugin: imported by pytest, not here

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LABEL_CONFIG = (REPO / "ml_backend" / "label_config.xml").read_text()
AUTH = ("annotator-backend", "s3cret pass")
IDENTITIES = [
    ("ellipse", (220, 40, 40)),
    ("rectangle", (40, 180, 60)),
    ("triangle", (50, 70, 220)),
    ("ellipse", (230, 210, 40)),
    ("rectangle", (200, 60, 200)),
    ("triangle", (40, 200, 210)),
]
PER_IDENTITY = 5
BUDGET = 8
CYCLE_TIMEOUT_S = 240.0


def make_pool(root: Path, seed: int = 0) -> None:
    """6 identities x 5 images: one shape and colour per identity, jittered position/size, noisy ground."""
    rng = np.random.default_rng(seed)
    for ident, (shape, colour) in enumerate(IDENTITIES):
        for k in range(PER_IDENTITY):
            background = rng.integers(90, 160, size=(64, 48, 3), dtype=np.uint8)
            image = Image.fromarray(background)
            draw = ImageDraw.Draw(image)
            x0, y0 = (int(v) for v in rng.integers(2, 12, size=2))
            x1, y1 = x0 + int(rng.integers(28, 34)), y0 + int(rng.integers(40, 48))
            jitter = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in colour)
            if shape == "ellipse":
                draw.ellipse((x0, y0, x1, y1), fill=jitter)
            elif shape == "rectangle":
                draw.rectangle((x0, y0, x1, y1), fill=jitter)
            else:
                draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=jitter)
            path = root / f"id{ident:02d}" / f"{k:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)


def identity_of(image_id: str) -> str:
    return image_id.split("/", 1)[0]


def choice(value: str) -> list[dict[str, Any]]:
    return [{"from_name": "answer", "to_name": "image_a", "type": "choices", "value": {"choices": [value]}}]


def wait_for(
    what: str, check: Callable[[], Any], timeout: float, *, on_timeout: Callable[[], str] = str
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")
        time.sleep(0.5)


class Backend:
    """A `reid-al serve` process tree (embedded redis-server + RQ worker + gunicorn)."""

    def __init__(self, env: dict[str, str], url: str, model_dir: Path, log_path: Path) -> None:
        self.env = env
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.model_dir = model_dir
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()
        self.session.auth = AUTH

    def start(self) -> None:
        with open(self.log_path, "wb") as log_fh:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ml_backend.cli", "serve"],
                cwd=REPO,
                env=self.env,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"reid-al serve exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{self.url}/health", timeout=2).status_code == 200
            return False

        wait_for("reid-al serve /health", up, 120, on_timeout=self.log_tail)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, n: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def redis(self) -> redis_lib.Redis:
        url = (self.model_dir / "redis" / "redis.url").read_text().strip()
        return redis_lib.Redis.from_url(url)

    def status(self, project: int) -> dict[str, Any]:
        resp = self.session.get(f"{self.url}/status", params={"project": project}, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ml_backend.cli", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def backend(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    server = make_backend(label_studio, tmp_path_factory.mktemp("reid-al-e2e"), label_studio.token)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_backend(label_studio: LabelStudioServer, work: Path, api_key: str, **extra: str) -> Backend:
    """A `reid-al serve` (not started) against ``label_studio`` with ``api_key`` and settings ``extra``."""
    port = free_port()
    scrub = ("REDIS_URL", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "MODEL_DIR", "PORT", "HOST")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in scrub and not k.startswith(("REID_AL_", "LABEL_STUDIO_"))
    }
    env.update(
        {
            "MODEL_DIR": str(work / "models"),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WORKERS": "1",
            "THREADS": "4",
            "LOG_LEVEL": "INFO",
            "LABEL_STUDIO_URL": label_studio.url,
            "BASIC_AUTH_USER": AUTH[0],
            "BASIC_AUTH_PASS": AUTH[1],
            "REID_AL_ENCODER": "mobilenetv2",
            "REID_AL_DOCUMENT_ROOT": str(label_studio.document_root),
            "REID_AL_BUDGET": str(BUDGET),
            # On 30 synthetic crops DBSCAN and FINCH agree almost everywhere, so AAS finds one region
            # and proposes one pair; the uncertainty sampler fills the budget. What is under test here is
            # the Label Studio loop (the samplers have their own tests), and it needs a few tasks.
            "REID_AL_STRATEGY": "uncertainty",
            "REID_AL_RETRAIN_EVERY": "1000",  # cycles in this test come from ingest and "Start training" only
            "PYTHONUNBUFFERED": "1",
            "LABEL_STUDIO_API_KEY": api_key,
            **extra,
        }
    )
    return Backend(env, f"http://127.0.0.1:{port}", work / "models", work / "serve.log")


def wait_for_version(backend: Backend, project: int, previous: str | None) -> str:
    def done() -> str | None:
        status = backend.status(project)
        cycle = status.get("cycle") or {}
        if cycle.get("status") == "failed":
            raise AssertionError(f"cycle failed: {cycle}\n{backend.log_tail()}")
        version = status.get("current_version")
        if version and version != previous and cycle.get("status") == "finished":
            return str(version)
        return None

    return wait_for(f"a cycle after version {previous}", done, CYCLE_TIMEOUT_S, on_timeout=backend.log_tail)


def test_active_learning_loop_through_label_studio(
    label_studio: LabelStudioServer, ls_client: LabelStudioClient, backend: Backend
) -> None:
    pool_root = label_studio.document_root / "e2e-pool"
    make_pool(pool_root)
    project = int(ls_client.create_project("reid-al e2e", LABEL_CONFIG)["id"])

    # -- README step 2, `reid-al connect`: Label Studio calls /health and /setup with our credentials
    # (basic auth is on), and the webhook it creates gets them too. Run twice: the second changes nothing.
    connect = backend.cli("connect", "--project", str(project), timeout=120)
    assert connect.returncode == 0, connect.stdout + connect.stderr[-4000:]
    connect_url = f"http://localhost:{backend.port}"  # REID_AL_BACKEND_URL's default
    assert (
        f"project {project}: ML backend" in connect.stdout and f"at {connect_url} created" in connect.stdout
    )
    assert "Authorization header set" in connect.stdout and "reports the backend Connected" in connect.stdout
    again = backend.cli("connect", "--project", str(project), timeout=120)
    assert again.returncode == 0 and "already connected as configured, nothing changed" in again.stdout, (
        again.stdout + again.stderr[-4000:]
    )
    [ml] = ls_client.list_ml_backends(project)
    assert (ml["url"], ml["auth_method"], ml["basic_auth_user"]) == (connect_url, "BASIC_AUTH", AUTH[0])
    redis = backend.redis()
    state = ProjectState(redis, str(project))
    assert state.meta().get("from_name") == "answer"  # read by /setup from the project's label config
    expected_auth = "Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
    hooks = ls_client.list_webhooks(project)
    assert [(h["url"], h["headers"].get("Authorization")) for h in hooks] == [
        (connect_url + "/webhook", expected_auth)
    ]

    # -- ingest through the CLI: pool, embeddings, local-files storage, first cycle queued for the worker
    ingest = backend.cli("ingest", str(pool_root), "--project", str(project))
    assert ingest.returncode == 0, ingest.stderr[-4000:]
    report = json.loads(ingest.stdout)
    assert report["n_pool"] == len(IDENTITIES) * PER_IDENTITY and report["embedded"] == report["n_pool"]
    assert report["connect"] == {"action": "already connected", "url": connect_url}
    assert report["cycle"]["mode"] == "queued", report
    assert [s["path"] for s in ls_client.list_local_storages(project)] == [str(pool_root.resolve())]
    v1 = wait_for_version(backend, project, None)

    # -- what an annotator sees: tasks with predictions of v1, served in the order of data.queue
    assert ls_client.get_project(project)["model_version"] == v1
    view = ls_client.ensure_view(project)  # the push created it; this finds it, creates nothing
    assert [v["data"]["title"] for v in ls_client.list_views(project)] == ["Most informative first"]
    tasks = list(ls_client.iter_tasks(project, view=view, fields="all"))
    assert len(tasks) == BUDGET
    for task in tasks:
        data = task["data"]
        assert data["pair_id"] == pair_id(data["id_a"], data["id_b"])
        assert data["image_a"] == local_files_url(pool_root / data["id_a"], label_studio.document_root)
        assert [p["model_version"] for p in task["predictions"]] == [v1]
        prediction = task["predictions"][0]
        assert prediction["result"] == []  # no answer yet: the calibrator is its prior, nothing pre-filled
        p_same = state.pairs.get(data["pair_id"])["p_same"]
        assert prediction["score"] == pytest.approx(max(p_same, 1.0 - p_same), abs=1e-5)  # P(answer)
    queue = [t["data"]["queue"] for t in tasks]
    assert queue == sorted(queue), queue
    image = requests.get(
        label_studio.url + tasks[0]["data"]["image_a"],
        auth=None,
        timeout=10,
        headers={"Authorization": f"Token {label_studio.token}"},
    )
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"

    # -- a pair the user imports whose answer two other answers will imply: (a, c) after a=b, b=c
    served = ls_client.task_ids_by_pair(project)
    same_identity = [f"id00/{k:02d}.png" for k in range(PER_IDENTITY)]
    a, b, c = next(
        t
        for t in itertools.combinations(same_identity, 3)
        if not {pair_id(t[0], t[1]), pair_id(t[1], t[2]), pair_id(t[0], t[2])} & set(served)
    )
    url = {i: local_files_url(pool_root / i, label_studio.document_root) for i in (a, b, c)}
    ab, bc, ac = ls_client.create_tasks(
        project, [{"data": task_data(x, y, url[x], url[y])} for x, y in ((a, b), (b, c), (a, c))]
    )

    # -- annotate through Label Studio: answers reach /webhook and become constraints
    next_task = ls_client.get_next_task(project, view=view)
    assert next_task is not None and next_task["id"] == tasks[0]["id"]  # the most informative pair first
    truth = {
        t["id"]: "same" if identity_of(t["data"]["id_a"]) == identity_of(t["data"]["id_b"]) else "different"
        for t in tasks
    }
    answered = {}
    for task in tasks[:3]:
        answered[task["id"]] = ls_client.create_annotation(task["id"], choice(truth[task["id"]]))["id"]
    answered[ab] = ls_client.create_annotation(ab, choice("same"))["id"]
    answered[bc] = ls_client.create_annotation(bc, choice("same"))["id"]
    skipped = (
        ls_client.create_annotation(tasks[3]["id"], [], was_cancelled=True)["id"] if len(tasks) > 3 else None
    )

    # Label Studio posts the webhook inside the annotation request; on a loaded machine its 1 s timeout may
    # cut the wait short while the backend still records the event, so allow a few seconds.
    def recorded(annotation_id: int, answer: str) -> Callable[[], bool]:
        return lambda: (state.annotations.get(annotation_id) or {}).get("answer") == answer

    for task_id, annotation_id in answered.items():
        wait_for(
            f"annotation {annotation_id} at the webhook",
            recorded(annotation_id, truth.get(task_id, "same")),
            10,
            on_timeout=backend.log_tail,
        )
        assert state.annotations.get(annotation_id)["task_id"] == task_id
    wait_for("the skip at the webhook", recorded(skipped, "skip"), 10)  # no constraint, never asked again
    flipped = tasks[0]["id"]  # an annotator changes their mind: UPDATED replaces
    new_answer = "different" if truth[flipped] == "same" else "same"
    ls_client.update_annotation(answered[flipped], result=choice(new_answer))
    wait_for("the update at the webhook", recorded(answered[flipped], new_answer), 10)
    ls_client.update_annotation(answered[flipped], result=choice(truth[flipped]))
    wait_for("the second update at the webhook", recorded(answered[flipped], truth[flipped]), 10)

    # -- "Start training": the worker runs a cycle and pushes it
    before = set(ls_client.task_ids_by_pair(project))
    ls_client.train(int(ml["id"]))
    v2 = wait_for_version(backend, project, v1)
    assert ls_client.get_project(project)["model_version"] == v2
    after_tasks = list(ls_client.iter_tasks(project, view=view, fields="all"))
    by_id = {t["id"]: t for t in after_tasks}
    assert ac not in by_id, "the implied pair (a, c) must be retired"
    assert state.counters().get("pairs_saved", 0) >= 1
    assert state.pairs.get(pair_id(a, c))["status"] == "retired"
    new_pairs = {t["data"]["pair_id"] for t in after_tasks} - before
    assert new_pairs, "the second cycle must push new pairs"
    open_tasks = [t for t in after_tasks if not t["total_annotations"] and not t["cancelled_annotations"]]
    assert open_tasks and all(v2 in [p["model_version"] for p in t["predictions"]] for t in open_tasks)
    open_queue = [t["data"]["queue"] for t in open_tasks]
    assert open_queue == sorted(open_queue)
    assert ls_client.get_next_task(project, view=view)["id"] == open_tasks[0]["id"]

    # -- a contradiction: (a, c) answered "different" against a = b = c. The next cycle splits the group at
    #    its weakest link and asks that pair again in a new task, which Label Studio serves first
    (ac2,) = ls_client.create_tasks(project, [{"data": task_data(a, c, url[a], url[c])}])
    answered[ac2] = ls_client.create_annotation(ac2, choice("different"))["id"]
    wait_for("the contradicting answer at the webhook", recorded(answered[ac2], "different"), 10)
    ls_client.train(int(ml["id"]))
    v3 = wait_for_version(backend, project, v2)
    reviews = backend.status(project)["reviews"]
    assert reviews["contradictions_open"] == 1 and reviews["by_kind"]["contradiction"] >= 1, reviews
    review_tasks = [
        t for t in ls_client.iter_tasks(project, view=view, fields="all") if t["data"].get("review_key")
    ]
    contradiction = [t for t in review_tasks if t["data"]["review"] == "contradiction"]
    assert contradiction and {contradiction[0]["data"]["id_a"], contradiction[0]["data"]["id_b"]} <= {a, b, c}
    assert all(v3 in [p["model_version"] for p in t["predictions"]] for t in review_tasks)
    assert {t["data"]["queue"] for t in review_tasks} == {"0.000000"}
    # Label Studio first hands back the task this annotator holds a lock on (served before the cycle);
    # once they answer it, the review comes next, before every pair the sampler proposed
    held = ls_client.get_next_task(project, view=view)
    if held is not None and not held["data"].get("review_key"):
        same_held = identity_of(held["data"]["id_a"]) == identity_of(held["data"]["id_b"])
        truth_held = "same" if same_held else "different"
        answered[held["id"]] = ls_client.create_annotation(held["id"], choice(truth_held))["id"]
        wait_for("the held task's answer at the webhook", recorded(answered[held["id"]], truth_held), 10)
    served_first = ls_client.get_next_task(project, view=view)
    assert served_first is not None and served_first["data"].get("review_key"), served_first

    # -- deleting an annotation in Label Studio removes its constraint
    gone = answered[bc]
    ls_client.delete_annotation(gone)
    wait_for("ANNOTATIONS_DELETED to reach the backend", lambda: state.annotations.get(gone) is None, 10)

    # -- a sync from Label Studio finds exactly what the webhooks recorded
    sync = backend.cli("sync", "--project", str(project), timeout=120)
    assert sync.returncode == 0, sync.stderr[-4000:]
    synced = json.loads(sync.stdout)
    assert synced["n_changes"] == 0 and synced["invalid"] == [], synced
    assert synced["unchanged"] == len(state.annotations.all()) == len(answered) - 1 + 1
    status = backend.cli("status", "--project", str(project), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["projects"][0]["current_version"] == v3

    # -- a webhook that reaches the backend without the Authorization header (as Label Studio sends it
    # when nobody added one) is not recorded, and `reid-al status` says so
    unsigned = requests.post(
        f"{backend.url}/webhook",
        json={"action": "ANNOTATION_CREATED", "project": {"id": project}, "annotation": {"id": 999_999}},
        timeout=10,
    )
    assert unsigned.status_code == 401
    text = backend.cli("status", "--project", str(project))
    assert text.returncode == 0, text.stderr[-4000:]
    assert "webhook events not recorded: 1 unauthorised (401" in text.stdout, text.stdout
    assert (
        f"of {BUDGET} pairs (REID_AL_BUDGET)" in text.stdout
        and "answers pending until the next cycle" in text.stdout
    )
    assert state.annotations.get(999_999) is None
    redis.close()


RECONCILE_S = 10  # REID_AL_RECONCILE_SECONDS of the test below


def test_personal_access_token_and_reconciliation_where_legacy_tokens_are_refused(
    label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same loop with Label Studio's default token, a Personal Access Token, while Label Studio refuses
    legacy tokens (its default since 1.20): connect, ingest of a manifest with captions (shown in the
    tasks), the worker's push, answers through the webhook, `reid-al sync`. Then the webhook goes down
    (deactivated in Label Studio) and an answer given meanwhile
    reaches the backend through the worker's periodic reconciliation, with nobody running `sync`."""
    pat = label_studio.personal_access_token()
    server = make_backend(
        label_studio, tmp_path_factory.mktemp("reid-al-pat"), pat, REID_AL_RECONCILE_SECONDS=str(RECONCILE_S)
    )
    pool_root = label_studio.document_root / "pat-pool"
    make_pool(pool_root, seed=1)
    # this pool comes as a manifest with a caption per image (an attribute two identities share)
    captions = {
        f"id{ident:02d}/{k:02d}.png": f"{shape}, {'warm' if colour[0] > 150 else 'cool'}"
        for ident, (shape, colour) in enumerate(IDENTITIES)
        for k in range(PER_IDENTITY)
    }
    manifest = pool_root / "pool.jsonl"
    rows = [json.dumps({"id": i, "image": i, "caption": c}) for i, c in captions.items()]
    manifest.write_text("\n".join(rows) + "\n")
    with label_studio.legacy_tokens_disabled():
        ls = LabelStudioClient(label_studio.url, pat)
        legacy = LabelStudioClient(label_studio.url, label_studio.token)
        with pytest.raises(LabelStudioError, match="tried as a legacy token"):
            legacy.current_user()  # what every call would get without the PAT
        project = int(ls.create_project("reid-al e2e PAT", LABEL_CONFIG)["id"])
        server.start()
        try:
            connect = server.cli("connect", "--project", str(project), timeout=120)
            assert connect.returncode == 0, connect.stdout + connect.stderr[-4000:]
            ingest = server.cli("ingest", str(manifest), "--project", str(project))
            assert ingest.returncode == 0, ingest.stderr[-4000:]
            v1 = wait_for_version(server, project, None)
            assert ls.get_project(project)["model_version"] == v1  # the worker pushed with the PAT
            tasks = list(ls.iter_tasks(project, fields="all"))
            assert len(tasks) == BUDGET and all(t["predictions"] for t in tasks)
            # the annotator sees each crop's caption under it (label_config.xml's $caption_a/$caption_b)
            for task in tasks:
                data = task["data"]
                shown = (data["caption_a"], data["caption_b"])
                assert shown == (captions[data["id_a"]], captions[data["id_b"]])
            state = ProjectState(server.redis(), str(project))

            def recorded(annotation_id: int) -> Callable[[], bool]:
                return lambda: state.annotations.get(annotation_id) is not None

            first = ls.create_annotation(tasks[0]["id"], choice("different"))["id"]
            wait_for("the answer at the webhook", recorded(first), 10, on_timeout=server.log_tail)

            # -- the webhook goes down: Label Studio sends nothing; the answer is only in Label Studio
            [hook] = ls.list_webhooks(project)
            ls.update_webhook(int(hook["id"]), is_active=False)
            missed = ls.create_annotation(tasks[1]["id"], choice("same"))["id"]
            time.sleep(1.0)
            assert state.annotations.get(missed) is None  # no webhook delivered it
            given = time.monotonic()
            # One interval, plus the worker's maintenance cadence (RQ's 10 s dequeue timeout) and the job
            wait_for(
                "reconciliation to recover the answer",
                recorded(missed),
                RECONCILE_S + 10 + 30,
                on_timeout=server.log_tail,
            )
            delay = time.monotonic() - given
            assert state.annotations.get(missed)["answer"] == "same"
            print(f"answer recovered by reconciliation {delay:.1f} s after it was given")
            status = server.cli("status", "--project", str(project))
            assert status.returncode == 0, status.stderr[-4000:]
            assert "last reconciliation with Label Studio:" in status.stdout, status.stdout
            assert "FAILED" not in status.stdout and " 0 recovered in" not in status.stdout, status.stdout
            reconciled = server.status(project)["reconcile"]
            assert reconciled["recovered_total"] >= 1 and reconciled["failures"] == 0, reconciled
            metrics = server.session.get(f"{server.url}/metrics", timeout=10).text
            assert f'reid_al_reconcile_recovered_total{{project="{project}"}} ' in metrics
            recovered_line = next(
                x
                for x in metrics.splitlines()
                if x.startswith(f'reid_al_reconcile_recovered_total{{project="{project}"}}')
            )
            assert int(recovered_line.rsplit(" ", 1)[1]) >= 1

            # -- `reid-al sync` with the PAT finds nothing left to do
            sync = server.cli("sync", "--project", str(project), timeout=120)
            assert sync.returncode == 0, sync.stderr[-4000:]
            assert json.loads(sync.stdout)["n_changes"] == 0
        finally:
            server.stop()
