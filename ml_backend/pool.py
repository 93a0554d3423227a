# Long on purpose: the pool file, its readers (folder, CSV, JSONL) and the unreadable list are one format.
"""The image pool of one project: which images exist, where they live, and their side information.

Written once by `reid-al ingest` to ``MODEL_DIR/<project>/pool.jsonl`` (one JSON object per image) and
read by the web app and the worker. The order of the file is the row order the trainer's embedding
store uses, so re-ingesting only ever *appends* images: rows of images already embedded never move.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

POOL_FILENAME = "pool.jsonl"
UNREADABLE_FILENAME = "unreadable.jsonl"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
# Label Studio serves the files under its LOCAL_FILES_DOCUMENT_ROOT at /data/local-files/?d=<relative path>
LOCAL_FILES_PATH = "/data/local-files/"
LOCAL_FILES_PREFIX = f"{LOCAL_FILES_PATH}?d="

# Column names accepted in manifests, mapped to PoolItem fields ("image" is the only required one).
_MANIFEST_ALIASES: dict[str, str] = {
    "image": "image",
    "path": "image",
    "file": "image",
    "id": "id",
    "image_id": "id",
    "camera": "camera",
    "cam": "camera",
    "camera_id": "camera",
    "timestamp": "timestamp",
    "time": "timestamp",
    "tracklet": "tracklet",
    "track": "tracklet",
    "track_id": "tracklet",
    "text": "text",
    "caption": "text",
    "attributes": "text",
    "url": "url",
    "identity": "identity",
    "label": "identity",
    "pid": "identity",
}


@dataclass(frozen=True)
class PoolItem:
    """One image of the pool; everything but ``id`` and ``path`` is optional side information.

    ``identity`` is ground truth when the source provides it (``<root>/<identity>/<image>`` or an
    ``identity`` column); it is kept for evaluation only and never shown to the sampler. ``text`` is a
    caption, or an attribute list joined by ", ": shown to annotators and embedded by the encoder's text
    tower (ml_backend/text_features.py).
    """

    id: str
    path: str
    camera: str | None = None
    timestamp: float | None = None
    tracklet: str | None = None
    text: str | None = None
    url: str | None = None
    identity: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PoolItem:
        if not isinstance(obj, Mapping):
            raise ValueError(f"pool item must be a JSON object, got {type(obj).__name__}")
        known = {f.name for f in fields(cls)}
        for required in ("id", "path"):
            if not isinstance(obj.get(required), str) or not obj.get(required):
                raise ValueError(
                    f"pool item field {required!r} must be a non-empty string, got {obj.get(required)!r}"
                )
        kwargs = {k: v for k, v in obj.items() if k in known}
        if kwargs.get("timestamp") is not None:
            kwargs["timestamp"] = _parse_timestamp(kwargs["timestamp"], where=f"pool item {obj['id']!r}")
        for key in ("camera", "tracklet", "url", "identity"):
            if kwargs.get(key) is not None:
                kwargs[key] = str(kwargs[key])
        kwargs["text"] = text_value(kwargs.get("text"), where=f"pool item {obj['id']!r}")
        return cls(**kwargs)


def local_files_url(path: str | os.PathLike[str], document_root: str | os.PathLike[str]) -> str:
    """URL under which Label Studio's local-files serving returns ``path`` (must lie inside the root)."""
    root = Path(document_root).resolve()
    target = Path(path).resolve()
    try:
        rel = target.relative_to(root)
    except ValueError:
        raise ValueError(
            f"path {str(target)!r} is not inside document_root {str(root)!r}; Label Studio can only serve "
            "local files under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
        ) from None
    return LOCAL_FILES_PREFIX + quote(rel.as_posix(), safe="/")


class Pool:
    """Ordered, id-unique collection of :class:`PoolItem`; row ``i`` is ``items[i]``."""

    def __init__(self, items: Iterable[PoolItem] = ()) -> None:
        self.items: list[PoolItem] = list(items)
        self._rows: dict[str, int] = {}
        for row, item in enumerate(self.items):
            if not isinstance(item, PoolItem):
                raise TypeError(f"items[{row}] must be a PoolItem, got {type(item).__name__}")
            if item.id in self._rows:
                raise ValueError(
                    f"duplicate image id {item.id!r} in pool (rows {self._rows[item.id]} and {row})"
                )
            self._rows[item.id] = row

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[PoolItem]:
        return iter(self.items)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._rows

    def __repr__(self) -> str:
        return f"Pool(n_items={len(self.items)})"

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def row_of(self, image_id: str) -> int | None:
        """Row of an image id, or None when the pool does not hold it (fits ProjectState.constraint_graph)."""
        return self._rows.get(image_id)

    def item(self, image_id: str) -> PoolItem:
        row = self._rows.get(image_id)
        if row is None:
            raise KeyError(f"image id {image_id!r} is not in the pool")
        return self.items[row]

    def url_for(self, image_id: str) -> str:
        """The URL Label Studio shows for this image (KeyError: unknown id; ValueError: it has none)."""
        item = self.item(image_id)
        if not item.url:
            raise ValueError(
                f"image {image_id!r} has no URL: ingest it with a document root (REID_AL_DOCUMENT_ROOT) "
                "or give a 'url' column in the manifest"
            )
        return item.url

    def with_urls(self, document_root: str | os.PathLike[str] | None, *, overwrite: bool = False) -> Pool:
        """A copy where items lacking a URL get their local-files URL under ``document_root``."""
        if document_root is None:
            return Pool(self.items)
        out = []
        for item in self.items:
            if item.url and not overwrite:
                out.append(item)
            else:
                out.append(replace(item, url=local_files_url(item.path, document_root)))
        return Pool(out)

    def merged(self, new_items: Iterable[PoolItem]) -> tuple[Pool, int]:
        """Append the items whose id is new (existing rows keep their place); returns (pool, n_added).

        An id already present keeps its stored record (its image embedding was computed from it), except
        its text: a new item's text replaces the stored one (its text features are keyed by the text, so
        the new one is embedded); a new item without text leaves the stored text as it is.
        """
        items = list(self.items)
        seen = set(self._rows)
        added = 0
        for item in new_items:
            if item.id in seen:
                row = self._rows.get(item.id)
                if row is not None and item.text is not None and items[row].text != item.text:
                    items[row] = replace(items[row], text=item.text)
                continue
            seen.add(item.id)
            items.append(item)
            added += 1
        return Pool(items), added

    # -- persistence ---------------------------------------------------------------------------------

    @staticmethod
    def path_for(model_dir: str | os.PathLike[str], project: str | int) -> Path:
        project = _check_project(project)
        return Path(model_dir) / project / POOL_FILENAME

    @classmethod
    def exists(cls, model_dir: str | os.PathLike[str], project: str | int) -> bool:
        return cls.path_for(model_dir, project).is_file()

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str], project: str | int) -> Pool:
        path = cls.path_for(model_dir, project)
        if not path.is_file():
            raise FileNotFoundError(
                f"no pool for project {str(project)!r}: {path} does not exist (run `reid-al ingest ... "
                f"--project {project}` first)"
            )
        items = []
        with path.open("r", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    items.append(PoolItem.from_json(obj))
                except (json.JSONDecodeError, ValueError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: bad pool line: {exc}") from exc
        return cls(items)

    def save(self, model_dir: str | os.PathLike[str], project: str | int) -> Path:
        """Write atomically (temp file + rename) so a reader never sees half a pool."""
        path = self.path_for(model_dir, project)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pool-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for item in self.items:
                    fh.write(json.dumps(item.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


class UnreadableImages:
    """Pool images that could not be read or decoded, with the reason: out of the pool until an ingest
    retries them.

    Why a list beside ``pool.jsonl`` and not a rewrite of it: the pool file only ever grows (an ingest
    and a cycle may write at the same time, and store rows follow it), while an image that fails stays
    out of every cycle, which otherwise retries it each time (reloading the encoder) and fails the same
    way. Ingesting the source again retries them: the file may have been fixed meanwhile."""

    def __init__(self, model_dir: str | os.PathLike[str], project: str | int) -> None:
        self.path = Path(model_dir) / _check_project(project) / UNREADABLE_FILENAME

    def load(self) -> dict[str, dict[str, Any]]:
        """``{image id: {"id", "path", "reason", "at"}}``; a damaged line is skipped, not fatal."""
        out: dict[str, dict[str, Any]] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                out[record["id"]] = record
        return out

    def ids(self) -> set[str]:
        return set(self.load())

    def record(self, failures: Iterable[tuple[str, str, str]]) -> list[str]:
        """Add ``(image id, path, reason)`` entries (a known id gets the new reason); returns the ids."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        new = {i: {"id": i, "path": p, "reason": r, "at": now} for i, p, r in failures}
        if new:
            self._update(lambda records: {**records, **new})
        return list(new)

    def forget(self, image_ids: Iterable[str]) -> None:
        """Take ids off the list (they were read after all)."""
        gone = set(image_ids)
        if gone and self.path.exists():
            self._update(lambda records: {k: v for k, v in records.items() if k not in gone})

    def _update(self, change: Any) -> None:
        """Read, change and write the list under a lock: an ingest and a worker may both record."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{UNREADABLE_FILENAME}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = change(self.load())
            fd, tmp = tempfile.mkstemp(prefix=".unreadable-", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    for record in records.values():
                        fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


# -- sources -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """What a source holds: its images, and the files of a scanned folder that are not images (by
    extension; hidden files aside), as paths relative to the folder, so ingest can say what it left."""

    items: list[PoolItem]
    skipped: list[str]


def scan_folder(root: str | os.PathLike[str]) -> list[PoolItem]:
    """Every image under ``root``: see :func:`walk_folder`."""
    return walk_folder(root).items


def walk_folder(root: str | os.PathLike[str]) -> Source:
    """Every image under ``root`` (recursively, sorted); the parent folder, if any, is the identity.

    Layout ``<root>/<identity>/<image>`` or flat ``<root>/<image>``; hidden files/folders are ignored,
    other files that are not images are listed in ``skipped``. Ids are the posix paths relative to
    ``root`` (stable across machines and re-ingests).
    """
    base = Path(root)
    if not base.exists():
        raise FileNotFoundError(f"root {str(base)!r} does not exist")
    if not base.is_dir():
        raise NotADirectoryError(f"root {str(base)!r} is not a directory")
    base = base.resolve()
    found: list[Path] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
            else:
                skipped.append((Path(dirpath) / name).relative_to(base).as_posix())
    if not found:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"root {str(base)!r} holds no images (extensions: {exts})")
    items = []
    for path in sorted(found, key=lambda p: p.relative_to(base).as_posix()):
        rel = path.relative_to(base)
        identity = rel.parent.as_posix() if rel.parent != Path(".") else None
        items.append(PoolItem(id=rel.as_posix(), path=str(path), identity=identity))
    return Source(items, sorted(skipped))


def read_manifest(path: str | os.PathLike[str]) -> list[PoolItem]:
    """Read a CSV (header row) or JSONL manifest: ``image`` required; ``id``, ``camera``, ``timestamp``,
    ``tracklet``, ``text``, ``url``, ``identity`` optional (common aliases accepted). ``text`` (also
    ``caption`` or ``attributes``) is a string, or in JSONL a list of attribute strings.

    Relative image paths are resolved against the manifest's folder; every image must exist, so a typo
    fails here with its line number rather than later as a silently missing embedding.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {str(manifest)!r} does not exist or is not a file")
    suffix = manifest.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = list(_read_jsonl(manifest))
    elif suffix in (".csv", ".tsv"):
        rows = list(_read_csv(manifest, delimiter="\t" if suffix == ".tsv" else ","))
    else:
        raise ValueError(
            f"manifest {str(manifest)!r}: unsupported extension {suffix!r} (use .csv, .tsv or .jsonl)"
        )
    if not rows:
        raise ValueError(f"manifest {str(manifest)!r} has no rows")
    base = manifest.resolve().parent
    items: list[PoolItem] = []
    seen: dict[str, int] = {}
    missing: list[str] = []
    for where, raw in rows:
        row = _normalise_columns(raw, where=where)
        image = row.get("image")
        if image is None or str(image).strip() == "":
            raise ValueError(f"{where}: missing required column 'image' (the image file path)")
        image = str(image).strip()
        if image.startswith(("http://", "https://", "s3://", "gs://")):
            raise ValueError(
                f"{where}: column 'image' must be a local file path, got URL {image!r}; the images must be "
                "on disk to be embedded (put the URL Label Studio should show in the 'url' column)"
            )
        img_path = Path(image)
        if not img_path.is_absolute():
            img_path = base / img_path
        img_path = img_path.resolve()
        if not img_path.is_file():
            missing.append(f"{where}: {image}")
        image_id = _optional_str(row.get("id"))
        if image_id is None:
            try:
                image_id = img_path.relative_to(base).as_posix()
            except ValueError:
                image_id = img_path.as_posix()
        if image_id in seen:
            raise ValueError(f"{where}: duplicate image id {image_id!r} (first seen on row {seen[image_id]})")
        seen[image_id] = len(items) + 1
        timestamp = row.get("timestamp")
        items.append(
            PoolItem(
                id=image_id,
                path=str(img_path),
                camera=_optional_str(row.get("camera")),
                timestamp=None if _blank(timestamp) else _parse_timestamp(timestamp, where=where),
                tracklet=_optional_str(row.get("tracklet")),
                text=text_value(row.get("text"), where=where),
                url=_optional_str(row.get("url")),
                identity=_optional_str(row.get("identity")),
            )
        )
    if missing:
        shown = "; ".join(missing[:5]) + (f"; ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise FileNotFoundError(f"manifest {str(manifest)!r}: image files not found: {shown}")
    return items


def read_source(source: str | os.PathLike[str]) -> Source:
    """A folder is scanned, a file is read as a manifest (which names images only: nothing skipped)."""
    src = Path(source)
    if src.is_dir():
        return walk_folder(src)
    if src.is_file():
        return Source(read_manifest(src), [])
    raise FileNotFoundError(f"source {str(src)!r} is neither a folder of images nor a manifest file")


# -- helpers -----------------------------------------------------------------------------------------


def _check_project(project: str | int) -> str:
    if isinstance(project, bool) or not isinstance(project, str | int):
        raise TypeError(
            f"project must be a str or int (the Label Studio project id), got {type(project).__name__}"
        )
    text = str(project).strip()
    if not text or "/" in text or "\\" in text or text in (".", ".."):
        raise ValueError(f"project must be a plain identifier (the Label Studio project id), got {project!r}")
    return text


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON: {exc.msg}") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
            yield where, obj


def _read_csv(path: Path, *, delimiter: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        if reader.fieldnames is None:
            return
        for lineno, row in enumerate(reader, start=2):
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            yield f"{path.name}:{lineno}", row


def _normalise_columns(raw: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key is None:
            raise ValueError(f"{where}: more values than header columns")
        field = _MANIFEST_ALIASES.get(str(key).strip().lower())
        if field is None:
            continue
        if field in out and not _blank(out[field]):
            continue
        out[field] = value
    return out


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _optional_str(value: Any) -> str | None:
    if _blank(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def text_value(value: Any, *, where: str) -> str | None:
    """A manifest's ``text``: a caption (str), or a list of attributes joined by ", "; None when blank.

    A list reads as one caption ("male, red coat, backpack"): the text tower embeds it whole, and
    annotators see it the same way."""
    if isinstance(value, list | tuple):
        parts = []
        for k, part in enumerate(value):
            if isinstance(part, bool) or not isinstance(part, str | int | float):
                raise ValueError(
                    f"{where}: text[{k}] must be a string (an attribute), got {type(part).__name__}"
                )
            if not _blank(part):
                parts.append(_optional_str(part))
        return ", ".join(p for p in parts if p) or None
    if isinstance(value, bool) or not (value is None or isinstance(value, str | int | float)):
        raise ValueError(
            f"{where}: text must be a caption (string) or a list of attributes, got {type(value).__name__}"
        )
    return _optional_str(value)


def _parse_timestamp(value: Any, *, where: str) -> float:
    """Seconds (number or numeric string) or an ISO-8601 date-time, as float seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: timestamp must be a number or ISO-8601 string, got {value!r}")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            result = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(
                    f"{where}: timestamp {value!r} is neither a number nor an ISO-8601 date-time"
                ) from None
            if parsed.tzinfo is None:  # naive date-times are UTC, never the machine's local zone
                parsed = parsed.replace(tzinfo=timezone.utc)
            result = parsed.timestamp()
    else:
        raise ValueError(
            f"{where}: timestamp must be a number or ISO-8601 string, got {type(value).__name__}"
        )
    if not math.isfinite(result):
        raise ValueError(f"{where}: timestamp must be finite, got {value!r}")
    return result


def items_from_dicts(rows: Sequence[Mapping[str, Any]]) -> list[PoolItem]:
    """PoolItems from already-parsed records (e.g. an API payload), validated like ``pool.jsonl`` lines."""
    return [PoolItem.from_json(row) for row in rows]
