"""`ingest`: pool file, real embeddings (mobilenetv2, offline), URLs/storages, and the first cycle."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis as redis_lib
from PIL import Image
from rq import Queue

from ml_backend.embedded import free_port
from ml_backend.ingest import attach_urls, ingest, running_redis, storage_dirs
from ml_backend.jobs import load_project_data
from ml_backend.labelstudio import LabelStudioClient
from ml_backend.pool import Pool, PoolItem, UnreadableImages
from ml_backend.queue import SERIALIZER
from ml_backend.settings import Settings
from ml_backend.state import ProjectState
from trainer.defaults import CYCLE_STRATEGY
from trainer.store import EmbeddingStore

LABEL_CONFIG = (Path(__file__).resolve().parents[1] / "ml_backend" / "label_config.xml").read_text()


def make_images(
    root: Path, identities: int, per_identity: int, *, start: int = 0, seed: int = 0
) -> list[Path]:
    """Tiny crops: one colour per identity plus noise, so the encoder sees distinct images."""
    rng = np.random.default_rng(seed)
    paths = []
    for ident in range(identities):
        colour = np.array([(ident * 67) % 256, (ident * 131 + 40) % 256, (ident * 29 + 90) % 256])
        for k in range(start, start + per_identity):
            pixels = np.clip(colour + rng.normal(0, 25, (24, 16, 3)), 0, 255).astype(np.uint8)
            path = root / f"id{ident:02d}" / f"{k:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            paths.append(path)
    return paths


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(model_dir=tmp_path / "models", encoder="mobilenetv2", label_studio_api_key="")


@pytest.mark.slow  # loads the real mobilenetv2 encoder: 2-25 s depending on the machine's load
def test_ingest_folder_embeds_once_and_appends_new_images(tmp_path: Path, settings: Settings) -> None:
    images = tmp_path / "images"
    make_images(images, 2, 3)
    first = ingest(images, "4", settings, push=False, progress=False, num_workers=0)
    assert (first.n_source, first.n_new, first.n_pool, first.embedded, first.already_embedded) == (
        6,
        6,
        6,
        6,
        0,
    )
    assert first.failures == [] and first.cycle is None
    pool = Pool.load(settings.model_dir, "4")
    assert pool.ids[:2] == ["id00/000.png", "id00/001.png"] and pool.item("id01/002.png").identity == "id01"
    store = EmbeddingStore(settings.model_dir / "4" / "features")
    assert sorted(store.ids()) == sorted(pool.ids) and store.encoder == "mobilenetv2"
    feats = store.features()
    assert feats.shape[0] == 6 and np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4)

    make_images(images, 3, 1, start=3, seed=1)  # three new images, one of them a new identity
    (images / "broken").mkdir()
    (images / "broken" / "x.png").write_bytes(b"not a png")
    second = ingest(images, 4, settings, push=False, progress=False, num_workers=0)
    assert (second.n_new, second.n_pool, second.embedded, second.already_embedded) == (4, 10, 3, 6)
    assert [i for i, _ in second.failures] == ["broken/x.png"]
    assert any(
        "1 image(s) unreadable, left out of the pool" in w and "broken/x.png" in w for w in second.warnings
    )
    assert second.n_unreadable == 1 and list(UnreadableImages(settings.model_dir, "4").load()) == [
        "broken/x.png"
    ]
    assert Pool.load(settings.model_dir, "4").ids[:6] == pool.ids  # rows of earlier images never move


@pytest.mark.slow  # loads the real mobilenetv2 encoder
def test_skipped_files_are_listed_and_unreadable_images_leave_the_pool_until_fixed(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    images = tmp_path / "images"
    make_images(images, 2, 2)
    (images / "id00" / "notes.txt").write_text("not an image")
    (images / "README").write_text("about this set")
    (images / ".DS_Store").write_bytes(b"hidden: ignored")
    (images / "id01" / "corrupt.png").write_bytes(b"\x89PNG but nothing after")
    with caplog.at_level(logging.WARNING, logger="ml_backend.ingest"):
        report = ingest(images, "6", settings, push=False, progress=False, num_workers=0)
    assert (report.n_skipped, report.skipped) == (2, ["README", "id00/notes.txt"])
    assert report.embedded == 4 and [i for i, _ in report.failures] == ["id01/corrupt.png"]
    logged = caplog.text
    assert "2 file(s) skipped, not images by extension" in logged and "id00/notes.txt" in logged
    assert "id01/corrupt.png" in logged and "left out of the pool" in logged

    # A cycle does not try it again (no encoder is even loaded): its embedding failed for good.
    import trainer.encoders

    def no_encoder(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a cycle retried an unreadable image")

    monkeypatch.setattr(trainer.encoders, "encoder_from_spec", no_encoder)
    data = load_project_data(settings, "6")
    assert sorted(data.ids) == sorted(
        i for i in Pool.load(settings.model_dir, "6").ids if i != "id01/corrupt.png"
    )
    monkeypatch.undo()

    # Fixed and ingested again: embedded, and off the list.
    make_images(images / "fixed", 1, 1)
    (images / "fixed" / "id00" / "000.png").replace(images / "id01" / "corrupt.png")
    again = ingest(images, "6", settings, push=False, progress=False, num_workers=0)
    assert again.embedded == 1 and again.failures == [] and again.n_unreadable == 0
    assert UnreadableImages(settings.model_dir, "6").load() == {}


def test_ingest_manifest_without_embedding_or_push(tmp_path: Path, settings: Settings) -> None:
    [a, b] = make_images(tmp_path / "imgs", 1, 2)
    manifest = tmp_path / "pool.csv"
    manifest.write_text(f"image,camera,text\n{a},c1,red coat\n{b},c2,\n")
    report = ingest(manifest, "9", settings, embed=False, progress=False)
    assert report.n_pool == 2 and report.embedded == 0
    assert not (settings.model_dir / "9" / "features").exists()
    assert Pool.load(settings.model_dir, "9").item("imgs/id00/000.png").text == "red coat"
    assert any("LABEL_STUDIO_API_KEY is not set" in w for w in report.warnings)
    assert any("REID_AL_DOCUMENT_ROOT is not set" in w for w in report.warnings)
    assert report.n_without_url == 2


def test_ingest_bad_arguments_write_nothing(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        ingest(tmp_path / "missing", "4", settings, progress=False)
    with pytest.raises(ValueError, match="pid"):
        ingest(tmp_path, "my-project", settings, progress=False)
    assert not settings.model_dir.exists()


def test_urls_follow_the_document_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    inside = make_images(root / "set1", 1, 1)[0]
    outside = make_images(tmp_path / "elsewhere", 1, 1)[0]
    pool = Pool(
        [
            PoolItem("in", str(inside)),
            PoolItem("out", str(outside)),
            PoolItem("cdn", str(outside), url="http://cdn/x.png"),
        ]
    )
    with_urls, missing = attach_urls(pool, root)
    assert missing == 1
    assert with_urls.url_for("in") == "/data/local-files/?d=set1/id00/000.png"
    assert with_urls.url_for("cdn") == "http://cdn/x.png"
    assert attach_urls(pool, None)[1] == 2


def test_storage_dirs(tmp_path: Path) -> None:
    root = tmp_path

    def items(*rels: str) -> list[PoolItem]:
        return [PoolItem(r, str(root / r), url="/data/local-files/?d=" + r) for r in rels]

    assert storage_dirs(items("set/a/1.png", "set/b/2.png"), root) == (["set"], 0)
    assert storage_dirs(items("set/a/1.png", "set/a/2.png"), root) == (["set/a"], 0)
    assert storage_dirs(items("s1/a/1.png", "s2/2.png"), root) == (["s1", "s2"], 0)
    assert storage_dirs(items("s1/a/1.png", "top.png"), root) == (["s1"], 1)
    assert storage_dirs([PoolItem("x", str(root / "x.png"), url="http://cdn/x.png")], root) == ([], 0)


def test_running_redis(tmp_path: Path, redis_url: str) -> None:
    base = Settings(model_dir=tmp_path / "models")
    assert running_redis(base) is None  # nothing running, no REDIS_URL
    (base.model_dir / "redis").mkdir(parents=True)
    (base.model_dir / "redis" / "redis.url").write_text("redis://127.0.0.1:1/0\n")
    assert running_redis(base) is None  # a URL file left behind by a backend that is gone
    with pytest.raises(ConnectionError, match="REDIS_URL"):
        running_redis(replace(base, redis_url="redis://127.0.0.1:1/0"))
    live = running_redis(replace(base, redis_url=redis_url))
    assert live is not None and live.ping()


@pytest.mark.e2e
def test_ingest_into_label_studio_adds_storage_and_queues_first_cycle(
    label_studio: object,
    ls_client: LabelStudioClient,
    redis_client: redis_lib.Redis,
    tmp_path: Path,
) -> None:
    document_root: Path = label_studio.document_root  # type: ignore[attr-defined]
    images = document_root / "ingest-test"
    make_images(images / "cam", 2, 2)
    make_images(images, 1, 1, start=9)  # a second folder (id00/009.png) under the same dataset folder
    project = int(ls_client.create_project("ingest test project", LABEL_CONFIG)["id"])
    settings = Settings(
        model_dir=tmp_path / "models",
        encoder="mobilenetv2",
        label_studio_url=label_studio.url,  # type: ignore[attr-defined]
        label_studio_api_key=label_studio.token,  # type: ignore[attr-defined]
        document_root=str(document_root),
        backend_url=f"http://127.0.0.1:{free_port()}",  # no backend runs there: connecting fails, said
    )
    try:
        report = ingest(images, project, settings, client=ls_client, redis=redis_client, progress=False)
        assert report.n_pool == 5 and report.n_without_url == 0 and report.embedded == 5
        assert report.storages == [str(images.resolve())]
        assert [s["path"] for s in ls_client.list_local_storages(project)] == [str(images.resolve())]
        assert report.cycle is not None and report.cycle["mode"] == "queued"
        assert report.cycle["outcome"] == "enqueued"
        # the project had no ML backend: ingest tried to connect it, and says why it could not
        assert report.connect is not None and report.connect["action"] == "failed"
        assert any(
            w.startswith("not connected to Label Studio: connecting the ML backend at http://127.0.0.1:")
            and f"run `reid-al connect --project {project}`" in w
            for w in report.warnings
        ), report.warnings
        assert ls_client.list_ml_backends(project) == []
        queue = Queue(settings.queue_name, connection=redis_client, serializer=SERIALIZER)
        assert queue.job_ids == [report.cycle["job_id"]]
        assert ProjectState(redis_client, str(project)).cycles.status()["status"] == "queued"
        # re-ingesting is idempotent in Label Studio too, and the queued cycle absorbs the request
        again = ingest(images, project, settings, client=ls_client, redis=redis_client, progress=False)
        assert again.n_new == 0 and again.embedded == 0 and len(ls_client.list_local_storages(project)) == 1
        assert again.cycle is not None and again.cycle["outcome"] != "enqueued"
        assert len(queue.job_ids) == 1
        with pytest.raises(ValueError, match="has no project"):
            ingest(images, 999_999, settings, client=ls_client, redis=redis_client, progress=False)
        assert not (settings.model_dir / "999999").exists()  # checked before anything is written
    finally:
        ls_client.delete_project(project)


@pytest.mark.e2e
@pytest.mark.slow
def test_ingest_with_no_backend_running_runs_the_first_cycle_itself(
    label_studio: object, ls_client: LabelStudioClient, tmp_path: Path
) -> None:
    from ml_backend.embedded import EmbeddedRedis

    document_root: Path = label_studio.document_root  # type: ignore[attr-defined]
    images = document_root / "inline-ingest"
    make_images(images, 4, 4)
    project = int(ls_client.create_project("inline ingest project", LABEL_CONFIG)["id"])
    settings = Settings(
        model_dir=tmp_path / "models",
        encoder="mobilenetv2",
        strategy="uncertainty",
        budget=5,
        label_studio_url=label_studio.url,  # type: ignore[attr-defined]
        label_studio_api_key=label_studio.token,  # type: ignore[attr-defined]
        document_root=str(document_root),
        backend_url=f"http://127.0.0.1:{free_port()}",  # no backend runs there: connecting fails, said
    )
    try:
        report = ingest(images, project, settings, progress=False)
        cycle = report.cycle
        assert cycle is not None and cycle["mode"] == "inline", report
        assert cycle["status"] == "finished" and cycle["version"], cycle
        tasks = list(ls_client.iter_tasks(project, fields="all"))
        assert len(tasks) == 5
        assert all(t["predictions"][0]["model_version"] == cycle["version"] for t in tasks)
        assert ls_client.get_project(project)["model_version"] == cycle["version"]
        assert not (settings.model_dir / "redis" / "redis.url").exists()  # the temporary server is gone
        with EmbeddedRedis(settings.model_dir / "redis") as server:  # ... and `reid-al serve` finds its state
            client = redis_lib.Redis.from_url(server.url)
            assert ProjectState(client, str(project)).cycles.versions() == [cycle["version"]]
            client.close()
    finally:
        ls_client.delete_project(project)


@pytest.mark.e2e
@pytest.mark.slow
def test_default_strategy_cycle_after_sync_with_nothing_left_open(
    label_studio: object, ls_client: LabelStudioClient, tmp_path: Path
) -> None:
    """The production default sampler end to end with no backend process: ingest runs cycle 1, an
    annotator answers every task, `sync` brings the answers in, cycle 2 runs with no open task left
    (Label Studio then refuses a model_version no prediction carries: the cycle must still finish)."""
    from ml_backend.embedded import EmbeddedRedis
    from ml_backend.ingest import run_cycle_inline
    from ml_backend.sync import sync

    document_root: Path = label_studio.document_root  # type: ignore[attr-defined]
    images = document_root / "default-ingest"
    make_images(images, 6, 5, seed=3)
    project = int(ls_client.create_project("default strategy project", LABEL_CONFIG)["id"])
    settings = Settings(
        model_dir=tmp_path / "models",
        encoder="mobilenetv2",
        budget=8,
        label_studio_url=label_studio.url,  # type: ignore[attr-defined]
        label_studio_api_key=label_studio.token,  # type: ignore[attr-defined]
        document_root=str(document_root),
        backend_url=f"http://127.0.0.1:{free_port()}",  # no backend runs there: connecting fails, said
    )
    assert settings.strategy == CYCLE_STRATEGY
    try:
        first = ingest(images, project, settings, progress=False).cycle
        assert first is not None and first["status"] == "finished", first
        tasks = list(ls_client.iter_tasks(project, fields="all"))
        assert 1 <= len(tasks) <= 8
        assert all([p["model_version"] for p in t["predictions"]] == [first["version"]] for t in tasks)
        for task in tasks:
            same = task["data"]["id_a"].split("/")[0] == task["data"]["id_b"].split("/")[0]
            result = [
                {
                    "from_name": "answer",
                    "to_name": "image_a",
                    "type": "choices",
                    "value": {"choices": ["same" if same else "different"]},
                }
            ]
            ls_client.create_annotation(task["id"], result)
        with EmbeddedRedis(settings.model_dir / "redis") as server:
            client = redis_lib.Redis.from_url(server.url)
            report = sync(project, settings, ls_client, redis=client)
            client.close()
        assert report.added == len(tasks) and report.invalid == []
        second = run_cycle_inline(settings, project, reason="after sync")
        assert second["status"] == "finished", second
        assert second["version"] and second["version"] != first["version"]
        open_tasks = [t for t in ls_client.iter_tasks(project) if not t["total_annotations"]]
        expected_version = second["version"] if open_tasks else first["version"]
        assert ls_client.get_project(project)["model_version"] == expected_version
    finally:
        ls_client.delete_project(project)


class FakeLabelStudio:
    """The ML-backend and webhook calls of Label Studio, as 1.23 answers them (a new ML backend gets a
    webhook without headers), in memory."""

    url = "http://label-studio.test"

    def __init__(self, backends: list[str] | None = None) -> None:
        self.backends = [self._backend(k + 1, u) for k, u in enumerate(backends or [])]
        self.hooks: list[dict] = []
        self.writes: list[str] = []

    @staticmethod
    def _backend(ml_id: int, url: str, **fields: object) -> dict:
        return {
            "id": ml_id,
            "url": url,
            "title": "x",
            "auth_method": "NONE",
            "basic_auth_user": None,
            "basic_auth_pass_is_set": False,
            "readable_state": "Connected",
            **fields,
        }

    def get_project(self, pid: int) -> dict:
        return {"id": pid}

    def list_ml_backends(self, pid: int) -> list[dict]:
        return [dict(b) for b in self.backends]

    def create_ml_backend(self, pid: int, fields: dict) -> dict:
        self.writes.append("create_ml_backend")
        backend = self._backend(
            len(self.backends) + 1,
            fields["url"],
            title=fields["title"],
            auth_method=fields["auth_method"],
            basic_auth_user=fields.get("basic_auth_user"),
            basic_auth_pass_is_set=bool(fields.get("basic_auth_pass")),
        )
        self.backends.append(backend)
        self.hooks.append(
            {
                "id": len(self.hooks) + 1,
                "url": fields["url"] + "/webhook",
                "headers": {},
                "is_active": True,
                "send_payload": True,
                "send_for_all_actions": True,
            }
        )
        return dict(backend)

    def list_webhooks(self, pid: int) -> list[dict]:
        return [dict(h) for h in self.hooks]

    def update_webhook(self, hook_id: int, **fields: object) -> dict:
        self.writes.append("update_webhook")
        hook = next(h for h in self.hooks if h["id"] == hook_id)
        hook.update(fields)
        return dict(hook)


def test_ingest_connects_a_project_that_has_no_ml_backend(tmp_path: Path) -> None:
    from ml_backend.connect import basic_auth_header
    from ml_backend.ingest import IngestReport, connect_if_not_connected

    settings = Settings(model_dir=tmp_path, basic_auth_user="u", basic_auth_pass="p", port=9191)
    fake = FakeLabelStudio()
    report = IngestReport(project="5", source="s", pool_path="p", n_source=0, n_new=0, n_pool=0)
    outcome = connect_if_not_connected(fake, "5", settings, report)  # type: ignore[arg-type]
    assert outcome["action"] == "connected" and outcome["connected"] and report.warnings == []
    assert [(b["url"], b["auth_method"], b["basic_auth_user"]) for b in fake.backends] == [
        ("http://localhost:9191", "BASIC_AUTH", "u")
    ]
    assert fake.hooks[0]["headers"] == {"Authorization": basic_auth_header("u", "p")}

    fake.writes.clear()  # connected now: a second ingest leaves it alone
    assert connect_if_not_connected(fake, "5", settings, report) == {  # type: ignore[arg-type]
        "action": "already connected",
        "url": "http://localhost:9191",
    }
    assert fake.writes == [] and report.warnings == []

    elsewhere = FakeLabelStudio(["http://other:9090"])
    outcome = connect_if_not_connected(elsewhere, "5", settings, report)  # type: ignore[arg-type]
    assert (
        outcome == {"action": "connected elsewhere", "urls": ["http://other:9090"]} and elsewhere.writes == []
    )
    assert report.warnings == [
        "project 5 is connected to http://other:9090, not to http://localhost:9191 (REID_AL_BACKEND_URL): "
        "run `reid-al connect --project 5` if this backend should serve it"
    ]


def _answer_all(ls_client: LabelStudioClient, project: int) -> int:
    """An annotator answers every open pair task from the truth (identity = folder)."""
    n = 0
    for task in ls_client.iter_tasks(project, fields="all"):
        if task["total_annotations"]:
            continue
        same = task["data"]["id_a"].split("/")[0] == task["data"]["id_b"].split("/")[0]
        value = {"choices": ["same" if same else "different"]}
        ls_client.create_annotation(
            task["id"], [{"from_name": "answer", "to_name": "image_a", "type": "choices", "value": value}]
        )
        n += 1
    return n


@pytest.mark.e2e
@pytest.mark.slow
def test_export_after_annotating_and_the_stopping_rule_stops_pushes(
    label_studio: object,
    ls_client: LabelStudioClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Against a real Label Studio: annotate, sync, cycle; `reid-al export` hands back one identity per
    pool image that agrees with every answer and with the version's identities; once the last answer
    changes nothing (stopping rule with window 1, patience 1), the next cycle pushes no new pair."""
    import csv

    from ml_backend.cli import main
    from ml_backend.embedded import EmbeddedRedis
    from ml_backend.export import read_identities
    from ml_backend.ingest import run_cycle_inline
    from ml_backend.pairs import pair_id, task_data
    from ml_backend.pool import local_files_url
    from ml_backend.sync import sync

    document_root: Path = label_studio.document_root  # type: ignore[attr-defined]
    images = document_root / "export-stop"
    make_images(images, 5, 4, seed=5)
    project = int(ls_client.create_project("export and stopping", LABEL_CONFIG)["id"])
    settings = Settings(
        model_dir=tmp_path / "models",
        encoder="mobilenetv2",
        budget=8,
        label_studio_url=label_studio.url,  # type: ignore[attr-defined]
        label_studio_api_key=label_studio.token,  # type: ignore[attr-defined]
        document_root=str(document_root),
        stop_window=1,
        stop_patience=1,
        stop_threshold=0.5,
    )

    def sync_now() -> None:
        with EmbeddedRedis(settings.model_dir / "redis") as server:
            client = redis_lib.Redis.from_url(server.url)
            report = sync(project, settings, ls_client, redis=client)
            client.close()
        assert report.invalid == []

    try:
        first = ingest(images, project, settings, progress=False).cycle
        assert first is not None and first["status"] == "finished", first
        assert _answer_all(ls_client, project) >= 1
        sync_now()
        second = run_cycle_inline(settings, project, reason="after sync")
        assert second["status"] == "finished", second
        version = second["version"]

        # -- export, as README gives it
        with EmbeddedRedis(settings.model_dir / "redis") as server:
            monkeypatch.setenv("MODEL_DIR", str(settings.model_dir))
            monkeypatch.setenv("REDIS_URL", server.url)
            out = tmp_path / "identities.csv"
            assert main(["export", "--project", str(project), "--out", str(out)]) == 0
            client = redis_lib.Redis.from_url(server.url)
            answers = ProjectState(client, str(project)).annotations.all()
            client.close()
        assert f"of version {version}" in capsys.readouterr().err
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 20 and {r["image_id"] for r in rows} == {
            f"id{i:02d}/{k:03d}.png" for i in range(5) for k in range(4)
        }
        identity = {r["image_id"]: r["identity"] for r in rows}
        stored = read_identities(settings.project_dir(str(project)) / version)
        assert len({r["identity"] for r in rows}) == len(set(stored.labels.tolist()))
        verified = {r["image_id"] for r in rows if r["verified"].lower() == "true"}
        for record in answers:
            a, b = record["image_a"], record["image_b"]
            if record["answer"] == "same":
                assert identity[a] == identity[b] and {a, b} <= verified, record
            elif record["answer"] == "different":
                assert identity[a] != identity[b], record

        # -- one more answer that changes nothing: two images of different individuals that the
        # identities in service already keep apart
        a, b = next(
            (x, y)
            for x in sorted(identity)
            for y in sorted(identity)
            if x < y
            and x.split("/")[0] != y.split("/")[0]
            and identity[x] != identity[y]
            and pair_id(x, y) not in set(ls_client.task_ids_by_pair(project))
        )
        url = {i: local_files_url(images / i, document_root) for i in (a, b)}
        (extra,) = ls_client.create_tasks(project, [{"data": task_data(a, b, url[a], url[b])}])
        value = {"choices": ["different"]}
        ls_client.create_annotation(
            extra, [{"from_name": "answer", "to_name": "image_a", "type": "choices", "value": value}]
        )
        _answer_all(ls_client, project)  # any pair the second cycle pushed, answered before it
        sync_now()
        tasks_before = {t["id"] for t in ls_client.iter_tasks(project)}
        third = run_cycle_inline(settings, project, reason="stopping")
        assert third["status"] == "finished", third
        with EmbeddedRedis(settings.model_dir / "redis") as server:
            client = redis_lib.Redis.from_url(server.url)
            stop = ProjectState(client, str(project)).cycles.history()[0]["stopping"]
            client.close()
        assert stop["reached"] and not stop["pushing"], stop
        assert {t["id"] for t in ls_client.iter_tasks(project)} == tasks_before  # no new pair pushed
    finally:
        ls_client.delete_project(project)
