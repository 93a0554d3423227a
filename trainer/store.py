"""Append-only on-disk embedding store: memory-mapped float32 rows + a manifest of image ids.

Why this layout: features for a whole pool (10^5..10^6 crops) must be readable by several processes
without loading them into RAM (memmap), must survive a kill mid-extraction (resume), and must never
expose a half-written row. Files under ``root``:

- ``features.f32``   raw little-endian float32, row-major ``(n, dim)``; only ever appended to;
- ``ids.jsonl``      one JSON string per line: the image id of row 0, 1, 2, ... (append-only);
- ``manifest.json``  ``{"format", "encoder", "dim", "n_rows", "ids_bytes"}``, replaced atomically
  (temp + os.replace).

The manifest is the commit point: ``append`` writes (and fsyncs) the rows and the ids first, then
publishes the new ``n_rows``. Bytes past ``n_rows`` (a writer killed between the two steps) are
invisible to readers and are truncated by the next writer. Writers take an exclusive ``flock`` so two
processes cannot interleave appends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.files import locked, write_json_atomic

FORMAT_VERSION = 1
FEATURES_FILE = "features.f32"
IDS_FILE = "ids.jsonl"
MANIFEST_FILE = "manifest.json"


class StoreMismatchError(ValueError):
    """The store on disk was written by another encoder (or with another dimension)."""


class EmbeddingStore:
    """Features of one encoder for a set of image ids, grown by :meth:`append`.

    ``encoder``/``dim`` given here are checked against an existing store (a mismatch raises
    :class:`StoreMismatchError`: never mix two encoders' features); for a new store they are recorded
    at the first append. Rows are never rewritten or removed.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, encoder: str | None = None, dim: int | None = None
    ) -> None:
        if dim is not None and (not isinstance(dim, (int, np.integer)) or dim <= 0):
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"root: {self.root} exists and is not a directory")
        self._want_encoder = encoder
        self._want_dim = int(dim) if dim is not None else None
        self.encoder: str | None = None
        self.dim: int | None = None
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._ids_bytes = 0
        self.refresh()

    # ------------------------------------------------------------------------------------- reading

    def refresh(self) -> None:
        """Re-read the manifest (another process may have appended); reads only the new ids."""
        manifest = self._read_manifest()
        if manifest is None:
            self.encoder, self.dim, n_rows, ids_bytes = None, None, 0, 0
        else:
            self.encoder, self.dim = manifest["encoder"], int(manifest["dim"])
            n_rows, ids_bytes = int(manifest["n_rows"]), int(manifest["ids_bytes"])
        self._check_identity(self.encoder, self.dim)
        if n_rows < len(self._ids):  # the store was replaced under us: start over
            self._ids, self._index, self._ids_bytes = [], {}, 0
        if n_rows > len(self._ids):
            new = self._read_ids(self._ids_bytes, n_rows - len(self._ids))
            for row, image_id in enumerate(new, start=len(self._ids)):
                self._index[image_id] = row
            self._ids.extend(new)
        self._ids_bytes = ids_bytes

    def _check_identity(self, encoder: str | None, dim: int | None) -> None:
        if encoder is not None and self._want_encoder is not None and encoder != self._want_encoder:
            raise StoreMismatchError(
                f"encoder: store {self.root} holds features of {encoder!r}, not {self._want_encoder!r}")
        if dim is not None and self._want_dim is not None and dim != self._want_dim:
            raise StoreMismatchError(f"dim: store {self.root} holds {dim}-d features, not {self._want_dim}-d")

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.root / MANIFEST_FILE
        try:
            with open(path, encoding="utf-8") as fh:
                manifest = json.load(fh)
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise ValueError(f"root: {path} is not valid JSON ({exc})") from exc
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"root: {path} has unsupported format {manifest.get('format')!r}")
        return manifest

    def _read_ids(self, offset: int, count: int) -> list[str]:
        ids: list[str] = []
        with open(self.root / IDS_FILE, "rb") as fh:
            fh.seek(offset)
            for _ in range(count):
                line = fh.readline()
                if not line.endswith(b"\n"):
                    break
                ids.append(json.loads(line))
        if len(ids) != count:
            raise ValueError(f"root: {self.root / IDS_FILE} is shorter than its manifest says")
        return ids

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._ids))

    def ids(self) -> list[str]:
        """Image ids in row order (a copy)."""
        return list(self._ids)

    def row(self, image_id: str) -> int:
        """Row of ``image_id``; KeyError when it is not stored."""
        try:
            return self._index[image_id]
        except KeyError:
            raise KeyError(f"image id {image_id!r} is not in the store {self.root}") from None

    def rows(self, image_ids: Iterable[str]) -> np.ndarray:
        """Rows of ``image_ids`` (int64, same order); KeyError naming the missing ids."""
        ids = list(image_ids)
        missing = [i for i in ids if i not in self._index]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5])
            raise KeyError(f"{len(missing)} image id(s) not in the store {self.root}: {shown}")
        return np.fromiter((self._index[i] for i in ids), dtype=np.int64, count=len(ids))

    def missing(self, image_ids: Iterable[str]) -> list[str]:
        """The ids (in the given order, first occurrence only) that have no row yet."""
        seen: set[str] = set()
        out = []
        for image_id in image_ids:
            if image_id not in self._index and image_id not in seen:
                seen.add(image_id)
                out.append(image_id)
        return out

    def features(self) -> np.ndarray:
        """All committed rows as a read-only ``(n, dim)`` float32 memmap (an empty array when n = 0)."""
        n = len(self._ids)
        if n == 0:
            return np.empty((0, self.dim or 0), dtype=np.float32)
        return np.memmap(self.root / FEATURES_FILE, dtype="<f4", mode="r", shape=(n, int(self.dim or 0)))

    def vectors(self, image_ids: Iterable[str]) -> np.ndarray:
        """Features of ``image_ids`` copied into RAM, in the given order."""
        rows = self.rows(image_ids)
        return np.asarray(self.features()[rows], dtype=np.float32)

    # ------------------------------------------------------------------------------------- writing

    def append(self, image_ids: Sequence[str], features: np.ndarray, *, encoder: str | None = None) -> None:
        """Add rows for new ``image_ids`` (all-or-nothing: visible only once completely written)."""
        ids = list(image_ids)
        if not all(isinstance(i, str) and i for i in ids):
            raise TypeError("image_ids must be non-empty strings")
        if len(set(ids)) != len(ids):
            raise ValueError("image_ids contains duplicates")
        feats = np.asarray(features)
        if feats.ndim != 2 or feats.shape[0] != len(ids):
            raise ValueError(f"features must have shape ({len(ids)}, dim), got {feats.shape}")
        if not np.issubdtype(feats.dtype, np.floating):
            raise TypeError(f"features must be a float array, got {feats.dtype}")
        feats = np.ascontiguousarray(feats, dtype="<f4")
        if not np.isfinite(feats).all():
            raise ValueError("features contains NaN or inf")
        encoder = encoder or self._want_encoder
        if not ids:
            return
        with locked(self.root):
            self.refresh()
            dim = self.dim if self.dim is not None else (self._want_dim or feats.shape[1])
            if feats.shape[1] != dim:
                raise ValueError(f"features have {feats.shape[1]} columns, the store holds {dim}-d features")
            if self.encoder is not None and encoder is not None and encoder != self.encoder:
                raise StoreMismatchError(
                    f"encoder: store {self.root} holds {self.encoder!r}, not {encoder!r}")
            present = [i for i in ids if i in self._index]
            if present:
                raise ValueError(f"image_ids already stored (the store is append-only): {present[:5]}")
            n_old = len(self._ids)
            self._append_bytes(FEATURES_FILE, n_old * dim * 4, feats.tobytes())
            id_lines = "".join(json.dumps(i) + "\n" for i in ids).encode("utf-8")
            self._append_bytes(IDS_FILE, self._ids_bytes, id_lines)
            write_json_atomic(self.root / MANIFEST_FILE, {
                "format": FORMAT_VERSION,
                "encoder": self.encoder or encoder,
                "dim": int(dim),
                "n_rows": n_old + len(ids),
                "ids_bytes": self._ids_bytes + len(id_lines),
            })
            self._ids_bytes += len(id_lines)
            self.encoder = self.encoder or encoder
            self.dim = int(dim)
            for row, image_id in enumerate(ids, start=n_old):
                self._index[image_id] = row
            self._ids.extend(ids)

    def _append_bytes(self, name: str, committed_size: int, payload: bytes) -> None:
        path = self.root / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, committed_size)  # drop what a killed writer left past the commit point
            os.lseek(fd, committed_size, os.SEEK_SET)
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.root)!r}, encoder={self.encoder!r}, dim={self.dim}, n={len(self)})"
