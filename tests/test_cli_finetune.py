"""`reid-al finetune`: a project's pool + pseudo-labels + constraints -> a loadable encoder checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from PIL import Image

from ml_backend.cli import main
from ml_backend.finetune import finetune_project
from ml_backend.pool import Pool, PoolItem
from ml_backend.settings import Settings
from ml_backend.state import ProjectState
from trainer.encoders import create_encoder, encoder_from_spec
from trainer.extraction import extract_embeddings
from trainer.registry import ModelRegistry
from trainer.store import EmbeddingStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROJECT = "7"
N_IDS, PER_ID = 4, 6


@pytest.fixture()
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MODEL_DIR with an ingested, embedded pool of generated 32x32 images (tiny open_clip)."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    items = []
    for ident in range(N_IDS):
        base = np.kron(rng.integers(0, 256, size=(2, 2, 3)), np.ones((16, 16, 1), dtype=np.int64))
        for k in range(PER_ID):
            arr = np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)
            path = images / f"p{ident}_{k}.png"
            Image.fromarray(arr, "RGB").save(path)
            items.append(PoolItem(id=f"p{ident}_{k}", path=str(path), identity=str(ident)))
    root = tmp_path / "model_dir"
    monkeypatch.setenv("MODEL_DIR", str(root))
    monkeypatch.setenv("REID_AL_ENCODER", "open_clip_tiny")
    for var in ("REDIS_URL", "REID_AL_ENCODER_CHECKPOINT"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings.from_env()
    Pool(items).save(root, PROJECT)
    encoder = create_encoder("open_clip_tiny", device="cpu")
    store = EmbeddingStore(settings.features_dir(PROJECT))
    report = extract_embeddings(encoder, [(i.id, i.path) for i in items], store, num_workers=0,
                                progress=False)
    assert report.n_done == len(items)
    return root


def test_cli_finetune_without_redis_clusters_the_store_and_writes_a_loadable_checkpoint(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ckpt" / "tuned.pt"
    code = main(["finetune", "--project", PROJECT, "--out", str(out), "--epochs", "2", "--device", "cpu",
                 "--num-workers", "0"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert out.is_file()
    assert f"REID_AL_ENCODER_CHECKPOINT={out.resolve()}" in printed
    assert "REID_AL_ENCODER=open_clip_tiny" in printed and "reid-al ingest" in printed
    assert '"labels_from": "DBSCAN on Jaccard' in printed
    assert "Redis not reachable" in printed and '"n_must_link": 0' in printed
    assert '"epochs": 2' in printed and '"device": "cpu"' in printed
    tuned = encoder_from_spec("open_clip_tiny", checkpoint=out, device="cpu", precision="fp32")
    assert tuned.name == "open_clip_tiny:file=tuned.pt"
    original = create_encoder("open_clip_tiny", device="cpu", precision="fp32")
    stored = np.asarray(EmbeddingStore(model_dir / PROJECT / "features").features())
    pool = Pool.load(model_dir, PROJECT)
    batch = torch.stack([tuned.preprocess(Image.open(item.path)) for item in list(pool)[:3]])
    assert not np.allclose(tuned.embed(batch).numpy(), stored[:3], atol=1e-3)  # the backbone changed
    assert original.dim == tuned.dim


def test_finetune_project_uses_registry_labels_and_redis_constraints(
    model_dir: Path, tmp_path: Path, redis_client: redis.Redis
) -> None:
    settings = Settings.from_env()
    n = N_IDS * PER_ID
    labels = np.repeat(np.arange(N_IDS), PER_ID)[: n - 2]  # a version made before the last 2 images came
    buf = io.BytesIO()
    np.save(buf, labels.astype(np.int64))
    version = ModelRegistry(model_dir, PROJECT).save(
        embeddings=np.eye(n - 2, 4, dtype=np.float32), adapter_state=None, config={}, metrics={},
        extra={"pseudo_labels.npy": buf.getvalue()})
    state = ProjectState(redis_client, PROJECT)
    state.annotations.record(1, task_id=1, image_a="p0_0", image_b="p0_1", answer="same")
    state.annotations.record(2, task_id=2, image_a="p0_0", image_b="p1_0", answer="different")
    state.annotations.record(3, task_id=3, image_a="p2_0", image_b="p3_0", answer="unsure")
    state.annotations.record(4, task_id=4, image_a="p2_0", image_b="gone", answer="same")
    out = tmp_path / "tuned.pt"
    report = finetune_project(settings, PROJECT, out, epochs=1, device="cpu", num_workers=0,
                              redis=redis_client)
    assert report["labels_from"] == f"model version {version}"
    assert report["n_clusters"] == N_IDS and report["n_images"] == n
    assert report["n_must_link"] == 1 and report["n_cannot_link"] == 1
    assert "1 unmapped" in report["constraints_from"]
    assert report["epochs"] == 1 and out.is_file()


def test_finetune_errors(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    # no pool for this project
    assert main(["finetune", "--project", "99", "--out", str(tmp_path / "x.pt"), "--device", "cpu"]) == 2
    assert "reid-al ingest" in capsys.readouterr().err
    # the store was written by another encoder than the configured one
    monkeypatch.setenv("REID_AL_ENCODER", "mobilenetv2")
    assert main(["finetune", "--project", PROJECT, "--out", str(tmp_path / "x.pt"), "--device", "cpu"]) == 2
    assert "REID_AL_ENCODER" in capsys.readouterr().err
    monkeypatch.setenv("REID_AL_ENCODER", "open_clip_tiny")
    # the output is a directory
    assert main(["finetune", "--project", PROJECT, "--out", str(tmp_path), "--device", "cpu",
                 "--num-workers", "0", "--epochs", "1"]) == 2
    assert "checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["finetune", "--project", PROJECT, "--out", "x.pt", "--device", "tpu"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["finetune", "--out", "x.pt"])
    assert "--project" in capsys.readouterr().err
