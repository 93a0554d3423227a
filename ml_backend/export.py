"""The identities handed back to the team: one row per pool image, as CSV or JSON.

Why the last cycle's assignment and not a fresh one: a version's ``identities.npz`` is exactly what
that cycle trained on and what Label Studio's predictions came from, and recomputing it needs the
kNN graph of the whole pool (minutes at 100k images), which an export must not cost. When answers
changed after that version, the export says so (``answers_changed``, ``answers_after_version``; the
CLI prints a note, the HTTP answer carries headers) and the next cycle includes them.

Columns follow wildlife-datasets' metadata (``image_id``, ``identity``, ``path``), so the file loads
there and back into ``reid-al ingest`` as a manifest. ``identity`` is empty for an image the version
did not cover (embedded after it, or not embeddable).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml_backend.errors import InputError
from ml_backend.pool import Pool, local_files_url
from ml_backend.settings import Settings

if TYPE_CHECKING:
    from redis import Redis

    from strategies.identities import IdentityAssignment
    from trainer.registry import VersionInfo

__all__ = ["COLUMNS", "EXPORT_FORMATS", "IdentityExport", "build_export", "export_format", "read_identities"]

EXPORT_FORMATS = ("csv", "json")
COLUMNS = ("image_id", "path", "url", "identity", "verified", "confidence", "answers", "new_individual")
IDENTITIES_FILE = "identities.npz"


def export_format(fmt: str | None, out: str | None = None) -> str:
    """The format asked for, else the one ``out``'s suffix names, else CSV; anything else is an error."""
    if fmt is None:
        suffix = Path(out).suffix.lower().lstrip(".") if out and out != "-" else ""
        fmt = suffix if suffix in EXPORT_FORMATS else "csv"
    if fmt not in EXPORT_FORMATS:
        raise InputError("format", f"must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}", status=400)
    return fmt


def read_identities(version_dir: Path) -> IdentityAssignment:
    """The identity assignment a cycle saved in its version directory."""
    from strategies.identities import IdentityAssignment

    path = Path(version_dir) / "extra" / IDENTITIES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"version {Path(version_dir).name} stores no identity assignment ({path})")
    with np.load(path, allow_pickle=False) as data:
        return IdentityAssignment(
            labels=np.asarray(data["labels"], dtype=np.int64),
            verified=np.asarray(data["verified"], dtype=bool),
            confidence=np.asarray(data["confidence"], dtype=np.float64),
            answers=np.asarray(data["answers"], dtype=np.int64),
        )


@dataclass
class IdentityExport:
    """Rows (``COLUMNS``) plus where they come from. ``answers_changed``/``answers_after_version`` are
    None when the answers could not be read (no Redis)."""

    project: str
    version: str
    created_at: str
    rows: list[dict[str, Any]]
    answers_changed: bool | None = None
    answers_after_version: int | None = None
    summary: dict[str, int] = field(default_factory=dict)

    @property
    def note(self) -> str | None:
        """What a user should know about how current the identities are, or None."""
        if self.answers_changed is None:
            return (
                f"identities of version {self.version}; the answers could not be read, so newer ones "
                "may not be included"
            )
        if self.answers_changed:
            return (
                f"identities of version {self.version} ({self.created_at}); the answers changed since "
                f"({self.answers_after_version} newer): the next cycle includes them (Start training)"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "version": self.version,
            "created_at": self.created_at,
            "answers_changed": self.answers_changed,
            "answers_after_version": self.answers_after_version,
            "note": self.note,
            "summary": self.summary,
            "columns": list(COLUMNS),
            "images": self.rows,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in self.rows:
            writer.writerow([_csv_value(row[c]) for c in COLUMNS])
        return buf.getvalue()

    def render(self, fmt: str) -> str:
        return self.to_json() if export_format(fmt) == "json" else self.to_csv()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _version(settings: Settings, project: str, version: str | None) -> VersionInfo:
    from trainer.registry import ModelRegistry

    registry = ModelRegistry(settings.model_dir, project)
    versions = {info.version: info for info in registry.list()}
    if not versions:
        raise InputError(
            "project",
            f"project {project} has no model version under {settings.model_dir}: "
            f"ingest a pool and run a cycle first (reid-al ingest <images> "
            f"--project {project})",
            status=404,
        )
    version = registry.latest() if version is None else version
    if version not in versions:
        raise InputError("version", f"project {project} has no version {version!r}", status=404)
    return versions[version]


def _timestamp(created_at: str) -> float | None:
    try:
        return datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _answers_since(redis: Redis, project: str, info: VersionInfo, row_of: Any) -> tuple[bool, int]:
    """(do the effective answers differ from the version's, how many answers were stored after it)."""
    from ml_backend.state import ProjectState
    from trainer.cycle import answers_fingerprint

    state = ProjectState(redis, project)
    graph, _ = state.constraint_graph(row_of, include_pending=False)
    config = json.loads((info.path / "config.json").read_text(encoding="utf-8"))
    effective = graph.effective(config.get("contradiction_policy", "ml_wins"))
    changed = answers_fingerprint(effective.must_link, effective.cannot_link) != info.metrics.get(
        "answers_fingerprint"
    )
    created = _timestamp(info.created_at)
    newer = sum(
        1
        for r in state.annotations.all()
        if created is not None and r.get("updated_at") is not None and r["updated_at"] > created
    )
    return changed, newer


def build_export(
    settings: Settings, project: str, *, redis: Redis | None = None, version: str | None = None
) -> IdentityExport:
    """Every pool image with its identity under ``version`` (default: the latest).

    ``redis``: where the answers are, to say whether they changed since that version (None: not checked).
    InputError 404 for a project with no version or an unknown version.
    """
    from ml_backend.state import project_key
    from trainer.store import EmbeddingStore

    project = project_key(project)
    info = _version(settings, project, version)
    identities = read_identities(info.path)
    n = identities.labels.shape[0]
    ids = EmbeddingStore(settings.features_dir(project)).ids()
    if len(ids) < n:
        raise ValueError(
            f"project {project}: version {info.version} covers {n} images but the feature store "
            f"holds {len(ids)}; was {settings.features_dir(project)} replaced?"
        )
    pool = Pool.load(settings.model_dir, project) if Pool.exists(settings.model_dir, project) else Pool()
    urls: dict[str, str] = {}
    changed: bool | None = None
    newer: int | None = None
    rows_of = {image_id: row for row, image_id in enumerate(ids[:n])}
    if redis is not None:
        from ml_backend.state import ProjectState

        urls = ProjectState(redis, project).images.urls()
        changed, newer = _answers_since(redis, project, info, rows_of.get)

    def where(image_id: str) -> tuple[str | None, str | None]:
        if image_id not in pool:
            return None, urls.get(image_id)
        item = pool.item(image_id)
        url = item.url
        if not url and settings.document_root:
            try:
                url = local_files_url(item.path, settings.document_root)
            except ValueError:
                url = None
        return item.path, url

    rows: list[dict[str, Any]] = []
    new = identities.new_individual
    for row, image_id in enumerate(ids[:n]):
        path, url = where(image_id)
        rows.append(
            {
                "image_id": image_id,
                "path": path,
                "url": url,
                "identity": int(identities.labels[row]),
                "verified": bool(identities.verified[row]),
                "confidence": round(float(identities.confidence[row]), 4),
                "answers": int(identities.answers[row]),
                "new_individual": bool(new[row]),
            }
        )
    covered = set(rows_of)
    for image_id in [*ids[n:], *pool.ids]:
        if image_id in covered:
            continue
        covered.add(image_id)
        path, url = where(image_id)
        rows.append(
            {
                "image_id": image_id,
                "path": path,
                "url": url,
                "identity": None,
                "verified": False,
                "confidence": None,
                "answers": 0,
                "new_individual": None,
            }
        )
    return IdentityExport(
        project=project,
        version=info.version,
        created_at=info.created_at,
        rows=rows,
        answers_changed=changed,
        answers_after_version=newer,
        summary={**identities.summary(), "images_without_identity": len(rows) - n},
    )
