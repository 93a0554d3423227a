"""ModelRegistry: atomic versions, monotonic ids, `latest`, crash safety, stale temp dirs."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import registry as registry_module
from trainer.registry import LATEST_FILE, TMP_PREFIX, ModelRegistry, ModelVersion, VersionInfo

REPO = Path(__file__).resolve().parents[1]
VERSION_RE = re.compile(r"^v\d{4}-\d{8}T\d{4}$")


def _emb(n: int = 5, d: int = 4, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _save(reg: ModelRegistry, seed: int = 0, **kw: object) -> str:
    args: dict[str, object] = {
        "embeddings": _emb(seed=seed),
        "adapter_state": {"proj.weight": torch.full((2, 4), float(seed)), "step": torch.tensor(seed)},
        "config": {"lr": 0.01, "seed": seed},
        "metrics": {"mAP": 0.5 + seed / 100},
    }
    args.update(kw)
    return reg.save(**args)  # type: ignore[arg-type]


def test_save_load_roundtrip(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "proj1")
    assert reg.latest() is None and reg.list() == []
    emb = _emb(7, 3, seed=4)
    version = reg.save(embeddings=emb, adapter_state={"w": torch.arange(6.0).reshape(2, 3)},
                       config={"encoder": "mobilenetv2", "k": [1, 2]}, metrics={"mAP": 0.25},
                       extra={"labels.json": b"[1, 2, 3]", "graph.bin": b"\x00\xff"})
    assert VERSION_RE.match(version) and version.startswith("v0001-")
    assert reg.latest() == version
    assert (tmp_path / "proj1" / LATEST_FILE).read_text().strip() == version
    loaded = reg.load()
    assert isinstance(loaded, ModelVersion) and loaded.version == version
    assert loaded.path == tmp_path / "proj1" / version
    assert isinstance(loaded.embeddings, np.memmap) and not loaded.embeddings.flags.writeable
    np.testing.assert_array_equal(loaded.embeddings, emb)
    assert loaded.embeddings.dtype == np.float32
    assert loaded.adapter_state is not None
    assert torch.equal(loaded.adapter_state["w"], torch.arange(6.0).reshape(2, 3))
    assert loaded.config == {"encoder": "mobilenetv2", "k": [1, 2]} and loaded.metrics == {"mAP": 0.25}
    assert loaded.extra == {"labels.json": b"[1, 2, 3]", "graph.bin": b"\x00\xff"}
    assert loaded.created_at


def test_versions_are_monotonic_and_listed_oldest_first(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, 42)  # Label Studio project ids are ints
    versions = [_save(reg, seed=s) for s in range(3)]
    assert [int(v[1:5]) for v in versions] == [1, 2, 3]
    assert reg.latest() == versions[-1]
    infos = reg.list()
    assert all(isinstance(i, VersionInfo) for i in infos)
    assert [i.version for i in infos] == versions and [i.number for i in infos] == [1, 2, 3]
    assert infos[0].n_rows == 5 and infos[0].dim == 4 and infos[0].has_adapter
    assert infos[2].metrics == {"mAP": 0.52}
    old = reg.load(versions[0])
    assert old.config["seed"] == 0 and torch.equal(old.adapter_state["step"], torch.tensor(0))  # type: ignore[index]


def test_version_without_adapter_and_empty_embeddings(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "p")
    version = reg.save(embeddings=np.zeros((0, 8), dtype=np.float64), adapter_state=None, config={},
                       metrics={})
    loaded = reg.load(version)
    assert loaded.adapter_state is None and loaded.embeddings.shape == (0, 8)
    assert loaded.embeddings.dtype == np.float32 and loaded.extra == {}
    assert not reg.list()[0].has_adapter


def test_bad_input_is_rejected_and_writes_nothing(tmp_path: Path) -> None:
    for bad in ("", "../x", ".hidden", "a/b", "x" * 200):
        with pytest.raises(ValueError, match="project"):
            ModelRegistry(tmp_path, bad)
    reg = ModelRegistry(tmp_path, "p")
    with pytest.raises(ValueError, match="embeddings must be a 2-D"):
        _save(reg, embeddings=np.zeros(3, dtype=np.float32))
    with pytest.raises(TypeError, match="embeddings must be a float array"):
        _save(reg, embeddings=np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="NaN"):
        _save(reg, embeddings=np.full((2, 2), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="config must be JSON-serialisable"):
        _save(reg, config={"f": object()})
    with pytest.raises(ValueError, match="metrics must be JSON-serialisable"):
        _save(reg, metrics={"mAP": float("nan")})
    with pytest.raises(TypeError, match="adapter_state"):
        _save(reg, adapter_state=[1, 2])
    with pytest.raises(ValueError, match="extra: file name"):
        _save(reg, extra={"../evil": b"x"})
    with pytest.raises(TypeError, match=r"extra\['a'\] must be bytes"):
        _save(reg, extra={"a": "text"})
    assert reg.latest() is None and reg.list() == []
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(TMP_PREFIX)]
    with pytest.raises(ValueError, match="version must look like"):
        reg.load("latest")
    with pytest.raises(FileNotFoundError, match="no model version"):
        reg.load()
    with pytest.raises(FileNotFoundError, match="v0009-20260101T0000"):
        reg.load("v0009-20260101T0000")


def test_failure_during_write_keeps_previous_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry(tmp_path, "p")
    first = _save(reg, seed=1)
    real = registry_module._write_json

    def explode_on_metrics(path: Path, payload: object, what: str) -> None:
        if what == "metrics":
            raise OSError("disk full")
        real(path, payload, what)

    monkeypatch.setattr(registry_module, "_write_json", explode_on_metrics)
    with pytest.raises(OSError, match="disk full"):
        _save(reg, seed=2)
    assert reg.latest() == first and [i.version for i in reg.list()] == [first]
    assert reg.load().config["seed"] == 1
    visible = sorted(p.name for p in (tmp_path / "p").iterdir() if not p.name.startswith("."))
    assert visible == sorted([first, LATEST_FILE])
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(TMP_PREFIX)]
    monkeypatch.setattr(registry_module, "_write_json", real)
    assert _save(reg, seed=3).startswith("v0002-")


def _run_killed_save(tmp_path: Path, patch: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from trainer import registry as r
        reg = r.ModelRegistry({str(tmp_path)!r}, "p")
        reg.save(embeddings=np.eye(3, dtype=np.float32), adapter_state=None, config={{"n": 1}}, metrics={{}})
        {patch}
        reg.save(embeddings=np.eye(3, dtype=np.float32), adapter_state=None, config={{"n": 2}}, metrics={{}})
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_process_killed_mid_write_leaves_previous_version(tmp_path: Path) -> None:
    patch = textwrap.dedent("""
        real = r._write_json
        def die(path, payload, what):
            if what == "metrics":
                os._exit(7)  # like SIGKILL: no except/finally runs
            real(path, payload, what)
        r._write_json = die
    """).replace("\n", "\n        ")
    proc = _run_killed_save(tmp_path, patch)
    assert proc.returncode == 7, proc.stderr[-2000:]
    reg = ModelRegistry(tmp_path, "p")
    [only] = reg.list()
    assert reg.latest() == only.version and reg.load().config == {"n": 1}
    stale = [p for p in (tmp_path / "p").iterdir() if p.name.startswith(TMP_PREFIX)]
    assert len(stale) == 1  # the dead writer's half version: invisible to readers
    assert reg.clean_stale_temp_dirs() == stale and not stale[0].exists()
    assert _save(reg).startswith("v0002-")


def test_process_killed_before_pointer_update_keeps_latest(tmp_path: Path) -> None:
    patch = textwrap.dedent("""
        def die(version):
            os._exit(8)
        r.ModelRegistry._point_latest = lambda self, version: die(version)
    """).replace("\n", "\n        ")
    proc = _run_killed_save(tmp_path, patch)
    assert proc.returncode == 8, proc.stderr[-2000:]
    reg = ModelRegistry(tmp_path, "p")
    versions = [i.version for i in reg.list()]
    assert len(versions) == 2  # the renamed version is complete ...
    assert reg.latest() == versions[0]  # ... but `latest` was never moved to it
    assert reg.load().config == {"n": 1} and reg.load(versions[1]).config == {"n": 2}


def test_dangling_or_missing_pointer_falls_back_to_newest_complete(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "p")
    _save(reg, seed=1)
    second = _save(reg, seed=2)
    (tmp_path / "p" / LATEST_FILE).write_text("v0099-20260101T0000\n")
    assert reg.latest() == second
    (tmp_path / "p" / LATEST_FILE).unlink()
    assert reg.latest() == second
    (tmp_path / "p" / "v0100-20260101T0000").mkdir()  # a directory without meta.json is not a version
    assert reg.latest() == second and len(reg.list()) == 2


def test_pointer_never_moves_backwards(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "p")
    first = _save(reg, seed=1)
    second = _save(reg, seed=2)
    reg._point_latest(first)  # a slow writer finishing after a newer one
    assert reg.latest() == second


def test_stale_temp_dirs_are_cleaned_by_age_or_dead_pid(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "p")
    root = tmp_path / "p"
    root.mkdir()
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    dead_local = root / f"{TMP_PREFIX}{host}-{dead}-aaaa"
    live_local = root / f"{TMP_PREFIX}{host}-{os.getpid()}-bbbb"
    old_remote = root / f"{TMP_PREFIX}otherhost-1-cccc"
    young_remote = root / f"{TMP_PREFIX}otherhost-2-dddd"
    for d in (dead_local, live_local, old_remote, young_remote):
        d.mkdir()
        (d / "embeddings.npy").write_bytes(b"partial")
    past = time.time() - 7200
    os.utime(old_remote, (past, past))
    removed = reg.clean_stale_temp_dirs(max_age_seconds=3600)
    assert sorted(removed) == sorted([dead_local, old_remote])
    assert live_local.exists() and young_remote.exists()
    version = _save(reg)
    assert reg.latest() == version and version.startswith("v0001-")


def test_meta_json_is_the_completeness_marker(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "p")
    version = _save(reg)
    meta = json.loads((tmp_path / "p" / version / "meta.json").read_text())
    assert meta["version"] == version and meta["n_rows"] == 5 and meta["dim"] == 4 and meta["has_adapter"]


def test_prune_keeps_the_newest_and_the_latest_pointer(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "p")
    versions = [_save(reg, seed=s) for s in range(5)]
    held = reg.load(versions[1])  # a reader that memory-mapped an old version keeps working
    (tmp_path / "p" / LATEST_FILE).write_text(versions[0] + "\n")  # e.g. a rollback
    removed = reg.prune(keep=2)
    assert removed == versions[1:3]
    assert [i.version for i in reg.list()] == [versions[0], *versions[3:]]
    assert reg.latest() == versions[0]
    np.testing.assert_array_equal(held.embeddings, _emb(seed=1))
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(TMP_PREFIX)]
    assert reg.prune(keep=10) == []
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        reg.prune(keep=0)
    assert ModelRegistry(tmp_path, "empty").prune(keep=1) == []
