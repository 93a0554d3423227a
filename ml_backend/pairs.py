"""Stable pair ids and the task-data format shared by push, predict, the webhook and sync.

Why a hash of the sorted image ids: a retried push must recognise the tasks it created before
(Label Studio has no natural key), and (a, b) and (b, a) are the same question to an annotator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

PAIR_ID_LENGTH = 16
_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in a sane image id, so ("a|b", "c") != ("a", "b|c")


def pair_id(a: str, b: str) -> str:
    """sha1 hex[:16] of the two image ids, sorted; order-independent and stable across processes."""
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"pair_id: image id {name} must be a non-empty string, got {value!r}")
    if a == b:
        raise ValueError(f"pair_id: a pair needs two different images, got {a!r} twice")
    low, high = sorted((a, b))
    return hashlib.sha1(f"{low}{_SEPARATOR}{high}".encode()).hexdigest()[:PAIR_ID_LENGTH]


def ordered(a: str, b: str) -> tuple[str, str]:
    """The canonical (low, high) order of two image ids, as stored in the pair registry."""
    return (a, b) if a <= b else (b, a)


def task_data(
    id_a: str,
    id_b: str,
    url_a: str,
    url_b: str,
    *,
    caption_a: str = "",
    caption_b: str = "",
    strategy: str = "",
    pool: str = "",
    reason: str = "",
) -> dict[str, Any]:
    """The `data` of one pair task: what label_config.xml shows and what push, sync and /predict read."""
    return {
        "image_a": url_a,
        "image_b": url_b,
        "id_a": id_a,
        "id_b": id_b,
        "pair_id": pair_id(id_a, id_b),
        "caption_a": caption_a or "",
        "caption_b": caption_b or "",
        "strategy": strategy,
        "pool": pool,
        "reason": reason,
    }


def image_ids_of(data: Mapping[str, Any]) -> tuple[str, str]:
    """The two image ids of a task's data: id_a/id_b, else the image URLs themselves.

    Pairs that users import by hand often carry only image URLs; the URL then serves as the id so
    the pair can still be keyed, embedded on the fly and recorded as asked.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"task data must be an object, got {type(data).__name__}")
    out = []
    for id_key, url_key in (("id_a", "image_a"), ("id_b", "image_b")):
        value = data.get(id_key)
        if value is None or value == "":
            value = data.get(url_key)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise ValueError(f"task data needs {id_key} or {url_key} (a non-empty string)")
        out.append(value)
    if out[0] == out[1]:
        raise ValueError(f"task data pairs an image with itself: {out[0]!r}")
    return out[0], out[1]
