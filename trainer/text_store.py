"""Text features (captions, attribute lists) cached on disk, keyed by a hash of the text.

Why keyed by the text and not by the image: a caption that changes gets a new key, so it is embedded
again while its old row is simply no longer read, and a text many images share (attribute lists repeat
across a pool) is embedded once. Which image carries which text is the caller's business (the pool).

The rows live in an :class:`~trainer.store.EmbeddingStore` whose ids are the keys, so the format, the
append-only commit protocol, the writer lock and the encoder identity check are the image store's: a
store written by one encoder refuses another encoder's rows (:class:`~trainer.store.StoreMismatchError`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainer.defaults import EXTRACTION_BATCH_SIZE
from trainer.store import EmbeddingStore, StoreMismatchError

if TYPE_CHECKING:
    from trainer.encoders import Encoder

__all__ = ["TextStore", "clean_text", "text_key"]

KEY_LENGTH = 32  # hex digits of sha256: 128 bits, no collision in any pool


def clean_text(value: object) -> str | None:
    """The text an item carries, or None for no text (None, or only whitespace)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"text must be a str or None, got {type(value).__name__}")
    value = value.strip()
    return value or None


def text_key(text: str) -> str:
    """The store key of ``text``: sha256 of its UTF-8 bytes (stripped), as hex."""
    cleaned = clean_text(text)
    if cleaned is None:
        raise ValueError("text must be a non-empty string")
    return hashlib.sha256(cleaned.encode("utf-8")).hexdigest()[:KEY_LENGTH]


class TextStore:
    """Features of one encoder's text tower for a set of texts, grown by :meth:`embed`.

    ``encoder`` given here is checked against an existing store (a mismatch raises
    :class:`StoreMismatchError`), as :class:`EmbeddingStore` does.
    """

    def __init__(self, root: str | os.PathLike[str], *, encoder: str | None = None) -> None:
        self._store = EmbeddingStore(root, encoder=encoder)

    @property
    def root(self) -> Path:
        return self._store.root

    @property
    def encoder(self) -> str | None:
        return self._store.encoder

    @property
    def dim(self) -> int | None:
        return self._store.dim

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, text: object) -> bool:
        cleaned = clean_text(text) if isinstance(text, str) else None
        return cleaned is not None and text_key(cleaned) in self._store

    def refresh(self) -> None:
        """Re-read the store (another process may have added texts)."""
        self._store.refresh()

    def missing(self, texts: Iterable[str | None]) -> list[str]:
        """The distinct texts (stripped, first occurrence order) with no row yet; None and blanks skipped."""
        seen: set[str] = set()
        out = []
        for text in texts:
            cleaned = clean_text(text)
            if cleaned is None or cleaned in seen:
                continue
            seen.add(cleaned)
            if text_key(cleaned) not in self._store:
                out.append(cleaned)
        return out

    def embed(
        self, encoder: Encoder, texts: Iterable[str | None], *, batch_size: int = EXTRACTION_BATCH_SIZE
    ) -> int:
        """Embed the texts not stored yet with ``encoder``'s text tower; returns how many were added.

        Rows are committed batch by batch, so a killed run keeps what it finished. An image-only encoder
        raises ``trainer.encoders.NoTextTowerError``; another encoder than the store's, StoreMismatchError.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if self.encoder is not None and self.encoder != encoder.name:
            raise StoreMismatchError(
                f"encoder: text store {self.root} holds features of {self.encoder!r}, not {encoder.name!r}"
            )
        todo = self.missing(texts)
        added = 0
        for start in range(0, len(todo), int(batch_size)):
            batch = todo[start : start + int(batch_size)]
            feats = encoder.embed_texts(batch).numpy()
            bad = np.flatnonzero(~np.isfinite(feats).all(axis=1))
            if bad.size:
                raise ValueError(f"texts: the encoder gave non-finite features for {batch[int(bad[0])]!r}")
            added += self._append(batch, feats, encoder.name)
        return added

    def _append(self, texts: Sequence[str], feats: np.ndarray, encoder: str) -> int:
        """Append rows for ``texts``, leaving out those another writer stored meanwhile."""
        for _attempt in range(2):
            self._store.refresh()
            keep = [k for k, text in enumerate(texts) if text_key(text) not in self._store]
            if not keep:
                return 0
            try:
                self._store.append([text_key(texts[k]) for k in keep], feats[keep], encoder=encoder)
                return len(keep)
            except ValueError as exc:  # "already stored": a concurrent writer won the race; retry once
                if isinstance(exc, StoreMismatchError) or "already stored" not in str(exc):
                    raise
        raise RuntimeError(f"root: text store {self.root} keeps changing under this writer")

    def features_for(self, texts: Sequence[str | None]) -> np.ndarray | None:
        """``(len(texts), dim)`` float32 rows aligned with ``texts``: each text's features, an all-zero
        row for no text (or a text not embedded yet); None when no text has features."""
        rows = np.full(len(texts), -1, dtype=np.int64)
        for pos, text in enumerate(texts):
            cleaned = clean_text(text)
            if cleaned is not None:
                key = text_key(cleaned)
                if key in self._store:
                    rows[pos] = self._store.row(key)
        have = np.flatnonzero(rows >= 0)
        if have.size == 0:
            return None
        out = np.zeros((len(texts), int(self.dim or 0)), dtype=np.float32)
        out[have] = self._store.features()[rows[have]]
        return out

    def __repr__(self) -> str:
        return f"TextStore({str(self.root)!r}, encoder={self.encoder!r}, dim={self.dim}, n={len(self)})"
