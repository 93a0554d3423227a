"""The stopping rule on a project's answers: which answers changed the identities, and whether to go on.

Why the judgement is stored: whether a "different" answer changed the identities depends on the
assignment in service when it arrived (did it separate images that assignment had put together?). A
cycle judges each answer it sees for the first time against the previous version's identities (the
ones in service while the answer was given) and keeps that judgement in Redis (``answer_inferred``),
so later cycles replay every answer with the assignment of its own time. Merges and contradictions
follow from the answers alone (strategies.stopping.label_changing replays them in arrival order).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from ml_backend.settings import Settings
from ml_backend.state import CONSTRAINT_ANSWERS, ProjectState
from ml_backend.state.base import json_hash
from strategies.stopping import RefreshCriterion, StoppingEstimate, label_changing

__all__ = ["INFERRED_KEY", "criterion", "project_stopping"]

INFERRED_KEY = "answer_inferred"


def criterion(settings: Settings) -> RefreshCriterion:
    """The refresh criterion under the REID_AL_STOP_* settings."""
    return RefreshCriterion(
        window=settings.stop_window, patience=settings.stop_patience, threshold=settings.stop_threshold
    )


def project_stopping(
    settings: Settings,
    state: ProjectState,
    row_of: Callable[[str], int | None],
    labels_in_service: np.ndarray | None,
    *,
    store: bool = True,
) -> StoppingEstimate:
    """The stopping estimate over every same/different answer of the project, oldest first.

    ``labels_in_service``: identity per row of the version in service before this cycle (None: no
    version yet); answers not judged before are judged against it, and with ``store`` the judgement is
    kept (a cycle stores; a report only reads).
    """
    key = state.key(INFERRED_KEY)
    stored = json_hash(state.redis.hgetall(key))
    records = [r for r in state.annotations.all() if r["answer"] in CONSTRAINT_ANSWERS]
    pairs: list[tuple[int, int]] = []
    same: list[bool] = []
    inferred: list[bool] = []
    new: dict[str, str] = {}
    for record in records:
        i, j = row_of(record["image_a"]), row_of(record["image_b"])
        if i is None or j is None or i == j:
            continue
        ann = str(record["annotation_id"])
        seen = stored.get(ann)
        if seen is None or (seen.get("pair_id"), seen.get("answer")) != (record["pair_id"], record["answer"]):
            flag = bool(
                labels_in_service is not None
                and max(i, j) < labels_in_service.shape[0]
                and labels_in_service[i] == labels_in_service[j]
            )
            seen = {"pair_id": record["pair_id"], "answer": record["answer"], "inferred": flag}
            new[ann] = json.dumps(seen)
        pairs.append((i, j))
        same.append(record["answer"] == "same")
        inferred.append(bool(seen["inferred"]))
    gone = set(stored) - {str(r["annotation_id"]) for r in records}
    if store and (new or gone):
        pipe = state.redis.pipeline(transaction=True)
        if new:
            pipe.hset(key, mapping=new)
        if gone:
            pipe.hdel(key, *gone)
        pipe.execute()
    changing = label_changing(
        np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
        np.asarray(same, dtype=bool),
        np.asarray(inferred, dtype=bool),
    )
    return criterion(settings).estimate(changing)
