"""What every key family of the project state shares: the key names and reading Redis replies as text.

A Redis client returns bytes unless it was made with ``decode_responses=True``; these helpers accept
both, so no caller decodes inline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ml_backend.errors import InputError

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

KEY_PREFIX = "reid-al"
PROJECTS_KEY = f"{KEY_PREFIX}:projects"
# Counters that belong to no registered project: ignored events and calls about unknown projects,
# rejected requests (by route and status). /metrics and `reid-al status` show them.
GLOBAL_COUNTERS_KEY = f"{KEY_PREFIX}:global:counters"
# Label Studio's ids are 64-bit integers: 18 digits hold every id it can make, and bound what a key
# built from a client's id can cost.
PROJECT_ID_MAX_DIGITS = 18
_PREVIEW = 40


def preview(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters: an error message must not echo a 5,000-character id."""
    text = repr(value)
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + f"... ({len(text)} characters)"


def project_key(project: Any, field: str = "project") -> str:
    """A Label Studio project id as the key its state is stored under: ASCII digits only ("007" -> "7").

    Why so strict: the id names Redis keys, MODEL_DIR folders and /metrics labels, and the cycle converts
    it with int(); ``str.isdigit`` alone accepts "²" and "①", which int() does not.
    """
    if isinstance(project, bool):
        raise InputError(field, f"must be a project id, got {project!r}")
    if isinstance(project, int):
        if 0 <= project < 10**PROJECT_ID_MAX_DIGITS:
            return str(project)
    elif isinstance(project, str):
        text = project.strip()
        if 0 < len(text) <= PROJECT_ID_MAX_DIGITS and text.isascii() and text.isdigit():
            return str(int(text))
    raise InputError(field, f"must be a project id of 1 to {PROJECT_ID_MAX_DIGITS} ASCII digits, "
                            f"got {preview(project)}")


def is_project_key(value: str) -> bool:
    """True for a stored project key (what ``project_key`` returns)."""
    return 0 < len(value) <= PROJECT_ID_MAX_DIGITS and value.isascii() and value.isdigit()


# /setup of a project with no state keeps its label config's names this long, no longer (Label Studio
# repeats /setup before every prediction round); registering the project keeps them for good.
UNREGISTERED_META_TTL = 86400


def register(pipe: Any, project: str) -> None:
    """Queue on ``pipe`` what lists a project: its id in the project set, and its meta made permanent."""
    pipe.sadd(PROJECTS_KEY, project)
    pipe.persist(f"{project_prefix(project)}:meta")


def incr_global(redis: Redis, name: str, by: int = 1) -> int:
    """Count something that belongs to no registered project."""
    return int(redis.hincrby(GLOBAL_COUNTERS_KEY, name, by))


def global_counters(redis: Redis) -> dict[str, int]:
    return {k: int(v) for k, v in text_hash(redis.hgetall(GLOBAL_COUNTERS_KEY)).items()}


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
