"""Text features of a project's pool: the captions and attribute lists of the manifest, embedded by the
encoder's text tower into a store beside the image features (``features/text``), for the cycle.

Why here and not in the trainer: which image carries which text is the pool's business, and so is
telling the operator why a pool's text is not used. Text is an extra: an encoder without a text tower,
a text store written by another encoder or weights that cannot be loaded leave the text unused with a
reason (shown by `reid-al status` and the ingest report) and never stop an ingest or a cycle.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ml_backend.pool import Pool
    from ml_backend.settings import Settings
    from trainer.encoders import Encoder

__all__ = ["TEXT_DIR", "PoolText", "lazy_encoder", "pool_text_features", "pool_texts", "text_store_dir"]

log = logging.getLogger(__name__)

TEXT_DIR = "text"  # under the project's features directory: deleted with the image features


@dataclass(frozen=True)
class PoolText:
    """The text side of a pool: ``features`` rows aligned with the image rows (all-zero for an image
    without text; None when no text is used), how many images carry text, how many texts were embedded
    now, the text feature width, and ``reason`` when images carry text that is not used."""

    features: np.ndarray | None = None
    n_items: int = 0
    n_embedded: int = 0
    dim: int = 0
    reason: str | None = None

    @property
    def used(self) -> bool:
        return self.n_items > 0 and self.dim > 0 and self.reason is None

    def to_dict(self) -> dict[str, Any]:
        """What a cycle's summary (and so /status) says about the text; ``text_dim`` 0 when unused."""
        return {
            "items_with_text": self.n_items,
            "text_dim": self.dim if self.used else 0,
            "used": self.used,
            "embedded": self.n_embedded,
            "reason": self.reason,
        }


def text_store_dir(settings: Settings, project: str) -> Path:
    return settings.features_dir(project) / TEXT_DIR


def pool_texts(pool: Pool | None, ids: Sequence[str]) -> list[str | None]:
    """The text of each image id (None: not in the pool, or no text), in the order of ``ids``."""
    from trainer.text_store import clean_text

    if pool is None:
        return [None] * len(ids)
    return [clean_text(pool.item(i).text) if i in pool else None for i in ids]


def lazy_encoder(settings: Settings) -> Callable[[], Encoder]:
    """The settings' encoder, built on the first call only: image and text embedding share it, and a
    run with nothing to embed never loads it."""

    @functools.cache
    def build() -> Encoder:
        from trainer.encoders import encoder_from_spec

        return encoder_from_spec(settings.encoder, checkpoint=settings.encoder_checkpoint or None)

    return build


def pool_text_features(
    settings: Settings,
    project: str,
    texts: Sequence[str | None],
    *,
    image_encoder: str | None,
    encoder: Callable[[], Encoder] | None = None,
    embed_missing: bool = True,
    load: bool = True,
) -> PoolText:
    """Embed the ``texts`` not cached yet and return their features, rows aligned with ``texts``.

    ``image_encoder`` is the encoder name of the image features (None before any is stored): the text
    features must come from the same model. ``encoder`` builds it (default: from the settings, only when
    a text needs embedding). ``load=False`` embeds without reading the rows back (ingest)."""
    from trainer.text_store import TextStore, clean_text

    n_items = sum(clean_text(t) is not None for t in texts)
    if n_items == 0:
        return PoolText()
    from trainer.encoders import encoder_has_text
    from trainer.store import StoreMismatchError

    name = image_encoder or settings.encoder
    if not encoder_has_text(name):
        return PoolText(
            n_items=n_items,
            reason=f"encoder {name!r} has no text tower, so the text is only shown to annotators; "
            "an open_clip encoder (REID_AL_ENCODER) embeds it",
        )
    root = text_store_dir(settings, project)
    try:
        store = TextStore(root, encoder=image_encoder)
    except StoreMismatchError as exc:
        return PoolText(n_items=n_items, reason=f"{exc}; delete {root} to embed the text again")
    added = 0
    missing = store.missing(texts) if embed_missing else []
    if missing:
        from trainer.weights import EncoderUnavailableError

        try:
            model = (encoder or lazy_encoder(settings))()
        except EncoderUnavailableError as exc:
            return PoolText(n_items=n_items, reason=f"{len(missing)} text(s) not embedded: {exc}")
        if image_encoder is not None and model.name != image_encoder:
            return PoolText(
                n_items=n_items,
                reason=f"encoder: REID_AL_ENCODER builds {model.name!r} but the image features are "
                f"{image_encoder!r}'s, and text features must come from the same model",
            )
        try:
            added = store.embed(model, missing)
        except StoreMismatchError as exc:
            return PoolText(n_items=n_items, reason=f"{exc}; delete {root} to embed the text again")
        log.info("project %s: embedded %d text(s) with %s", project, added, model.name)
    if not load:
        return PoolText(n_items=n_items, n_embedded=added, dim=int(store.dim or 0))
    features = store.features_for(texts)
    if features is None:
        return PoolText(n_items=n_items, n_embedded=added, reason="no text embedded yet")
    return PoolText(features=features, n_items=n_items, n_embedded=added, dim=int(features.shape[1]))
