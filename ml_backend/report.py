"""`reid-al report`: collect a project's progress from Redis and its model versions for trainer.report.

Reads only: the stopping estimate is recomputed from the stored judgements of the answers (answers no
cycle has judged yet are judged against the latest version's identities, as the next cycle would),
and nothing is written back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml_backend.errors import InputError
from ml_backend.export import read_identities
from ml_backend.settings import Settings
from ml_backend.state import ProjectState, project_key
from ml_backend.stopping import project_stopping
from trainer.report import Progress, VersionPoint, implied_pairs

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["collect_progress"]


def collect_progress(settings: Settings, redis: Redis, project: str) -> Progress:
    """Everything the report draws; InputError 404 for a project with no state and no files."""
    from trainer.registry import ModelRegistry
    from trainer.store import EmbeddingStore

    project = project_key(project)
    state = ProjectState(redis, project)
    if not state.exists() and not settings.project_dir(project).is_dir():
        raise InputError(
            "project", f"unknown project {project}: no answer, task or pool recorded for it", status=404
        )
    infos = ModelRegistry(settings.model_dir, project).list()
    versions = [
        VersionPoint(
            version=info.version,
            created_at=_epoch(info.created_at),
            identities=int(info.metrics.get("identities", 0)),
            identities_verified=int(info.metrics.get("identities_verified", 0)),
            images_verified=int(info.metrics.get("images_verified", 0)),
            images_inferred=int(info.metrics.get("images_inferred", 0)),
        )
        for info in infos
    ]
    features = settings.features_dir(project)
    ids = EmbeddingStore(features).ids() if features.is_dir() else []
    rows = {image_id: row for row, image_id in enumerate(ids)}
    graph, _ = state.constraint_graph(rows.get, include_pending=False)
    labels = None
    if infos:
        try:
            labels = read_identities(infos[-1].path).labels
        except FileNotFoundError:
            labels = None
    return Progress(
        project=project,
        answers=[(r.get("updated_at"), r["answer"]) for r in state.annotations.all()],
        versions=versions,
        pairs_implied=implied_pairs(graph, max(len(ids), graph.max_node() + 1)),
        pairs_saved=int(state.counters().get("pairs_saved", 0)),
        contradictions=state.reviews.contradictions_open(),  # under review at the last cycle
        conflicts=len(state.annotations.conflicts()),
        stopping=project_stopping(settings, state, rows.get, labels, store=False),
    )


def _epoch(created_at: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
