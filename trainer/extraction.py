"""Batch embedding of an image pool into an :class:`~trainer.store.EmbeddingStore`.

Why it looks like this: a pool is embedded once per encoder and can be large, so the job must
(1) keep the model busy while other processes decode JPEGs (DataLoader workers), (2) survive any
file a user can drop in a folder (every PIL mode, animated GIFs, 16-bit PNGs, truncated or non-image
files are reported, never fatal), and (3) be resumable: rows are committed to the store after every
batch, ids already stored are skipped, so a killed job loses at most one batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from trainer.defaults import EXTRACTION_BATCH_SIZE
from trainer.images import check_image_items, load_rgb

if TYPE_CHECKING:
    from trainer.encoders import Encoder
    from trainer.store import EmbeddingStore

log = logging.getLogger(__name__)

_LOG_EVERY_SECONDS = 10.0


@dataclass
class ExtractionReport:
    """What one :func:`extract_embeddings` call did. ``n_skipped``: ids that were already stored."""

    n_done: int
    n_skipped: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0

    @property
    def n_failed(self) -> int:
        return len(self.failures)


class _ImageFiles(Dataset):
    """(id, path) pairs -> (id, tensor | None, failure reason | None); decoding happens in workers."""

    def __init__(
        self,
        items: Sequence[tuple[str, str]],
        preprocess: Callable[[Image.Image], torch.Tensor],
        draft_size: int | None = None,
    ) -> None:
        self.items = items
        self.preprocess = preprocess
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor | None, str | None]:
        image_id, path = self.items[index]
        try:
            tensor = self.preprocess(load_rgb(path, draft_size=self.draft_size))
        except Exception as exc:  # a bad file must never kill the job: it is reported instead
            return image_id, None, f"{type(exc).__name__}: {exc}"
        return image_id, tensor, None


def _collate(
    samples: list[tuple[str, torch.Tensor | None, str | None]],
) -> tuple[list[str], torch.Tensor | None, list[tuple[str, str]]]:
    ok = [(i, t) for i, t, err in samples if err is None]
    failures = [(i, err) for i, _, err in samples if err is not None]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], batch, failures


# -------------------------------------------------------------------------------------- extraction


def auto_num_workers(n_batches: int) -> int:
    """Decoding processes: one per spare core (the model keeps one busy), none for a single batch."""
    if n_batches <= 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return int(max(1, min(8, cores - 1, n_batches)))


class _Progress:
    """tqdm on a terminal; periodic log lines otherwise (RQ workers, CI); nothing when disabled."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        self.total = total
        self.done = 0
        self.enabled = enabled and total > 0
        self.bar: Any = None
        self.t0 = time.perf_counter()
        self.last_log = self.t0
        self.desc = desc
        if self.enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img")

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last_log >= _LOG_EVERY_SECONDS or self.done >= self.total:
            self.last_log = now
            rate = self.done / max(now - self.t0, 1e-9)
            log.info("%s: %d/%d images (%.1f img/s)", self.desc, self.done, self.total, rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def extract_embeddings(
    encoder: Encoder,
    items: Sequence[tuple[str, str | os.PathLike[str]]],
    store: EmbeddingStore,
    *,
    batch_size: int = EXTRACTION_BATCH_SIZE,
    num_workers: int | None = None,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> ExtractionReport:
    """Embed every (image id, path) not yet in ``store`` and append the rows batch by batch.

    ``num_workers=None`` picks :func:`auto_num_workers`. ``on_batch(n_done, n_todo)`` runs after each
    committed batch (job progress; an exception raised there stops the run with the batch kept).
    Unreadable files land in ``report.failures`` as ``(id, reason)`` and are retried on the next call.
    """
    from trainer.store import StoreMismatchError

    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if num_workers is not None and (not isinstance(num_workers, (int, np.integer)) or num_workers < 0):
        raise ValueError(f"num_workers must be None or an int >= 0, got {num_workers!r}")
    pairs = check_image_items(items)
    if store.encoder is not None and store.encoder != encoder.name:
        raise StoreMismatchError(f"encoder: store {store.root} holds {store.encoder!r}, not {encoder.name!r}")
    if store.dim is not None and store.dim != encoder.dim:
        raise StoreMismatchError(
            f"dim: store {store.root} holds {store.dim}-d features, encoder gives {encoder.dim}"
        )

    t0 = time.perf_counter()
    todo_ids = set(store.missing(i for i, _ in pairs))
    todo = [(i, p) for i, p in pairs if i in todo_ids]
    report = ExtractionReport(n_done=0, n_skipped=len(pairs) - len(todo))
    if not todo:
        report.seconds = time.perf_counter() - t0
        return report

    n_batches = -(-len(todo) // batch_size)
    workers = auto_num_workers(n_batches) if num_workers is None else int(num_workers)
    loader = DataLoader(
        _ImageFiles(todo, encoder.preprocess, getattr(encoder, "input_size", None)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    bar = _Progress(len(todo), progress, f"embedding ({encoder.name})")
    log.info(
        "embedding %d images with %s (%d already stored, batch %d, %d workers)",
        len(todo),
        encoder.name,
        report.n_skipped,
        batch_size,
        workers,
    )
    # The store commit (3 fsyncs, ~30 ms) of batch k runs in a writer thread while the model computes
    # batch k+1: at most one batch is in flight, and on_batch/progress only ever report committed rows.
    pending: tuple[Future[None] | None, int, int] | None = None

    def commit(entry: tuple[Future[None] | None, int, int]) -> None:
        future, n_ok, processed = entry
        if future is not None:
            future.result()
        report.n_done += n_ok
        bar.update(processed)
        if on_batch is not None:
            on_batch(report.n_done, len(todo))

    iterator = iter(loader)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
    try:
        for ids, batch, failures in iterator:
            processed = len(ids) + len(failures)
            report.failures.extend(failures)
            future = None
            if batch is not None:
                feats = encoder.embed(batch).numpy()
                finite = np.isfinite(feats).all(axis=1)
                if not finite.all():
                    report.failures.extend(
                        (i, "non-finite features") for i, ok in zip(ids, finite, strict=True) if not ok
                    )
                    ids = [i for i, ok in zip(ids, finite, strict=True) if ok]
                    feats = feats[finite]
            else:
                ids = []
            if pending is not None:
                previous, pending = pending, None
                commit(previous)
            if ids:
                future = writer.submit(store.append, ids, feats, encoder=encoder.name)
            pending = (future, len(ids), processed)
        if pending is not None:
            previous, pending = pending, None
            commit(previous)
    finally:
        if pending is not None and pending[0] is not None:
            # interrupted while a batch was being written: let it land (it is durable) and count it
            with contextlib.suppress(Exception):
                pending[0].result()
                report.n_done += pending[1]
        writer.shutdown(wait=True)
        del iterator  # shuts the worker processes down even when a batch raised
        bar.close()
        report.seconds = time.perf_counter() - t0
        report.images_per_second = report.n_done / report.seconds if report.seconds > 0 else 0.0
    for image_id, reason in report.failures:
        log.warning("could not embed %s: %s", image_id, reason)
    return report
