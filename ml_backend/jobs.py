# Long on purpose: a cycle job loads a project, embeds what is missing, runs the cycle and pushes: one path.
"""The jobs: one cycle of a project, and embedding images that arrived with user-imported tasks.

Why the shape: a cycle job takes the project's lock (two workers never run one project at once),
reads the constraints as they are when it starts, runs the trainer's cycle, pushes the result to
Label Studio, and in `finally` hands over to at most one coalesced follow-up. Inputs travel by
reference (project id -> MODEL_DIR on shared storage, Redis), so a retried job redoes the same work
and the idempotent push creates nothing twice.

Each job is a plain function of (settings, redis, project, ...): ``run_cycle_job`` and ``embed_images``.
The RQ entry points ``cycle_job`` and ``embed_job`` (what `reid-al worker` runs) only add the worker's
own settings and connection; `reid-al ingest` with no backend running calls ``run_cycle_job`` itself.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ml_backend.push import push_cycle
from ml_backend.queue import JOB_PREFIX, CycleQueue
from ml_backend.settings import Settings, link_rule
from ml_backend.state import ProjectState
from ml_backend.text_features import PoolText

if TYPE_CHECKING:
    from redis import Redis

    from ml_backend.pool import Pool

log = logging.getLogger(__name__)


def _connection() -> Redis:
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("this function runs inside an RQ worker (no current job)")
    return job.connection


@dataclass
class ProjectData:
    """Frozen features in store row order plus the pool's side information aligned to those rows
    (``text``: the captions' features, all-zero rows for images without one)."""

    ids: list[str]
    features: np.ndarray
    cameras: np.ndarray | None
    tracklets: np.ndarray | None
    pool: Pool | None
    text: PoolText = field(default_factory=PoolText)

    def row_of(self, image_id: str) -> int | None:
        return self._rows.get(image_id)

    def __post_init__(self) -> None:
        self._rows = {image_id: row for row, image_id in enumerate(self.ids)}


def _side_info(pool: Pool | None, ids: list[str], attr: str) -> np.ndarray | None:
    if pool is None:
        return None
    values = []
    for image_id in ids:
        value = getattr(pool.item(image_id), attr) if image_id in pool else None
        values.append(value)
    if all(v is None for v in values):
        return None
    codes: dict[Any, int] = {}
    return np.asarray([-1 if v is None else codes.setdefault(v, len(codes)) for v in values], dtype=np.int64)


def load_project_data(settings: Settings, project: str, *, embed_missing: bool = True) -> ProjectData:
    """The store's features; pool images (and texts) not embedded yet are embedded first (resumable).

    An image that cannot be read is recorded as unreadable and left out of later cycles (an ingest
    retries it): retrying it every cycle would reload the encoder and fail the same way each time."""
    from ml_backend.pool import Pool, UnreadableImages
    from ml_backend.text_features import lazy_encoder, pool_text_features, pool_texts
    from trainer.store import EmbeddingStore

    store = EmbeddingStore(settings.features_dir(project))
    pool = Pool.load(settings.model_dir, project) if Pool.exists(settings.model_dir, project) else None
    encoder = lazy_encoder(settings)
    if pool is not None and embed_missing:
        unreadable = UnreadableImages(settings.model_dir, project)
        known_bad = unreadable.ids()
        missing = [i for i in store.missing(item.id for item in pool.items) if i not in known_bad]
        if missing:
            from trainer.extraction import extract_embeddings

            wanted = set(missing)
            items = [(item.id, item.path) for item in pool.items if item.id in wanted]
            report = extract_embeddings(encoder(), items, store, progress=False)
            log.info("project %s: embedded %d images (%d failed)", project, report.n_done, report.n_failed)
            if report.failures:
                unreadable.record((i, pool.item(i).path, why) for i, why in report.failures)
                log.warning(
                    "project %s: %d image(s) unreadable, left out of the pool until the next ingest "
                    "(listed in %s): %s",
                    project,
                    report.n_failed,
                    unreadable.path,
                    "; ".join(f"{i}: {why}" for i, why in report.failures[:10]),
                )
            store.refresh()
    ids = store.ids()
    features = np.asarray(store.features(), dtype=np.float32)
    text = pool_text_features(
        settings,
        project,
        pool_texts(pool, ids),
        image_encoder=store.encoder,
        encoder=encoder,
        embed_missing=embed_missing,
    )
    return ProjectData(
        ids=ids,
        features=features,
        cameras=_side_info(pool, ids, "camera"),
        tracklets=_side_info(pool, ids, "tracklet"),
        pool=pool,
        text=text,
    )


def _say_text(state: ProjectState, text: PoolText) -> None:
    """Log why a pool's text is not used once, and again only when the reason changes (the reason is
    kept in the project's meta, so every work horse of every worker agrees on what was said)."""
    said = state.meta().get("text_not_used")
    if text.reason == said:
        return
    if text.reason is not None:
        log.warning(
            "project %s: the text of %d image(s) is not used by the cycle (text_dim 0): %s",
            state.project,
            text.n_items,
            text.reason,
        )
    state.set_meta(text_not_used=text.reason)


def _url_resolver(settings: Settings, state: ProjectState, data: ProjectData) -> Any:
    from ml_backend.pool import local_files_url

    urls = state.images.urls()

    def url_for(image_id: str) -> str | None:
        if data.pool is not None and image_id in data.pool:
            item = data.pool.item(image_id)
            if item.url:
                return item.url
            if settings.document_root:
                try:
                    return local_files_url(item.path, settings.document_root)
                except ValueError:
                    return None
            return None
        return urls.get(image_id)

    return url_for


def run_project_cycle(
    settings: Settings, redis: Redis, project: str, *, reason: str = "", client: Any | None = None
) -> dict[str, Any]:
    """One cycle of `project` without the queue bookkeeping (the job wraps it; tests call it)."""
    from trainer.adapter import TrainConfig
    from trainer.cycle import CycleConfig, run_cycle
    from trainer.registry import ModelRegistry

    state = ProjectState(redis, project)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = load_project_data(settings, project)
    timings["load_s"] = time.perf_counter() - t0
    if len(data.ids) < 2:
        raise RuntimeError(
            f"project {project}: {len(data.ids)} embedded image(s); ingest a pool first "
            f"(reid-al ingest <folder> --project {project})"
        )
    graph, unmapped = state.constraint_graph(data.row_of)
    text = data.text
    _say_text(state, text)
    if text.used:
        log.info(
            "project %s: %d-d text features of %d image(s) go to the cycle", project, text.dim, text.n_items
        )
    config = CycleConfig(
        strategy=settings.strategy,
        budget=settings.budget,
        train=TrainConfig(num_threads=settings.torch_threads or None),
        redundancy_k=settings.redundancy_k,
        redundancy_min_size=settings.redundancy_min_size,
        redundancy_max_p_same=settings.redundancy_max_p_same,
        link_past_cannot_link=link_rule(settings.link_past_cannot_link),
    )
    t1 = time.perf_counter()
    result = run_cycle(
        data.features,
        graph,
        config,
        registry=ModelRegistry(settings.model_dir, project),
        cameras=data.cameras,
        tracklets=data.tracklets,
        text_features=text.features,
    )
    timings["cycle_s"] = time.perf_counter() - t1
    if result.version is None:
        raise RuntimeError(f"project {project}: the cycle saved no model version")
    version = str(result.version)
    state.images.mark_embedded(data.ids)

    # Constraints as they are now (answers may have arrived while training) decide what is implied.
    graph_now, _ = state.constraint_graph(data.row_of, include_pending=False)
    summary: dict[str, Any] = {
        "project": state.project,
        "version": version,
        "reason": reason,
        "n_images": len(data.ids),
        "n_constraints": len(graph),
        "unmapped_annotations": unmapped,
        "contradictions": len(graph_now.contradictions()),
        "strategy": settings.strategy,
        "budget": settings.budget,
        "proposals": len(result.proposals),
        "shortfall": int(getattr(result, "shortfall", 0) or 0),
        "sampler_exhausted": bool(result.metrics.get("exhausted")),
        "sampler_pools": {str(k): int(v) for k, v in dict(getattr(result, "pool_sizes", {}) or {}).items()},
        "served": result.metrics.get("served"),
        "gate": None if result.gate is None else result.gate.to_dict(),
        "identities": {**result.identities.summary(),
                       "link_past_cannot_link": int(result.metrics.get("identity_link_past_cannot_link", 1))},
        "text": text.to_dict(),
    }
    reviews = review_records(result.reviews, data.ids)
    review = result.reviewed.summary() if result.reviewed is not None else {}
    resolved = state.reviews.replace(reviews, contradictions_open=review.get("contradictions_open", 0))
    summary["review"] = {**review, "resolved": len(resolved)}
    if reviews:
        log.info(
            "project %s: %d pair(s) under review (%s); %d resolved since the last cycle",
            project,
            len(reviews),
            state.reviews.counts(),
            len(resolved),
        )
    stopping = _stopping(settings, state, data, result.previous_version)
    pushing = not stopping.reached or bool(settings.keep_pushing)
    proposals = list(result.proposals) if pushing else []
    summary["stopping"] = {
        **stopping.to_dict(),
        "pushing": pushing,
        "held_back": len(result.proposals) - len(proposals),
    }
    if stopping.reached:
        log.info(
            "project %s: stopping rule reached: P(any of the next %d answers changes the identities) "
            "= %.3f < %s; %s",
            project,
            stopping.patience,
            stopping.p_any_change,
            stopping.threshold,
            "REID_AL_KEEP_PUSHING=1: new pairs are pushed anyway"
            if pushing
            else f"{len(result.proposals)} new pair(s) not pushed (REID_AL_KEEP_PUSHING=1 pushes them)",
        )
    if client is None and settings.label_studio_api_key:
        from ml_backend.labelstudio import LabelStudioClient

        client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
    if client is None:
        log.warning("project %s: LABEL_STUDIO_API_KEY is not set: version %s is not pushed", project, version)
        summary["push"] = None
    else:
        t2 = time.perf_counter()
        meta = state.meta()
        caption_for = (
            (lambda i: data.pool.item(i).text if i in data.pool else None) if data.pool is not None else None
        )
        report = push_cycle(
            client,
            state,
            project_id=int(project),
            version=version,
            proposals=proposals,
            embeddings=np.asarray(result.embeddings, dtype=np.float32),
            image_ids=data.ids,
            url_for=_url_resolver(settings, state, data),
            caption_for=caption_for,
            calibrator=result.calibrator,
            graph=graph_now,
            from_name=meta.get("from_name", "answer"),
            to_name=meta.get("to_name", "image_a"),
            reviews=reviews,
        )  # reviews fix what is answered: pushed even once the stopping rule is reached
        timings["push_s"] = time.perf_counter() - t2
        summary["push"] = report.to_dict()
    state.cycles.add_version(version)
    summary["timings"] = {
        **{k: round(v, 4) for k, v in timings.items()},
        **{f"cycle.{k}": v for k, v in dict(getattr(result, "timings", {}) or {}).items()},
    }
    return summary


def review_records(reviews: Sequence[Any], ids: Sequence[str]) -> list[dict[str, Any]]:
    """The cycle's reviews (rows) as the records ml_backend.state.reviews keeps (image ids)."""
    from ml_backend.pairs import ordered, pair_id

    out = []
    for review in reviews:
        a, b = ordered(ids[review.i], ids[review.j])
        out.append(
            {
                "pair_id": pair_id(a, b),
                "image_a": a,
                "image_b": b,
                "kind": review.kind,
                "reason": review.reason,
                "p_same": round(float(review.p_same), 6),
                "weight": round(float(review.weight), 6),
                "annotation_ids": list(review.annotation_ids),
            }
        )
    return out


def _stopping(settings: Settings, state: ProjectState, data: ProjectData, previous: str | None) -> Any:
    """The stopping estimate, judging new answers against the identities of the version they were
    given under (the previous one; none before the first cycle)."""
    from ml_backend.export import read_identities
    from ml_backend.stopping import project_stopping

    labels = None
    if previous is not None:
        try:
            labels = read_identities(settings.project_dir(state.project) / previous).labels
        except FileNotFoundError:
            log.warning(
                "project %s: version %s stores no identities; its answers count as merges and "
                "contradictions only",
                state.project,
                previous,
            )
    return project_stopping(settings, state, data.row_of, labels)


def cycle_job(project: str, reason: str = "") -> dict[str, Any]:
    """RQ entry point for one cycle of `project` (enqueued only through CycleQueue.request_cycle)."""
    from rq import get_current_job

    redis = _connection()
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level)
    job = get_current_job()
    summary = run_cycle_job(settings, redis, project, reason=reason, job_id=job.id if job else None)
    return json.loads(json.dumps(summary, default=_plain))  # RQ stores results as JSON


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in a summary, as JSON can hold them."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def run_cycle_job(
    settings: Settings, redis: Redis, project: str, *, reason: str = "", job_id: str | None = None
) -> dict[str, Any]:
    """One cycle of `project` with the queue's bookkeeping: lock, status, history, follow-up.

    ``job_id`` (the RQ job's) is also the lock token, and the job beats under it while it runs, so a
    worker that finds it dead can release its lock and re-queue it (CycleQueue.recover)."""
    queue = CycleQueue.for_settings(redis, settings)
    state = ProjectState(redis, project)
    token = job_id or f"{JOB_PREFIX}{state.project}-inline-{uuid.uuid4().hex[:12]}"
    with queue.keep_alive(state.project, token):
        return _run_cycle_job(settings, redis, queue, state, token, reason)


def _run_cycle_job(
    settings: Settings, redis: Redis, queue: CycleQueue, state: ProjectState, token: str, reason: str
) -> dict[str, Any]:
    project = state.project
    queue.mark_running(state.project)
    started = time.time()
    try:
        if not queue.acquire_lock(state.project, token):
            raise RuntimeError(f"project {project}: another cycle held the lock for {queue.ttl} s")
        # Under the lock: the changes this cycle reads are consumed only if it succeeds (state.pending).
        with queue.hold_lock(state.project, token), state.pending.cycle() as pending:
            state.cycles.set_status(
                status="running",
                started_at=started,
                reason=reason,
                error=None,
                constraints_since_last=pending,
            )
            summary = run_project_cycle(settings, redis, state.project, reason=reason)
        finished = time.time()
        summary["duration_s"] = round(finished - started, 4)
        summary["finished_at"] = finished
        summary["status"] = "finished"
        state.cycles.set_status(
            status="finished",
            finished_at=finished,
            version=summary["version"],
            contradictions=summary["contradictions"],
            duration_s=summary["duration_s"],
        )
        state.cycles.record(summary)
        state.incr("cycles_finished")
        return summary
    except Exception as exc:
        finished = time.time()
        error = f"{type(exc).__name__}: {exc}"
        log.error("project %s: cycle failed: %s\n%s", project, error, traceback.format_exc())
        state.cycles.set_status(status="failed", finished_at=finished, error=error)
        state.cycles.record(
            {
                "project": state.project,
                "status": "failed",
                "error": error,
                "reason": reason,
                "duration_s": round(finished - started, 4),
                "finished_at": finished,
            }
        )
        state.incr("cycles_failed")
        raise
    finally:
        queue.finish(state.project)


def reconcile_job(project: str) -> dict[str, Any]:
    """RQ entry point for one reconciliation pass (enqueued by CycleQueue.request_reconciles).

    Label Studio being unreachable or refusing the token is recorded by ``reconcile`` (shown by
    `reid-al status`, counted in /metrics) and returned, not raised: the next interval tries again, and
    RQ's failed registry is left to the errors nobody expected."""
    from ml_backend.errors import LabelStudioError
    from ml_backend.labelstudio import LabelStudioClient
    from ml_backend.sync import reconcile

    redis = _connection()
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level)
    if not settings.label_studio_api_key:
        return {"project": project, "skipped": "LABEL_STUDIO_API_KEY is not set"}
    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
    try:
        report = reconcile(project, settings, client, redis=redis)
    except LabelStudioError as exc:
        return {"project": project, "error": str(exc)}
    finally:
        client.close()
    return json.loads(json.dumps(report.to_dict(), default=_plain))


def embed_job(project: str, items: list[dict[str, str]]) -> dict[str, Any]:
    """RQ entry point for ``embed_images`` (enqueued by CycleQueue.request_embedding)."""
    redis = _connection()
    state = ProjectState(redis, project)
    try:
        return embed_images(Settings.from_env(), redis, state.project, items)
    except BaseException:
        # A job that dies (bad settings, encoder error, worker timeout) must not leave its images
        # claimed: released, the next TASKS_CREATED or /predict that mentions them asks again.
        state.images.release(item["id"] for item in items)
        raise


def embed_images(
    settings: Settings, redis: Redis, project: str, items: list[dict[str, str]]
) -> dict[str, Any]:
    """Embed images of user-imported tasks (``{"id", "url"}`` items) into the project's store, so the
    next cycle can use them; images that fail are released for a later retry."""
    from ml_backend import fetch
    from trainer.encoders import encoder_from_spec
    from trainer.extraction import extract_embeddings
    from trainer.store import EmbeddingStore

    state = ProjectState(redis, project)
    store = EmbeddingStore(settings.features_dir(state.project))
    todo = [item for item in items if item["id"] not in store]
    resolved: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    policy = fetch.FetchPolicy.from_settings(settings)
    for item in todo:
        try:
            path = fetch.fetch_image(item["url"], policy, settings.downloads_dir(state.project))
            resolved.append((item["id"], str(path)))
        except (ValueError, OSError) as exc:
            failed.append((item["id"], str(exc)))
    done = 0
    if resolved:
        encoder = encoder_from_spec(settings.encoder, checkpoint=settings.encoder_checkpoint or None)
        report = extract_embeddings(encoder, resolved, store, progress=False)
        done = report.n_done
        failed.extend(report.failures)
    state.images.set_urls({item["id"]: item["url"] for item in items})
    stored = [item["id"] for item in items if item["id"] in store]
    state.images.mark_embedded(stored)
    state.incr("images_embedded", done)
    if failed:
        state.images.release(image_id for image_id, _error in failed)
        state.incr("images_embed_failed", len(failed))
        log.warning("project %s: %d images could not be embedded: %s", project, len(failed), failed[:5])
    return {
        "project": state.project,
        "embedded": done,
        "already": len(items) - len(todo),
        "failed": [list(f) for f in failed],
    }
