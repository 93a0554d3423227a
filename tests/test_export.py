"""`reid-al export` and GET /export: every pool image with the identity the cycle assigned it."""

from __future__ import annotations

import base64
import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from ml_backend.app import create_app
from ml_backend.cli import main
from ml_backend.export import COLUMNS, build_export, export_format
from ml_backend.pool import Pool, PoolItem
from ml_backend.settings import Settings
from ml_backend.state import GLOBAL_COUNTERS_KEY, ProjectState
from strategies.constraints import ConstraintGraph
from trainer.cycle import CycleConfig, CycleResult, run_cycle
from trainer.registry import ModelRegistry
from trainer.store import EmbeddingStore

AUTH = {"Authorization": "Basic " + base64.b64encode(b"ann:secret").decode()}
PROJECT = "3"


def _project(tmp_path: Path, redis_client: redis.Redis | None = None) -> tuple[list[str], CycleResult]:
    """A 24-image pool (6 individuals x 4), 3 answers in Redis, one cycle saved as a version."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(6, 16))
    feats = np.repeat(centres, 4, axis=0) + 0.25 * rng.normal(size=(24, 16))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"im{k:02d}" for k in range(24)]
    EmbeddingStore(tmp_path / PROJECT / "features").append(ids, feats, encoder="synthetic")
    images = tmp_path / "imgs"
    images.mkdir(exist_ok=True)
    for i in [*ids, "late"]:
        (images / f"{i}.jpg").write_bytes(b"")
    items = [PoolItem(id=i, path=str(images / f"{i}.jpg"), url=f"/data/local-files/?d={i}.jpg") for i in ids]
    items.append(PoolItem(id="late", path=str(images / "late.jpg")))  # registered, never embedded
    Pool(items).save(tmp_path, PROJECT)
    graph = ConstraintGraph()
    answers = [("1", 0, 1, "same"), ("2", 1, 2, "same"), ("3", 0, 4, "different")]
    for ann, i, j, kind in answers:
        graph.add(ann, i, j, "must_link" if kind == "same" else "cannot_link")
        if redis_client is not None:
            ProjectState(redis_client, PROJECT).annotations.record(
                ann, task_id=None, image_a=ids[i], image_b=ids[j], answer=kind, updated_at=1_700_000_000.0
            )
    result = run_cycle(
        feats, graph, CycleConfig(strategy="random", budget=4), registry=ModelRegistry(tmp_path, PROJECT)
    )
    return ids, result


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(model_dir=tmp_path, **overrides)


def test_export_rows_equal_the_cycles_identity_assignment(tmp_path: Path, redis_client: redis.Redis) -> None:
    ids, result = _project(tmp_path, redis_client)
    export = build_export(_settings(tmp_path), PROJECT, redis=redis_client)
    assert export.version == result.version
    by_id = {row["image_id"]: row for row in export.rows}
    assert [row["image_id"] for row in export.rows] == [*ids, "late"]
    identities = result.identities
    assert [by_id[i]["identity"] for i in ids] == identities.labels.tolist()
    assert [by_id[i]["verified"] for i in ids] == identities.verified.tolist()
    assert [by_id[i]["answers"] for i in ids] == identities.answers.tolist()
    assert [by_id[i]["confidence"] for i in ids] == pytest.approx(identities.confidence.tolist(), abs=1e-4)
    assert [by_id[i]["new_individual"] for i in ids] == identities.new_individual.tolist()
    # the answers are there: 0, 1, 2 one verified identity, 0 and 4 apart
    assert by_id["im00"]["identity"] == by_id["im01"]["identity"] == by_id["im02"]["identity"]
    assert by_id["im00"]["verified"] and by_id["im00"]["answers"] == 3
    assert by_id["im00"]["identity"] != by_id["im04"]["identity"]
    assert by_id["late"] == {
        "image_id": "late",
        "path": str(tmp_path / "imgs" / "late.jpg"),
        "url": None,
        "identity": None,
        "verified": False,
        "confidence": None,
        "answers": 0,
        "new_individual": None,
    }
    assert (
        by_id["im05"]["path"] == str(tmp_path / "imgs" / "im05.jpg")
        and by_id["im05"]["url"] == "/data/local-files/?d=im05.jpg"
    )
    assert export.answers_changed is False and export.answers_after_version == 0 and export.note is None
    assert export.summary["images_without_identity"] == 1


def test_answers_after_the_version_are_reported(tmp_path: Path, redis_client: redis.Redis) -> None:
    ids, _ = _project(tmp_path, redis_client)
    ProjectState(redis_client, PROJECT).annotations.record(
        "4", task_id=None, image_a=ids[5], image_b=ids[6], answer="same", updated_at=time.time() + 5
    )
    export = build_export(_settings(tmp_path), PROJECT, redis=redis_client)
    assert export.answers_changed is True and export.answers_after_version == 1
    assert "answers changed" in export.note
    unchecked = build_export(_settings(tmp_path), PROJECT)
    assert unchecked.answers_changed is None and "could not be read" in unchecked.note


def test_csv_and_json_are_read_by_dataframe_tooling(tmp_path: Path) -> None:
    _, result = _project(tmp_path)
    export = build_export(_settings(tmp_path), PROJECT)
    rows = list(csv.DictReader(io.StringIO(export.to_csv())))
    assert tuple(rows[0]) == COLUMNS and {"image_id", "identity", "path"} <= set(rows[0])
    assert [int(r["identity"]) for r in rows[:24]] == result.identities.labels.tolist()
    assert rows[0]["verified"] == "true" and rows[-1]["identity"] == "" and rows[-1]["verified"] == "false"
    doc = json.loads(export.to_json())
    assert doc["version"] == result.version and doc["columns"] == list(COLUMNS)
    assert [r["identity"] for r in doc["images"][:24]] == result.identities.labels.tolist()
    # the export is a manifest `reid-al ingest` reads back (image + identity columns)
    from ml_backend.pool import read_manifest

    manifest = tmp_path / "back.csv"
    manifest.write_text(export.to_csv())
    back = read_manifest(manifest)
    assert [item.identity for item in back[:3]] == [str(v) for v in result.identities.labels[:3]]


def test_export_format_follows_the_suffix_and_refuses_others() -> None:
    assert export_format(None, "ids.json") == "json"
    assert export_format(None, "ids.CSV") == "csv"
    assert export_format(None, "-") == "csv" and export_format(None, "ids.txt") == "csv"
    assert export_format("json", "ids.csv") == "json"
    with pytest.raises(ValueError, match="format"):
        export_format("xml")


def test_cli_export_writes_csv_json_and_stdout(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    _, result = _project(tmp_path, redis_client)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", redis_url)
    out = tmp_path / "identities.csv"
    assert main(["export", "--project", PROJECT, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"25 images, {result.identities.n_identities} identities" in err and "note" not in err
    assert out.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert main(["export", "--project", PROJECT, "--out", str(tmp_path / "ids.json")]) == 0
    assert json.loads((tmp_path / "ids.json").read_text())["version"] == result.version
    capsys.readouterr()
    assert main(["export", "--project", PROJECT, "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["images"]) == 25
    ProjectState(redis_client, PROJECT).annotations.record(
        "9", task_id=None, image_a="im07", image_b="im08", answer="different", updated_at=time.time() + 5
    )
    assert main(["export", "--project", PROJECT, "--out", str(out)]) == 0
    assert "note: identities of version" in capsys.readouterr().err


def test_cli_export_unhappy_paths_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.delenv("REDIS_URL", raising=False)
    out = tmp_path / "ids.csv"
    assert main(["export", "--project", "77", "--out", str(out)]) == 2
    assert "project 77 has no model version" in capsys.readouterr().err and not out.exists()
    assert main(["export", "--project", "abc", "--out", str(out)]) == 2
    assert "project" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as info:
        main(["export", "--project", PROJECT, "--format", "xml"])
    assert info.value.code == 2 and "--format" in capsys.readouterr().err
    _project(tmp_path)
    assert main(["export", "--project", PROJECT, "--version", "v0099-20260101T0000", "--out", str(out)]) == 2
    assert "no version" in capsys.readouterr().err and not out.exists()
    assert main(["export", "--project", PROJECT, "--out", str(tmp_path / "missing" / "ids.csv")]) == 2
    assert "--out" in capsys.readouterr().err
    # without Redis the export still works, and says it could not check for newer answers
    assert main(["export", "--project", PROJECT, "--out", str(out)]) == 0
    assert "could not be read" in capsys.readouterr().err and out.exists()


def _http(redis_client: redis.Redis, tmp_path: Path) -> Any:
    settings = Settings(model_dir=tmp_path, basic_auth_user="ann", basic_auth_pass="secret")
    app = create_app(settings, redis=redis_client)
    app.testing = True
    return app.test_client()


def test_get_export_csv_and_json(tmp_path: Path, redis_client: redis.Redis) -> None:
    _, result = _project(tmp_path, redis_client)
    http = _http(redis_client, tmp_path)
    response = http.get(f"/export?project={PROJECT}", headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["X-Reid-Al-Version"] == result.version
    assert response.headers["X-Reid-Al-Answers-Changed"] == "false"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [int(r["identity"]) for r in rows[:24]] == result.identities.labels.tolist()
    response = http.get(f"/export?project={PROJECT}&format=json", headers=AUTH)
    assert response.status_code == 200 and response.json["version"] == result.version
    assert len(response.json["images"]) == 25


def test_get_export_refuses_bad_requests_and_changes_nothing(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    _project(tmp_path, redis_client)
    http = _http(redis_client, tmp_path)
    before = {k: redis_client.dump(k) for k in redis_client.keys("*") if k != GLOBAL_COUNTERS_KEY.encode()}
    assert http.get(f"/export?project={PROJECT}").status_code == 401
    cases = [
        ("/export", 400, "project"),
        ("/export?project=x1", 422, "project"),
        ("/export?project=88", 404, "project"),
        (f"/export?project={PROJECT}&format=xml", 400, "format"),
        (f"/export?project={PROJECT}&version=v0042-20260101T0000", 404, "version"),
    ]
    for url, status, field in cases:
        response = http.get(url, headers=AUTH)
        assert (response.status_code, response.json["field"]) == (status, field), url
        assert field in response.json["error"]
    after = {k: redis_client.dump(k) for k in redis_client.keys("*") if k != GLOBAL_COUNTERS_KEY.encode()}
    assert after == before
    assert not (tmp_path / "88").exists()
