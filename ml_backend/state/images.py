"""Which images are embedded, which embeddings were requested, and the URLs of images outside the pool.

Why "requested" is remembered: /predict and TASKS_CREATED may mention one new image many times; each is
queued for embedding once, and released again when that embedding fails, so it is retried later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ml_backend.state.base import KeyFamily, text_hash


class ImageRecords(KeyFamily):
    """``embedded`` (ids in the feature store), ``embed_requested`` and ``image_urls`` (user imports)."""

    def mark_embedded(self, image_ids: Iterable[str]) -> None:
        ids = list(image_ids)
        if ids:
            self.redis.sadd(self.key("embedded"), *ids)

    def missing(self, image_ids: Iterable[str]) -> list[str]:
        """The ids among `image_ids` not yet embedded (one SMISMEMBER round trip: webhook-safe)."""
        ids = list(dict.fromkeys(image_ids))
        if not ids:
            return []
        flags = self.redis.smismember(self.key("embedded"), ids)
        return [i for i, flag in zip(ids, flags, strict=True) if not flag]

    def claim(self, image_ids: Iterable[str]) -> list[str]:
        """The ids among `image_ids` whose embedding nobody requested yet (each is requested once)."""
        ids = list(dict.fromkeys(image_ids))
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for image_id in ids:
            pipe.sadd(self.key("embed_requested"), image_id)
        return [i for i, added in zip(ids, pipe.execute(), strict=True) if added]

    def release(self, image_ids: Iterable[str]) -> None:
        """Forget that these ids were requested, so a later TASKS_CREATED or /predict asks again: an
        embedding that failed (image not reachable yet, worker killed) must not stay claimed forever."""
        ids = list(dict.fromkeys(image_ids))
        if ids:
            self.redis.srem(self.key("embed_requested"), *ids)

    def set_urls(self, urls: Mapping[str, str]) -> None:
        """URLs of images that are not in the pool (user-imported tasks), for pushing them later."""
        if urls:
            self.redis.hset(self.key("image_urls"), mapping=dict(urls))

    def urls(self) -> dict[str, str]:
        return text_hash(self.redis.hgetall(self.key("image_urls")))
