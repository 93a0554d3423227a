"""`reid-al finetune`'s project side: a project's pool, pseudo-labels and answers, handed to
trainer.finetune (which knows nothing of Redis or MODEL_DIR)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ml_backend.settings import Settings, SettingsError

__all__ = ["FINETUNE_DESCRIPTION", "finetune_constraints", "finetune_labels", "finetune_project"]

log = logging.getLogger("reid_al")

FINETUNE_DESCRIPTION = """\
Fine-tune the encoder's visual tower end to end on a project's images: cluster-contrastive loss over
the latest model version's pseudo-labels (or DBSCAN over Jaccard distances of the stored features when
no version exists) plus the margin loss on the human same/different answers (from Redis when it is
reachable). Writes a checkpoint for REID_AL_ENCODER_CHECKPOINT. The backbone changes, so the project's
features must be re-embedded afterwards. Meant for a GPU; on a CPU it is slow (the CPU default is the
adapter that every cycle trains)."""


def finetune_constraints(
    settings: Settings, project: str, row_of: Any, redis: Any | None
) -> tuple[Any, Any, str]:
    """(must-link rows, cannot-link rows, where they came from); no Redis -> no constraints."""
    import numpy as np
    import redis as redis_lib

    from ml_backend.app import redis_from_settings

    empty = np.zeros((0, 2), dtype=np.int64)
    if redis is None:
        try:
            redis = redis_from_settings(settings)
            redis.ping()
        except (SettingsError, redis_lib.RedisError, OSError) as exc:
            return empty, empty, f"none (Redis not reachable: {exc})"
    from ml_backend.state import ProjectState

    graph, unmapped = ProjectState(redis, project).constraint_graph(row_of, include_pending=False)
    effective = graph.effective()
    note = f"Redis ({len(graph)} constraint(s), {unmapped} unmapped, {len(effective.dropped)} dropped)"
    return effective.must_link, effective.cannot_link, note


def finetune_labels(settings: Settings, project: str, features: Any) -> tuple[Any, str]:
    """The latest version's pseudo_labels.npy (new rows since then: outliers), else DBSCAN on Jaccard."""
    import io

    import numpy as np

    from trainer.registry import ModelRegistry

    n = features.shape[0]
    registry = ModelRegistry(settings.model_dir, project)
    version = registry.latest()
    if version is not None:
        blob = registry.load(version).extra.get("pseudo_labels.npy")
        if blob is not None:
            labels = np.load(io.BytesIO(blob)).astype(np.int64)
            if labels.ndim == 1 and labels.shape[0] <= n:
                padded = np.full(n, -1, dtype=np.int64)
                padded[: labels.shape[0]] = labels
                return padded, f"model version {version}"
            log.warning(
                "version %s has %s pseudo-labels for %d rows; clustering afresh", version, labels.shape, n
            )
    from strategies.view import ClusteringView

    return ClusteringView(features).dbscan_labels, "DBSCAN on Jaccard (no model version yet)"


def finetune_project(
    settings: Settings,
    project: str,
    out: str | os.PathLike[str],
    *,
    epochs: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    redis: Any | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Load a project's pool, pseudo-labels and constraints, fine-tune the encoder, write ``out``."""
    import numpy as np

    from ml_backend.jobs import load_project_data
    from trainer.encoders import encoder_from_spec
    from trainer.finetune import FinetuneConfig, finetune_encoder
    from trainer.store import EmbeddingStore

    data = load_project_data(settings, project, embed_missing=False)
    if data.pool is None:
        raise FileNotFoundError(
            f"project {project} has no pool under {settings.model_dir}; run "
            f"`reid-al ingest <folder> --project {project}` first"
        )
    if len(data.ids) < 2:
        raise ValueError(
            f"project {project}: {len(data.ids)} embedded image(s); ingest (and embed) a pool first"
        )
    labels, labels_source = finetune_labels(settings, project, data.features)
    ml, cl, constraints_source = finetune_constraints(settings, project, data.row_of, redis)
    # Only rows whose image file the pool knows can be trained on (user-imported tasks may lack one).
    keep = np.asarray([i in data.pool for i in data.ids], dtype=bool)
    new_row = np.full(len(data.ids), -1, dtype=np.int64)
    new_row[keep] = np.arange(int(keep.sum()))

    def remap(pairs: Any) -> Any:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        pairs = pairs[keep[pairs[:, 0]] & keep[pairs[:, 1]]]
        return new_row[pairs]

    items = [(i, data.pool.item(i).path) for i, k in zip(data.ids, keep, strict=True) if k]
    ml, cl = remap(ml), remap(cl)
    encoder = encoder_from_spec(
        settings.encoder,
        checkpoint=settings.encoder_checkpoint or None,
        device=None if device == "auto" else device,
        precision="fp32",
    )
    stored_by = EmbeddingStore(settings.features_dir(project)).encoder
    if stored_by is not None and stored_by != encoder.name:
        # the pseudo-labels describe another network's features: training this one on them is wrong
        raise ValueError(
            f"REID_AL_ENCODER: project {project}'s features were made by {stored_by!r}, but the "
            f"configured encoder is {encoder.name!r}; set REID_AL_ENCODER(_CHECKPOINT) to match"
        )
    overrides: dict[str, Any] = {"device": device}
    if epochs is not None:
        overrides["epochs"] = epochs
    if num_workers is not None:
        overrides["num_workers"] = num_workers
    result = finetune_encoder(
        encoder, items, labels[keep], ml, cl, FinetuneConfig(**overrides), checkpoint=out, progress=progress
    )
    train_labels = labels[keep]
    return {
        "project": project,
        "checkpoint": str(Path(out).resolve()),
        "encoder": settings.encoder,
        "n_images": len(items),
        "n_skipped_without_file": int((~keep).sum()),
        "n_clusters": len(np.unique(train_labels[train_labels >= 0])),
        "labels_from": labels_source,
        "n_must_link": int(ml.shape[0]),
        "n_cannot_link": int(cl.shape[0]),
        "constraints_from": constraints_source,
        "epochs": len(result.losses_per_epoch),
        "losses_per_epoch": [round(x, 6) for x in result.losses_per_epoch],
        "device": result.device,
        "precision": result.precision,
        "seconds": round(result.seconds, 3),
    }
