"""`reid-al ingest`: register an image pool for a project, embed it, and get the first pairs served.

Why the steps are in this order: the pool file is written first (cheap, and what every later step
reads), embedding is resumable (a killed ingest loses at most one batch and re-running it skips what
is stored), and only then is Label Studio touched: a local-files storage so its
``/data/local-files/?d=`` URLs resolve, and the first cycle, which pushes the first pair tasks.

The first cycle is the same job as every later one. With a running backend (REDIS_URL, or the
embedded Redis of ``reid-al serve``) it is enqueued for that backend's worker; with nothing running,
ingest starts the embedded redis-server on MODEL_DIR itself and calls the job function in-process with
its own settings, so the state it leaves is exactly the one ``reid-al serve`` picks up later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_backend.pool import (
    IMAGE_EXTENSIONS,
    LOCAL_FILES_PREFIX,
    Pool,
    PoolItem,
    UnreadableImages,
    local_files_url,
    read_source,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis import Redis

    from ml_backend.labelstudio import LabelStudioClient
    from ml_backend.settings import Settings
    from trainer.encoders import Encoder
    from trainer.store import EmbeddingStore

log = logging.getLogger(__name__)

SKIPPED_SHOWN = 100  # skipped files named in the report (the count is always complete)


@dataclass
class IngestReport:
    """What an ingest did; ``cycle`` says how the first cycle was started (or why it was not)."""

    project: str
    source: str
    pool_path: str
    n_source: int
    n_new: int
    n_pool: int
    n_without_url: int = 0
    n_text_changed: int = 0
    embedded: int = 0
    already_embedded: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    n_unreadable: int = 0
    n_skipped: int = 0
    skipped: list[str] = field(default_factory=list)
    connect: dict[str, Any] | None = None
    embed_seconds: float = 0.0
    images_per_second: float = 0.0
    text: dict[str, Any] | None = None
    storages: list[str] = field(default_factory=list)
    cycle: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ingest(
    source: str | os.PathLike[str],
    project: str | int,
    settings: Settings,
    *,
    embed: bool = True,
    push: bool = True,
    create_tasks: bool | None = None,
    progress: bool = True,
    client: LabelStudioClient | None = None,
    redis: Redis | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    label_studio_document_root: str | os.PathLike[str] | None = None,
) -> IngestReport:
    """Scan a folder or read a manifest, save the pool, embed it, and start the first cycle.

    ``create_tasks`` is an alias of ``push`` (given, it wins): with it off, or without
    LABEL_STUDIO_API_KEY, Label Studio is not contacted. ``label_studio_document_root`` is the
    document root as Label Studio's process sees it, when it differs from REID_AL_DOCUMENT_ROOT
    (default: the same path, e.g. one volume mounted at the same place in both containers).
    """
    from ml_backend.labelstudio import as_project_id

    project_key = str(as_project_id(project))
    if create_tasks is not None:
        push = bool(create_tasks)
    scanned = read_source(source)  # every error about the source is raised before anything is written
    items = scanned.items
    if push and client is None and settings.label_studio_api_key:
        from ml_backend.labelstudio import LabelStudioClient

        client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
    if push and client is not None:  # a wrong project id fails before anything is written or embedded
        _check_project_exists(client, int(project_key), settings.label_studio_url)
    existing = (
        Pool.load(settings.model_dir, project_key) if Pool.exists(settings.model_dir, project_key) else Pool()
    )
    pool, n_new = existing.merged(items)
    n_text_changed = sum(old.text != pool.items[row].text for row, old in enumerate(existing.items))
    pool, n_without_url = attach_urls(pool, settings.document_root or None)
    pool_path = pool.save(settings.model_dir, project_key)
    report = IngestReport(
        project=project_key,
        source=str(source),
        pool_path=str(pool_path),
        n_source=len(items),
        n_new=n_new,
        n_pool=len(pool),
        n_without_url=n_without_url,
        n_text_changed=n_text_changed,
        n_skipped=len(scanned.skipped),
        skipped=scanned.skipped[:SKIPPED_SHOWN],
    )
    try:
        _fill(
            report,
            pool,
            settings,
            client,
            embed=embed,
            push=push,
            redis=redis,
            progress=progress,
            batch_size=batch_size,
            num_workers=num_workers,
            label_studio_document_root=label_studio_document_root,
        )
    finally:  # said whatever happened, on the --no-push path too
        for warning in report.warnings:
            log.warning("project %s: %s", project_key, warning)
    return report


def _fill(
    report: IngestReport,
    pool: Pool,
    settings: Settings,
    client: LabelStudioClient | None,
    *,
    embed: bool,
    push: bool,
    redis: Redis | None,
    progress: bool,
    batch_size: int | None,
    num_workers: int | None,
    label_studio_document_root: str | os.PathLike[str] | None,
) -> None:
    """Everything after the pool file is written; adds to ``report`` as it goes."""
    project_key, n_without_url = report.project, report.n_without_url
    if report.n_skipped:
        shown = ", ".join(report.skipped[:10])
        more = f" (+{report.n_skipped - 10} more)" if report.n_skipped > 10 else ""
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        report.warnings.append(
            f"{report.n_skipped} file(s) skipped, not images by extension ({extensions}): {shown}{more}"
        )
    log.info(
        "project %s: pool %s holds %d images (%d new)", project_key, report.pool_path, len(pool), report.n_new
    )
    if n_without_url:
        where = (
            f"outside REID_AL_DOCUMENT_ROOT={settings.document_root}"
            if settings.document_root
            else "and REID_AL_DOCUMENT_ROOT is not set"
        )
        report.warnings.append(
            f"{n_without_url} image(s) have no URL Label Studio can show ({where}); "
            "pairs with them are not pushed"
        )

    if embed:
        _embed(
            pool,
            settings,
            project_key,
            report,
            progress=progress,
            batch_size=batch_size,
            num_workers=num_workers,
        )

    if not push:
        return
    if client is None:
        report.warnings.append("LABEL_STUDIO_API_KEY is not set: nothing was pushed to Label Studio")
        return
    if settings.document_root:
        ls_root = Path(label_studio_document_root or settings.document_root)
        dirs, loose = storage_dirs(pool.items, settings.document_root)
        for rel in dirs:
            storage = client.add_local_storage(int(project_key), ls_root / rel)
            report.storages.append(str(storage.get("path", ls_root / rel)))
        if loose:
            report.warnings.append(
                f"{loose} image(s) lie directly in the document root; Label Studio only serves files from a "
                "subfolder of LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: move them into a folder"
            )
    report.connect = connect_if_not_connected(client, project_key, settings, report)
    if embed:
        report.cycle = first_cycle(settings, project_key, redis=redis)
    else:
        report.warnings.append("--no-embed: the first cycle runs once the pool is embedded")


def connect_if_not_connected(
    client: LabelStudioClient, project: str, settings: Settings, report: IngestReport
) -> dict[str, Any]:
    """`reid-al connect` for a project that has no ML backend yet; a project connected elsewhere is
    left as it is (said in a warning). Failing to connect does not fail the ingest: the pool is
    registered and embedded, and the warning says what failed and what to run."""
    from ml_backend.connect import connect_project, connected_backends
    from ml_backend.errors import ConnectError, LabelStudioError

    url = settings.connect_url
    try:
        urls = connected_backends(client, project)
    except LabelStudioError as exc:
        report.warnings.append(f"could not list the project's ML backends: {exc}")
        return {"action": "failed", "error": str(exc)}
    if url in urls:
        return {"action": "already connected", "url": url}
    if urls:
        report.warnings.append(
            f"project {project} is connected to {', '.join(urls)}, not to {url} (REID_AL_BACKEND_URL): "
            f"run `reid-al connect --project {project}` if this backend should serve it"
        )
        return {"action": "connected elsewhere", "urls": urls}
    auth = (settings.basic_auth_user, settings.basic_auth_pass) if settings.auth_enabled else None
    try:
        connected = connect_project(client, project, url, auth=auth)
    except (ConnectError, ValueError) as exc:
        report.warnings.append(
            f"not connected to Label Studio: {exc}; with `reid-al serve` running, run "
            f"`reid-al connect --project {project}`"
        )
        return {"action": "failed", "error": str(exc)}
    for line in connected.lines():
        log.info("%s", line)
    if not connected.connected:
        report.warnings.append(f"project {project}: Label Studio reports the backend {connected.state}")
    return {"action": "connected", **connected.to_dict()}


def attach_urls(pool: Pool, document_root: str | os.PathLike[str] | None) -> tuple[Pool, int]:
    """Give items without a URL their local-files URL; returns (pool, items still without one)."""
    out: list[PoolItem] = []
    missing = 0
    for item in pool.items:
        if not item.url and document_root is not None:
            with contextlib.suppress(ValueError):
                item = replace(item, url=local_files_url(item.path, document_root))
        missing += int(not item.url)
        out.append(item)
    return Pool(out), missing


def storage_dirs(items: list[PoolItem], document_root: str | os.PathLike[str]) -> tuple[list[str], int]:
    """Folders (relative to the root) that local-files storages must cover, and the count of images
    directly in the root (Label Studio refuses a storage equal to the root itself).

    One storage at the deepest folder common to all images when that is below the root, else one per
    top-level folder.
    """
    root = Path(document_root).resolve()
    rels: list[Path] = []
    for item in items:
        if not item.url or not item.url.startswith(LOCAL_FILES_PREFIX):
            continue
        with contextlib.suppress(ValueError):
            rels.append(Path(item.path).resolve().relative_to(root))
    loose = sum(1 for rel in rels if len(rel.parts) == 1)
    parents = [rel.parent for rel in rels if len(rel.parts) > 1]
    if not parents:
        return [], loose
    common = Path(os.path.commonpath([str(p) for p in parents]))
    if str(common) not in ("", ".") and not loose:
        return [common.as_posix()], loose
    return sorted({p.parts[0] for p in parents}), loose


def _embed(
    pool: Pool,
    settings: Settings,
    project: str,
    report: IngestReport,
    *,
    progress: bool,
    batch_size: int | None,
    num_workers: int | None,
) -> None:
    from ml_backend.text_features import lazy_encoder
    from trainer.store import EmbeddingStore

    store = EmbeddingStore(settings.features_dir(project))
    unreadable = UnreadableImages(settings.model_dir, project)
    encoder = lazy_encoder(settings)
    # Images found unreadable before are tried again: ingesting is when a fixed file comes back.
    missing = set(store.missing(item.id for item in pool.items))
    report.already_embedded = len(pool) - len(missing)
    if missing:
        _embed_images(pool, store, encoder(), missing, unreadable, report, progress, batch_size, num_workers)
    else:
        report.n_unreadable = len(unreadable.ids())
    _embed_text(pool, settings, project, store.encoder, encoder, report)


def _embed_text(
    pool: Pool,
    settings: Settings,
    project: str,
    image_encoder: str | None,
    encoder: Callable[[], Encoder],
    report: IngestReport,
) -> None:
    """Embed the captions the text store lacks (new or changed); say so when they will not be used."""
    from ml_backend.text_features import pool_text_features, pool_texts

    text = pool_text_features(
        settings,
        project,
        pool_texts(pool, pool.ids),
        image_encoder=image_encoder,
        encoder=encoder,
        load=False,
    )
    report.text = text.to_dict()
    if text.reason is not None:
        report.warnings.append(
            f"the text of {text.n_items} image(s) is not used by the cycles: {text.reason}"
        )


def _embed_images(
    pool: Pool,
    store: EmbeddingStore,
    encoder: Encoder,
    missing: set[str],
    unreadable: UnreadableImages,
    report: IngestReport,
    progress: bool,
    batch_size: int | None,
    num_workers: int | None,
) -> None:
    from trainer.extraction import extract_embeddings

    todo = [(item.id, item.path) for item in pool.items if item.id in missing]
    kwargs: dict[str, Any] = {"progress": progress, "num_workers": num_workers}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    result = extract_embeddings(encoder, todo, store, **kwargs)
    report.embedded = result.n_done
    report.failures = [(str(i), str(why)) for i, why in result.failures]
    report.embed_seconds = round(result.seconds, 3)
    report.images_per_second = round(result.images_per_second, 2)
    failed = {i for i, _ in report.failures}
    unreadable.forget(i for i in missing if i not in failed)
    unreadable.record((i, pool.item(i).path, why) for i, why in report.failures)
    report.n_unreadable = len(unreadable.ids())
    if report.failures:
        shown = "; ".join(f"{i}: {why}" for i, why in report.failures[:10])
        more = f" (+{len(report.failures) - 10} more)" if len(report.failures) > 10 else ""
        report.warnings.append(
            f"{len(report.failures)} image(s) unreadable, left out of the pool until the next ingest "
            f"(listed in {unreadable.path}): {shown}{more}"
        )


def _check_project_exists(client: LabelStudioClient, pid: int, url: str) -> None:
    from ml_backend.labelstudio import LabelStudioError

    try:
        client.get_project(pid)
    except LabelStudioError as exc:
        if exc.status == 404:
            raise ValueError(
                f"project: Label Studio at {url} has no project {pid}; create it first (label_config.xml)"
            ) from exc
        raise


def running_redis(settings: Settings) -> Redis | None:
    """The backend's Redis when one is up: REDIS_URL (must answer), else the one `reid-al serve` started."""
    import redis as redis_lib

    from ml_backend.embedded import read_url_file
    from ml_backend.settings import redact_url

    url = settings.redis_url or read_url_file(settings.model_dir / "redis")
    if not url:
        return None
    client = redis_lib.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
    try:
        client.ping()
    except redis_lib.RedisError as exc:
        client.close()
        if settings.redis_url:
            shown = redact_url(settings.redis_url)
            raise ConnectionError(f"REDIS_URL {shown} does not answer: {exc}") from exc
        return None  # a URL file left behind by a backend that is gone
    return client


def first_cycle(settings: Settings, project: str, *, redis: Redis | None = None) -> dict[str, Any]:
    """Enqueue the first cycle for a running backend, or run it here when none is running."""
    from ml_backend.queue import CycleQueue

    redis = redis if redis is not None else running_redis(settings)
    if redis is not None:
        queue = CycleQueue.for_settings(redis, settings)
        request = queue.request_cycle(project, reason="ingest")
        log.info("project %s: first cycle %s (job %s)", project, request.outcome, request.job_id)
        return {"mode": "queued", "outcome": request.outcome, "job_id": request.job_id}
    return run_cycle_inline(settings, project, reason="ingest")


def run_cycle_inline(settings: Settings, project: str, *, reason: str) -> dict[str, Any]:
    """Start the embedded redis-server on MODEL_DIR, run one cycle job in this process, stop it."""
    import redis as redis_lib

    from ml_backend.embedded import EmbeddedRedis
    from ml_backend.jobs import run_cycle_job
    from ml_backend.state import ProjectState

    t0 = time.perf_counter()
    with EmbeddedRedis(settings.model_dir / "redis") as server:
        client = redis_lib.Redis.from_url(server.url)
        try:
            # A failed cycle is recorded in the project's cycle status (read below) and logged by the job.
            with contextlib.suppress(Exception):
                run_cycle_job(settings, client, project, reason=reason)
            status = ProjectState(client, project).cycles.status()
        finally:
            client.close()
    out = {
        "mode": "inline",
        "status": status.get("status"),
        "version": status.get("version"),
        "error": status.get("error"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if out["status"] != "finished":
        log.error("project %s: first cycle did not finish: %s", project, out)
    return out
