"""What the project's cycles did: the current cycle's status, a bounded history, their total time, and
the model versions pushed to Label Studio."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ml_backend.state.base import KeyFamily, json_hash, text_hash, text_list

CYCLE_HISTORY_LENGTH = 50


class CycleRecords(KeyFamily):
    """``cycle`` (status fields), ``cycles`` (summaries, newest first), ``cycle_seconds`` and ``versions``."""

    def set_status(self, **fields_: Any) -> None:
        """Merge fields into the current cycle status (status, job_id, version, error, timestamps)."""
        self.redis.hset(self.key("cycle"), mapping={k: json.dumps(v) for k, v in fields_.items()})

    def status(self) -> dict[str, Any]:
        return json_hash(self.redis.hgetall(self.key("cycle")))

    def record(self, summary: Mapping[str, Any]) -> None:
        """Append a finished (or failed) cycle's summary to the bounded history."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.key("cycles"), json.dumps(dict(summary), sort_keys=True))
        pipe.ltrim(self.key("cycles"), 0, CYCLE_HISTORY_LENGTH - 1)
        pipe.hincrbyfloat(self.key("cycle_seconds"), "sum", float(summary.get("duration_s", 0.0)))
        pipe.hincrby(self.key("cycle_seconds"), "count", 1)
        pipe.execute()

    def history(self) -> list[dict[str, Any]]:
        """Cycle summaries, newest first."""
        return [json.loads(v) for v in self.redis.lrange(self.key("cycles"), 0, -1)]

    def seconds(self) -> tuple[float, int]:
        """(total seconds, number) of the recorded cycles."""
        raw = text_hash(self.redis.hgetall(self.key("cycle_seconds")))
        return float(raw.get("sum", 0.0)), int(raw.get("count", 0))

    def versions(self) -> list[str]:
        """Model versions pushed to Label Studio, oldest first."""
        return text_list(self.redis.lrange(self.key("versions"), 0, -1))

    def add_version(self, version: str) -> None:
        if version not in self.versions():
            self.redis.rpush(self.key("versions"), version)

    def current_version(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None
