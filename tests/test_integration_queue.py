"""Webhook -> constraint -> coalesced RQ job -> new model version, with a real redis-server and a real
`reid-al worker` process running the trainer's cycle (no Label Studio: the push is skipped without an
API key; push.py has its own tests and the e2e test covers the real thing)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from flask.testing import FlaskClient

from ml_backend.app import create_app
from ml_backend.embedded import stop_process
from ml_backend.queue import CycleQueue
from ml_backend.settings import Settings
from ml_backend.state import ProjectState

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
N_IDENTITIES, PER_IDENTITY, DIM = 8, 6, 32
WAIT_S = 240.0


def write_features(model_dir: Path, project: str, seed: int = 0) -> list[str]:
    """A small clustered pool straight into the project's embedding store (what ingest would write)."""
    from trainer.store import EmbeddingStore

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_IDENTITIES, DIM))
    noise = 0.35 * rng.normal(size=(N_IDENTITIES * PER_IDENTITY, DIM))
    feats = np.repeat(centres, PER_IDENTITY, axis=0) + noise
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    ids = [f"id{k // PER_IDENTITY}-img{k}" for k in range(len(feats))]
    EmbeddingStore(model_dir / project / "features").append(ids, feats.astype(np.float32),
                                                            encoder="synthetic")
    return ids


def event(ann_id: int, a: str, b: str, answer: str, *, project: int, action: str = "ANNOTATION_CREATED",
          updated_at: float = 1.0) -> dict[str, Any]:
    return {"action": action, "project": {"id": project},
            "annotation": {"id": ann_id, "was_cancelled": answer == "skip", "updated_at": updated_at,
                           "result": [] if answer == "skip" else [
                               {"from_name": "answer", "to_name": "image_a", "type": "choices",
                                "value": {"choices": [answer]}}]},
            "task": {"id": 1000 + ann_id, "data": {"id_a": a, "id_b": b}}}


@pytest.fixture()
def env(tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    queue_name = f"it-{uuid.uuid4().hex[:8]}"
    values = {"REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path / "model"), "REID_AL_QUEUE": queue_name,
              "REID_AL_RETRAIN_EVERY": "2", "REID_AL_BUDGET": "6", "REID_AL_STRATEGY": "aas",
              "LABEL_STUDIO_API_KEY": "", "LOG_LEVEL": "INFO", "REID_AL_ENCODER": "mobilenetv2",
              "REID_AL_DOCUMENT_ROOT": str(tmp_path / "docroot")}
    (tmp_path / "docroot").mkdir()
    yield values


@pytest.fixture()
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One real `reid-al worker` process (RQ forks a work horse per job)."""
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    full_env = {**os.environ, **env}
    proc = subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "worker"], cwd=REPO, env=full_env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process(proc, timeout=20)
        log.close()


def app_client(env: dict[str, str], redis_client: redis.Redis) -> FlaskClient:
    app = create_app(Settings.from_env(env), redis=redis_client)
    return app.test_client()


def wait_for(predicate: Any, what: str, worker: subprocess.Popen[bytes], log: Path,
             timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if worker.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; worker log:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def idle(queue: CycleQueue, project: str, n_cycles: int) -> bool:
    status = queue.status(project)
    return status["active_job"] is None and status["n_cycles"] >= n_cycles


def test_webhook_constraints_coalesce_into_one_follow_up_and_new_versions(
        env: dict[str, str], redis_client: redis.Redis, worker: subprocess.Popen[bytes],
        tmp_path: Path) -> None:
    from trainer.registry import ModelRegistry

    ids = write_features(Path(env["MODEL_DIR"]), "3")
    http = app_client(env, redis_client)
    queue = CycleQueue(redis_client, queue_name=env["REID_AL_QUEUE"])
    log = tmp_path / "worker.log"

    # Hold the project's lock, as a cycle running on another worker would: the job must wait for it.
    assert queue.acquire_lock("3", "test-holder", wait=0)
    first = http.post("/webhook", json=event(1, ids[0], ids[1], "same", project=3)).json
    second = http.post("/webhook", json=event(2, ids[0], ids[PER_IDENTITY], "different", project=3)).json
    assert "cycle" not in first and second["cycle"] == "enqueued"
    wait_for(lambda: queue.status("3")["running"], "the job to start", worker, log)

    later = [http.post("/webhook", json=event(k, ids[k], ids[k + 1], "same", project=3)).json for k in (3, 4)]
    later.append(http.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}).json)
    assert [b["cycle"] for b in later] == ["coalesced"] * 3
    assert queue.depth() == 0  # coalesced: no extra job was enqueued
    assert http.get("/status?project=3").json["rerun_requested"] is True
    assert queue.release_lock("3", "test-holder")

    queue_redis = redis_client
    wait_for(lambda: idle(queue, "3", 2), "the cycle and its one follow-up", worker, log)
    time.sleep(1.0)
    state = ProjectState(queue_redis, "3")
    cycles = state.cycles.history()
    assert [c["status"] for c in cycles] == ["finished", "finished"], cycles
    assert len(cycles) == 2  # exactly one follow-up, however many requests arrived while it ran
    versions = [info.version for info in ModelRegistry(env["MODEL_DIR"], "3").list()]
    assert len(versions) == 2 and state.cycles.versions() == versions
    assert cycles[0]["version"] == versions[1] and cycles[1]["version"] == versions[0]
    assert cycles[0]["n_constraints"] == 4 and cycles[0]["push"] is None
    assert state.counters()["cycles_follow_up"] == 1
    assert http.post("/setup", json={"project": 3}).json["model_version"] == versions[1]
    metrics = http.get("/metrics").data.decode()
    assert 'reid_al_cycles_total{outcome="coalesced",project="3"} 3' in metrics
    assert 'reid_al_cycle_duration_seconds_count{project="3"} 2' in metrics


def test_duplicated_and_reordered_events_give_the_same_final_constraints(
        env: dict[str, str], redis_client: redis.Redis, worker: subprocess.Popen[bytes],
        tmp_path: Path) -> None:
    model_dir = Path(env["MODEL_DIR"])
    ids = write_features(model_dir, "5")
    write_features(model_dir, "6")
    http = app_client({**env, "REID_AL_RETRAIN_EVERY": "1000"}, redis_client)
    queue = CycleQueue(redis_client, queue_name=env["REID_AL_QUEUE"])
    events: list[dict[str, Any]] = [
        event(1, ids[0], ids[1], "same", project=0, updated_at=10),
        event(1, ids[0], ids[1], "different", project=0, action="ANNOTATION_UPDATED", updated_at=20),
        event(2, ids[2], ids[3], "same", project=0, updated_at=11),
        event(3, ids[4], ids[9], "different", project=0, updated_at=12),
        event(4, ids[5], ids[6], "skip", project=0, updated_at=13),
        event(5, ids[7], ids[8], "unsure", project=0, updated_at=14),
        event(6, ids[10], ids[11], "same", project=0, updated_at=15),
        {"action": "ANNOTATIONS_DELETED", "project": {"id": 0}, "annotations": [{"id": 6}]},
    ]
    rng = random.Random(7)
    for project, sequence in ((5, events), (6, rng.sample(events + events[:4], len(events) + 4))):
        for ev in sequence:
            ev = {**ev, "project": {"id": project}}
            assert http.post("/webhook", json=ev).status_code == 200
        assert http.post("/webhook", json={"action": "START_TRAINING",
                                           "project": {"id": project}}).json["cycle"]
    log = tmp_path / "worker.log"
    wait_for(lambda: idle(queue, "5", 1) and idle(queue, "6", 1), "both cycles", worker, log)

    def final(project: str) -> list[tuple[str, str, str, str]]:
        return [(r["annotation_id"], r["image_a"], r["image_b"], r["answer"])
                for r in ProjectState(redis_client, project).annotations.all()]

    assert final("5") == final("6") == [("2", ids[2], ids[3], "same"), ("3", ids[4], ids[9], "different"),
                                        ("4", ids[5], ids[6], "skip"), ("5", ids[7], ids[8], "unsure"),
                                        ("1", ids[0], ids[1], "different")]
    c5, c6 = (ProjectState(redis_client, p).cycles.history()[0] for p in ("5", "6"))
    assert c5["status"] == c6["status"] == "finished"
    assert c5["n_constraints"] == c6["n_constraints"] == 3


def test_user_imported_pairs_are_embedded_by_the_worker(
        env: dict[str, str], redis_client: redis.Redis, worker: subprocess.Popen[bytes],
        tmp_path: Path) -> None:
    """TASKS_CREATED with images the store lacks -> one embed job -> rows in the store (mobilenetv2)."""
    from PIL import Image

    from trainer.store import EmbeddingStore

    root = Path(env["REID_AL_DOCUMENT_ROOT"])
    rng = np.random.default_rng(0)
    for name in ("p1.png", "p2.png", "p3.png"):
        Image.fromarray(rng.integers(0, 255, size=(48, 32, 3), dtype=np.uint8)).save(root / name)
    http = app_client(env, redis_client)
    tasks = [{"id": 1, "data": {"image_a": "/data/local-files/?d=p1.png",
                                "image_b": "/data/local-files/?d=p2.png"}},
             {"id": 2, "data": {"image_a": "/data/local-files/?d=p2.png",
                                "image_b": "/data/local-files/?d=p3.png"},
              "meta": {}},
             {"id": 3, "data": {"image_a": "/data/local-files/?d=p1.png",
                                "image_b": "/data/local-files/?d=gone.png"}}]
    body = http.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 8}, "tasks": tasks}).json
    assert body["missing_embeddings"] == 4 and body["embed_job"]
    state = ProjectState(redis_client, "8")
    log = tmp_path / "worker.log"
    wait_for(lambda: state.counters().get("images_embedded",
                                          0) + state.counters().get("images_embed_failed", 0)
             >= 4, "the embedding job", worker, log)
    store = EmbeddingStore(Path(env["MODEL_DIR"]) / "8" / "features")
    urls = [f"/data/local-files/?d=p{k}.png" for k in (1, 2, 3)]
    assert sorted(store.ids()) == sorted(urls) and store.dim is not None
    assert state.images.missing(urls) == []
    assert state.counters()["images_embed_failed"] == 1  # gone.png: reported, not fatal
