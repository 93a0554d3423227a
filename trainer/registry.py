"""Model versions on disk: ``MODEL_DIR/<project>/<version>/``, written atomically, newest via ``latest``.

Why: the web process serves predictions from the newest version while an RQ worker writes the next
one, possibly on another host over shared storage. A version is built in a temp directory, fsynced,
then ``os.rename``d into place (atomic on one filesystem), and only then the small ``latest`` pointer
file is replaced (``os.replace``). A crash at any point leaves either the old state or the complete
new version — never a half version a reader could load. Leftover temp dirs are cleaned up.

Version directory contents: ``embeddings.npy`` (float32, loaded as a read-only memmap),
``adapter.pt`` (torch state dict, optional), ``config.json``, ``metrics.json``, ``extra/<name>``
(opaque bytes) and ``meta.json`` (written last; its presence marks a complete version).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from trainer.defaults import REGISTRY_STALE_TMP_SECONDS
from trainer.files import fsync_dir, fsync_file, locked

log = logging.getLogger(__name__)

LATEST_FILE = "latest"
META_FILE = "meta.json"
EMBEDDINGS_FILE = "embeddings.npy"
ADAPTER_FILE = "adapter.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
EXTRA_DIR = "extra"
TMP_PREFIX = ".tmp-"
FORMAT_VERSION = 1

_VERSION_RE = re.compile(r"^v(\d{4,})-(\d{8}T\d{4,6})$")
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_RENAME_ATTEMPTS = 100


@dataclass(frozen=True)
class VersionInfo:
    """One complete version as listed by :meth:`ModelRegistry.list`."""

    version: str
    number: int
    path: Path
    created_at: str
    n_rows: int
    dim: int
    has_adapter: bool
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelVersion:
    """A loaded version. ``embeddings`` is a read-only memmap; ``extra`` holds the saved blobs."""

    version: str
    path: Path
    embeddings: np.ndarray
    adapter_state: dict[str, Any] | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    extra: dict[str, bytes] = field(default_factory=dict)
    created_at: str = ""


def _write_json(path: Path, payload: Any, what: str) -> None:
    try:
        text = json.dumps(payload, indent=1, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable (finite numbers, str keys): {exc}") from exc
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _version_number(name: str) -> int | None:
    match = _VERSION_RE.match(name)
    return int(match.group(1)) if match else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ModelRegistry:
    """Versions of one project's model under ``model_dir/project``.

    Version ids look like ``v0003-20261121T0700`` (number, UTC minute); numbers only ever grow, even
    when two writers race (the loser of the ``rename`` takes the next number).
    """

    def __init__(self, model_dir: str | os.PathLike[str], project: str | int) -> None:
        project = str(project)
        if not _SAFE_NAME_RE.match(project):
            raise ValueError(
                f"project must be a plain name (letters, digits, '.', '_', '-'; not starting with '.'), "
                f"got {project!r}")
        self.model_dir = Path(model_dir)
        self.project = project
        self.root = self.model_dir / project

    # ------------------------------------------------------------------------------------ reading

    def _complete_versions(self) -> list[tuple[int, str]]:
        if not self.root.is_dir():
            return []
        out = []
        for entry in os.scandir(self.root):
            number = _version_number(entry.name)
            if number is not None and entry.is_dir() and os.path.isfile(os.path.join(entry.path, META_FILE)):
                out.append((number, entry.name))
        return sorted(out)

    def latest(self) -> str | None:
        """The version ``latest`` points to; if the pointer is missing or dangling, the newest complete
        version; ``None`` when there is none."""
        try:
            pointed = (self.root / LATEST_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            pointed = ""
        if pointed and _version_number(pointed) is not None and (self.root / pointed / META_FILE).is_file():
            return pointed
        versions = self._complete_versions()
        if pointed:
            log.warning("latest pointer of %s names %r, which is not a complete version", self.root, pointed)
        return versions[-1][1] if versions else None

    def list(self) -> list[VersionInfo]:
        """All complete versions, oldest first."""
        infos = []
        for number, name in self._complete_versions():
            path = self.root / name
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
            metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
            infos.append(VersionInfo(
                version=name, number=number, path=path, created_at=meta.get("created_at", ""),
                n_rows=int(meta.get("n_rows", 0)), dim=int(meta.get("dim", 0)),
                has_adapter=bool(meta.get("has_adapter", False)), metrics=metrics,
            ))
        return infos

    def load(self, version: str | None = None) -> ModelVersion:
        """Load ``version`` (default: :meth:`latest`). FileNotFoundError when there is nothing to load."""
        if version is None:
            version = self.latest()
            if version is None:
                raise FileNotFoundError(f"no model version saved under {self.root}")
        if not isinstance(version, str) or _version_number(version) is None:
            raise ValueError(f"version must look like 'v0001-20260101T0000', got {version!r}")
        path = self.root / version
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(
                f"version {version!r} does not exist (or is incomplete) under {self.root}")
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        emb_path = path / EMBEDDINGS_FILE
        embeddings = np.load(emb_path, mmap_mode="r") if int(meta.get("n_rows", 0)) else np.load(emb_path)
        adapter_state = None
        if meta.get("has_adapter"):
            import torch  # lazily: readers that only need embeddings/metrics never pay torch's import

            adapter_state = torch.load(path / ADAPTER_FILE, map_location="cpu", weights_only=True)
        extra = {}
        for name in meta.get("extra", []):
            extra[name] = (path / EXTRA_DIR / name).read_bytes()
        return ModelVersion(
            version=version,
            path=path,
            embeddings=embeddings,
            adapter_state=adapter_state,
            config=json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")),
            metrics=json.loads((path / METRICS_FILE).read_text(encoding="utf-8")),
            extra=extra,
            created_at=meta.get("created_at", ""),
        )

    # ------------------------------------------------------------------------------------ writing

    def clean_stale_temp_dirs(self, max_age_seconds: float = REGISTRY_STALE_TMP_SECONDS) -> list[Path]:
        """Remove temp dirs of saves that died: same host and the writer pid is gone, or older than
        ``max_age_seconds`` (writers on other hosts). Returns what was removed."""
        if not self.root.is_dir():
            return []
        host = socket.gethostname()
        removed = []
        now = time.time()
        for entry in os.scandir(self.root):
            if entry.name.startswith(f".{LATEST_FILE}.") and entry.is_file(follow_symlinks=False):
                pid = entry.name.split(".")[2]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                continue
            if not (entry.name.startswith(TMP_PREFIX) and entry.is_dir(follow_symlinks=False)):
                continue
            parts = entry.name[len(TMP_PREFIX):].rsplit("-", 2)
            dead = False
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                dead = not _pid_alive(int(parts[1]))
            try:
                dead = dead or now - entry.stat(follow_symlinks=False).st_mtime > max_age_seconds
            except FileNotFoundError:
                continue
            if dead:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
                log.info("removed stale temp dir %s", entry.path)
        return removed

    def save(
        self,
        *,
        embeddings: np.ndarray,
        adapter_state: Mapping[str, Any] | None,
        config: Mapping[str, Any],
        metrics: Mapping[str, Any],
        extra: Mapping[str, bytes] | None = None,
    ) -> str:
        """Write a new version and point ``latest`` at it; returns the new version id."""
        emb = np.asarray(embeddings)
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D (n, d) array, got shape {emb.shape}")
        if not np.issubdtype(emb.dtype, np.floating):
            raise TypeError(f"embeddings must be a float array, got {emb.dtype}")
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if not np.isfinite(emb).all():
            raise ValueError("embeddings contains NaN or inf")
        if adapter_state is not None and not isinstance(adapter_state, Mapping):
            raise TypeError(
                f"adapter_state must be a state dict (mapping) or None, got {type(adapter_state).__name__}")
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
        extra = dict(extra or {})
        for name, blob in extra.items():
            if not isinstance(name, str) or not _SAFE_NAME_RE.match(name):
                raise ValueError(f"extra: file name {name!r} must be a plain name (letters, digits, '._-')")
            if not isinstance(blob, (bytes, bytearray, memoryview)):
                raise TypeError(f"extra[{name!r}] must be bytes, got {type(blob).__name__}")

        self.root.mkdir(parents=True, exist_ok=True)
        self.clean_stale_temp_dirs()
        tmp = self._temp_dir_name()
        tmp.mkdir()
        try:
            np.save(tmp / EMBEDDINGS_FILE, emb)
            fsync_file(tmp / EMBEDDINGS_FILE)
            if adapter_state is not None:
                import torch

                torch.save(dict(adapter_state), tmp / ADAPTER_FILE)
                fsync_file(tmp / ADAPTER_FILE)
            _write_json(tmp / CONFIG_FILE, dict(config), "config")
            _write_json(tmp / METRICS_FILE, dict(metrics), "metrics")
            if extra:
                (tmp / EXTRA_DIR).mkdir()
                for name, blob in extra.items():
                    with open(tmp / EXTRA_DIR / name, "wb") as fh:
                        fh.write(bytes(blob))
                        fh.flush()
                        os.fsync(fh.fileno())
                fsync_dir(tmp / EXTRA_DIR)
            with locked(self.root):
                version = self._publish(tmp, emb, adapter_state is not None, sorted(extra))
                self._point_latest(version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("saved model version %s/%s (%d x %d)", self.project, version, *emb.shape)
        return version

    def _temp_dir_name(self) -> Path:
        # host + pid let clean_stale_temp_dirs tell a dead writer's leftovers from a live one's
        return self.root / f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions (never the one ``latest`` names); returns them.

        Every version holds a full copy of the embeddings, so long-running projects need this. A version
        is first renamed to a temp name (atomic: readers see it complete or gone), then deleted; a
        reader that already memory-mapped its embeddings keeps working (POSIX unlink semantics).
        """
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        if not self.root.is_dir():
            return []
        removed = []
        with locked(self.root):
            current = self.latest()
            versions = [name for _, name in self._complete_versions()]
            for name in versions[:-keep]:
                if name == current:
                    continue
                doomed = self._temp_dir_name()
                os.rename(self.root / name, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(name)
        if removed:
            fsync_dir(self.root)
            log.info("pruned %d old version(s) of %s: %s", len(removed), self.project, ", ".join(removed))
        return removed

    def _publish(self, tmp: Path, emb: np.ndarray, has_adapter: bool, extra_names: list[str]) -> str:
        """Write meta.json last, then rename the temp dir to the next free version number."""
        created = datetime.now(timezone.utc)
        stamp = created.strftime("%Y%m%dT%H%M")
        existing = [n for n, _ in self._complete_versions()]
        taken = {_version_number(e.name) for e in os.scandir(self.root)} - {None}
        number = max([*existing, *taken, 0]) + 1
        for _ in range(_MAX_RENAME_ATTEMPTS):
            version = f"v{number:04d}-{stamp}"
            _write_json(tmp / META_FILE, {
                "format": FORMAT_VERSION,
                "version": version,
                "project": self.project,
                "created_at": created.isoformat(timespec="seconds"),
                "n_rows": int(emb.shape[0]),
                "dim": int(emb.shape[1]),
                "has_adapter": has_adapter,
                "extra": extra_names,
            }, "meta")
            fsync_dir(tmp)
            try:
                os.rename(tmp, self.root / version)
            except OSError:
                if (self.root / version).exists() or any(
                        _version_number(e.name) == number for e in os.scandir(self.root)):
                    number += 1  # another writer took this number first
                    continue
                raise
            fsync_dir(self.root)
            return version
        raise RuntimeError(f"could not allocate a version number under {self.root}")

    def _point_latest(self, version: str) -> None:
        tmp = self.root / f".{LATEST_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        current = self.latest()
        if current is not None and (_version_number(current) or 0) > (_version_number(version) or 0):
            os.unlink(tmp)  # a concurrent writer already published a newer version: keep it
            return
        os.replace(tmp, self.root / LATEST_FILE)
        fsync_dir(self.root)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.model_dir)!r}, {self.project!r})"
