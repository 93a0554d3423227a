"""What every key family of the project state shares: the key names and reading Redis replies as text.

A Redis client returns bytes unless it was made with ``decode_responses=True``; these helpers accept
both, so no caller decodes inline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis

KEY_PREFIX = "reid-al"
PROJECTS_KEY = f"{KEY_PREFIX}:projects"


def project_prefix(project: str) -> str:
    """Every key of one project starts with this."""
    return f"{KEY_PREFIX}:{project}"


def as_text(value: bytes | str | None) -> str | None:
    """A Redis reply as ``str`` (None stays None)."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def text_list(values: Iterable[bytes | str]) -> list[str]:
    return [str(as_text(v)) for v in values]


def text_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    """An HGETALL reply with text keys and values."""
    return {str(as_text(k)): str(as_text(v)) for k, v in raw.items()}


def json_hash(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """An HGETALL reply whose values are JSON documents, decoded."""
    return {str(as_text(k)): json.loads(v) for k, v in raw.items()}


class KeyFamily:
    """One family of a project's keys (rq style: one object per family); ``key(name)`` names a key."""

    def __init__(self, redis: Redis, project: str) -> None:
        self.redis = redis
        self.project = project
        self.prefix = project_prefix(project)

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"
