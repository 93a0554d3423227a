"""Captions and attribute lists from the manifest to the cycle: ingest embeds them with the encoder's text
tower, the cycle receives them (rows aligned with the image features, zero rows without text), every
version's metrics.json records text_dim, pushed tasks carry the captions, and an encoder without a text
tower runs the cycle without them and says why. The tiny random open_clip model is the encoder."""

from __future__ import annotations

import json
import os
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
from PIL import Image

from ml_backend.app import create_app
from ml_backend.embedded import stop_process
from ml_backend.ingest import first_cycle, ingest
from ml_backend.pool import Pool, PoolItem
from ml_backend.queue import CycleQueue
from ml_backend.settings import Settings
from ml_backend.state import ProjectState
from ml_backend.status import format_status
from ml_backend.text_features import pool_text_features, text_store_dir
from tests.test_push import LabelStudioDouble
from trainer.store import EmbeddingStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
COLOURS = [(220, 40, 40), (40, 180, 60), (50, 70, 220), (230, 210, 40)]
PER_IDENTITY = 3
# Captions for some images, attribute lists for others, nothing for the rest (zero rows).
TEXTS: dict[int, Any] = {0: "a man in a red coat", 1: ["male", "red coat"], 3: "green jacket", 6: ["blue"]}
WAIT_S = 240.0


def make_manifest(root: Path, texts: dict[int, Any] = TEXTS) -> Path:
    """4 identities x 3 tiny crops under ``root`` and a JSONL manifest naming them, with ``texts``."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(len(COLOURS) * PER_IDENTITY):
        colour = np.array(COLOURS[k // PER_IDENTITY])
        pixels = np.clip(colour + rng.integers(-25, 26, size=(40, 40, 3)), 0, 255).astype(np.uint8)
        path = root / f"id{k // PER_IDENTITY:02d}" / f"{k % PER_IDENTITY:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        row: dict[str, Any] = {"image": path.relative_to(root).as_posix()}
        if k in texts:
            row["caption" if isinstance(texts[k], str) else "attributes"] = texts[k]
        rows.append(row)
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def read_metrics(settings: Settings, project: str, version: str) -> dict[str, Any]:
    return json.loads((settings.project_dir(project) / version / "metrics.json").read_text())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "docroot").mkdir()
    return Settings(
        model_dir=tmp_path / "models",
        encoder="open_clip_tiny",
        label_studio_api_key="",
        document_root=str(tmp_path / "docroot"),
        strategy="uncertainty",  # the sampler with the text term
        budget=6,
        torch_threads=1,
    )


def test_captions_reach_the_cycle_and_the_pushed_tasks(
    settings: Settings, redis_client: redis.Redis, tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.cycle
    import trainer.encoders
    from ml_backend.jobs import run_project_cycle

    # one model for images and texts, the fixture's (a random model built twice is two models)
    monkeypatch.setattr(trainer.encoders, "encoder_from_spec", lambda *_a, **_k: tiny)
    root = Path(settings.document_root) / "pool"
    manifest = make_manifest(root)
    report = ingest(manifest, "31", settings, push=False, progress=False, num_workers=0)
    assert report.n_pool == 12 and report.embedded == 12
    assert report.text == {
        "items_with_text": 4,
        "text_dim": tiny.dim,
        "used": True,
        "embedded": 4,
        "reason": None,
    }
    pool = Pool.load(settings.model_dir, "31")
    assert pool.item("id00/01.png").text == "male, red coat"

    received: dict[str, Any] = {}
    real_run_cycle = trainer.cycle.run_cycle

    def spy(*args: Any, **kwargs: Any) -> Any:
        received["text_features"] = kwargs.get("text_features")
        return real_run_cycle(*args, **kwargs)

    monkeypatch.setattr(trainer.cycle, "run_cycle", spy)
    client = LabelStudioDouble()
    summary = run_project_cycle(settings, redis_client, "31", client=client)

    # the cycle got one row per image, in the image store's row order: the caption's features or zeros
    ids = EmbeddingStore(settings.features_dir("31")).ids()
    text = received["text_features"]
    assert text is not None and text.shape == (12, tiny.dim)
    for row, image_id in enumerate(ids):
        caption = pool.item(image_id).text
        if caption is None:
            assert not text[row].any()
        else:
            np.testing.assert_allclose(text[row], tiny.embed_texts([caption]).numpy()[0], atol=1e-5)
    assert summary["text"]["used"] and summary["text"]["text_dim"] == tiny.dim
    assert read_metrics(settings, "31", summary["version"])["text_dim"] == tiny.dim

    # every created task shows both images' captions (empty for an image without one)
    assert client.tasks and summary["push"]["created"] == len(client.tasks)
    for task in client.tasks.values():
        data = task["data"]
        assert data["caption_a"] == (pool.item(data["id_a"]).text or "")
        assert data["caption_b"] == (pool.item(data["id_b"]).text or "")

    # a corrected caption is embedded again at the next ingest; nothing else is
    fixed = make_manifest(root, {**TEXTS, 3: "dark green jacket"})
    again = ingest(fixed, "31", settings, push=False, progress=False, num_workers=0)
    assert (again.n_new, again.n_text_changed, again.embedded) == (0, 1, 0)
    assert again.text is not None and again.text["embedded"] == 1
    assert Pool.load(settings.model_dir, "31").item("id01/00.png").text == "dark green jacket"

    # texts the store lacks (a pool ingested before captions were embedded) are embedded by the cycle
    import shutil

    shutil.rmtree(text_store_dir(settings, "31"))
    later = run_project_cycle(settings, redis_client, "31", client=client)
    assert later["text"]["embedded"] == 4 and later["text"]["used"]
    assert read_metrics(settings, "31", later["version"])["text_dim"] == tiny.dim


def _synthetic_pool(model_dir: Path, project: str, encoder: str, texts: dict[int, str]) -> list[str]:
    rng = np.random.default_rng(5)
    feats = np.repeat(rng.normal(size=(4, 16)), 4, axis=0) + 0.3 * rng.normal(size=(16, 16))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"im{k:02d}" for k in range(16)]
    EmbeddingStore(model_dir / project / "features").append(ids, feats, encoder=encoder)
    items = [
        PoolItem(id=i, path=f"/imgs/{i}.jpg", url=f"/data/local-files/?d={i}.jpg", text=texts.get(k))
        for k, i in enumerate(ids)
    ]
    Pool(items).save(model_dir, project)
    return ids


def test_an_encoder_without_a_text_tower_runs_without_text_and_says_why_once(
    tmp_path: Path,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import trainer.encoders
    from ml_backend.jobs import run_project_cycle

    def no_encoder(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("no encoder is built to learn that mobilenetv2 has no text tower")

    monkeypatch.setattr(trainer.encoders, "encoder_from_spec", no_encoder)
    _synthetic_pool(tmp_path, "32", "mobilenetv2", {0: "red coat", 5: "hat"})
    settings = Settings(
        model_dir=tmp_path,
        encoder="mobilenetv2",
        budget=4,
        strategy="uncertainty",
        torch_threads=1,
        label_studio_api_key="",
    )
    with caplog.at_level("WARNING", logger="ml_backend.jobs"):
        first = run_project_cycle(settings, redis_client, "32")
        second = run_project_cycle(settings, redis_client, "32")
    said = [r for r in caplog.records if "is not used by the cycle" in r.getMessage()]
    assert len(said) == 1 and "no text tower" in said[0].getMessage()  # once, not every cycle
    for summary in (first, second):
        assert summary["text"]["used"] is False and summary["text"]["text_dim"] == 0
        assert summary["text"]["items_with_text"] == 2 and "mobilenetv2" in summary["text"]["reason"]
        assert read_metrics(settings, "32", summary["version"])["text_dim"] == 0
    assert not text_store_dir(settings, "32").exists()

    # /status and `reid-al status` say it (the cycle job records the summary the queue shows)
    ProjectState(redis_client, "32").cycles.record({**second, "status": "finished", "duration_s": 1.0})
    body = create_app(settings, redis=redis_client).test_client().get("/status?project=32").json
    assert body["last_cycle"]["text"]["text_dim"] == 0
    queue = CycleQueue.for_settings(redis_client, settings)
    printed = format_status({"queue": "q", "queue_depth": 0, "projects": [queue.status("32")]})
    assert (
        "text: 2 image(s) with captions/attributes, not used (text_dim 0): encoder 'mobilenetv2'" in printed
    )


def test_a_pool_without_text_is_as_before(tmp_path: Path, redis_client: redis.Redis) -> None:
    from ml_backend.jobs import run_project_cycle

    _synthetic_pool(tmp_path, "33", "open_clip_tiny", {})
    settings = Settings(
        model_dir=tmp_path, encoder="open_clip_tiny", budget=4, torch_threads=1, label_studio_api_key=""
    )
    summary = run_project_cycle(settings, redis_client, "33")
    assert summary["text"] == {
        "items_with_text": 0,
        "text_dim": 0,
        "used": False,
        "embedded": 0,
        "reason": None,
    }
    assert read_metrics(settings, "33", summary["version"])["text_dim"] == 0
    assert not text_store_dir(settings, "33").exists()  # nothing written, no encoder loaded
    ProjectState(redis_client, "33").cycles.record({**summary, "status": "finished", "duration_s": 1.0})
    queue = CycleQueue.for_settings(redis_client, settings)
    assert "text:" not in format_status({"queue": "q", "queue_depth": 0, "projects": [queue.status("33")]})


def test_text_of_another_encoder_is_left_unused_with_the_way_out(tmp_path: Path, tiny: Any) -> None:
    from trainer.text_store import TextStore

    settings = Settings(model_dir=tmp_path, encoder="open_clip_tiny", label_studio_api_key="")
    TextStore(text_store_dir(settings, "34")).embed(tiny, ["red coat"])
    texts = ["red coat", None]
    used = pool_text_features(settings, "34", texts, image_encoder=tiny.name)
    assert used.used and used.features is not None and used.features.shape == (2, tiny.dim)
    other = pool_text_features(settings, "34", texts, image_encoder="open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert other.features is None and other.to_dict()["text_dim"] == 0
    assert other.reason is not None and "encoder" in other.reason and "delete" in other.reason
    # REID_AL_ENCODER builds another model than the one the image features came from
    stray = pool_text_features(
        settings, "35", ["blue coat"], image_encoder="open_clip_random", encoder=lambda: tiny
    )
    assert stray.features is None and "REID_AL_ENCODER builds 'open_clip_tiny'" in str(stray.reason)
    assert pool_text_features(settings, "34", [None, None], image_encoder=tiny.name).to_dict() == {
        "items_with_text": 0,
        "text_dim": 0,
        "used": False,
        "embedded": 0,
        "reason": None,
    }


# -- through the worker: `reid-al ingest`, then the first cycle in a real `reid-al worker` ------------------


@pytest.fixture()
def worker_env(tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> dict[str, str]:
    (tmp_path / "docroot").mkdir()
    return {
        "REDIS_URL": redis_url,
        "MODEL_DIR": str(tmp_path / "model"),
        "REID_AL_QUEUE": f"text-{uuid.uuid4().hex[:8]}",
        "REID_AL_BUDGET": "4",
        "REID_AL_STRATEGY": "uncertainty",
        "REID_AL_ENCODER": "open_clip_tiny",
        "REID_AL_TORCH_THREADS": "1",
        "LABEL_STUDIO_API_KEY": "",
        "LOG_LEVEL": "INFO",
        "REID_AL_DOCUMENT_ROOT": str(tmp_path / "docroot"),
    }


@pytest.fixture()
def worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "ml_backend.cli", "worker"],
        cwd=REPO,
        env={**os.environ, **worker_env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_process(proc, timeout=20)
        log.close()


@pytest.mark.integration
@pytest.mark.slow
def test_the_worker_cycle_receives_the_text_of_an_ingested_manifest(
    worker_env: dict[str, str],
    worker: subprocess.Popen[bytes],
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny: Any,
) -> None:
    from ml_backend.cli import main
    from trainer.registry import ModelRegistry

    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env(worker_env)
    docroot = Path(worker_env["REID_AL_DOCUMENT_ROOT"])
    with_text = make_manifest(docroot / "captioned")
    without_text = docroot / "plain"
    make_manifest(without_text, {})
    (without_text / "manifest.jsonl").unlink()  # a folder: no text at all

    projects = {"41": with_text, "42": without_text}
    for project, source in projects.items():
        assert main(["ingest", str(source), "--project", project, "--no-push"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["embedded"] == 12
        assert report["text"]["text_dim"] == (tiny.dim if project == "41" else 0)
        # what `reid-al ingest` does next once Label Studio is there: the first cycle, for the worker
        assert first_cycle(settings, project, redis=redis_client)["mode"] == "queued"

    queue = CycleQueue.for_settings(redis_client, settings)
    deadline = time.monotonic() + WAIT_S
    while not all(
        queue.status(p)["n_cycles"] >= 1 and queue.status(p)["active_job"] is None for p in projects
    ):
        if worker.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no cycle; worker log:\n{(tmp_path / 'worker.log').read_text()[-4000:]}")
        time.sleep(0.2)

    for project, text_dim in (("41", tiny.dim), ("42", 0)):
        [cycle] = ProjectState(redis_client, project).cycles.history()
        assert cycle["status"] == "finished", cycle
        assert cycle["text"]["text_dim"] == text_dim
        version = ModelRegistry(settings.model_dir, project).latest()
        assert version == cycle["version"]
        assert read_metrics(settings, project, version)["text_dim"] == text_dim
    status = create_app(settings, redis=redis_client).test_client().get("/status?project=41").json
    assert status["last_cycle"]["text"] == {
        "items_with_text": 4,
        "text_dim": tiny.dim,
        "used": True,
        "embedded": 0,
        "reason": None,
    }
    printed = format_status({"queue": "q", "queue_depth": 0, "projects": [queue.status("41")]})
    assert (
        f"text: 4 image(s) with captions/attributes, {tiny.dim}-d text features used by the cycle" in printed
    )
