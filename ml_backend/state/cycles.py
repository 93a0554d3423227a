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


def push_outcome(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Pairs pushed against the budget for one finished cycle's summary, and why any fell short.

    The budget splits into what the sampler did not propose (its shortfall) and, of its proposals,
    the ones withheld by the stopping rule, answered meanwhile, already open as tasks, or with an image
    Label Studio cannot show; the rest were created. Each reason carries its count, so the counts add
    up to the shortfall."""
    if not summary or summary.get("status") != "finished":
        return None
    budget = summary.get("budget")
    push = summary.get("push")
    if push is None:
        return {
            "budget": budget,
            "pushed": 0,
            "shortfall": budget,
            "reasons": ["nothing pushed: LABEL_STUDIO_API_KEY is not set"],
        }
    pushed = int(push.get("created", 0))
    reasons = []
    sampler_short = int(summary.get("shortfall", 0) or 0)
    if sampler_short:
        why = (
            "the pool is exhausted: every pair is answered, implied or asked"
            if summary.get("sampler_exhausted")
            else f"{summary.get('strategy', 'the sampler')} proposed {summary.get('proposals', 0)} pair(s)"
        )
        pools = summary.get("sampler_pools") or {}
        if pools and not summary.get("sampler_exhausted"):
            why += " (candidates: " + ", ".join(f"{k} {v}" for k, v in sorted(pools.items())) + ")"
        reasons.append(f"{sampler_short} not proposed: {why}")
    stopping = summary.get("stopping") or {}
    if stopping.get("pushing") is False and summary.get("proposals"):
        reasons.append(
            f"{int(summary['proposals'])} withheld: the stopping rule is reached (REID_AL_KEEP_PUSHING=1 "
            "pushes them anyway)"
        )
    for key, why in (
        ("implied_proposals", "implied by answers given while the cycle ran"),
        ("existing", "already open as tasks"),
        ("unservable", "an image has no URL Label Studio can show (REID_AL_DOCUMENT_ROOT)"),
    ):
        if push.get(key):
            reasons.append(f"{int(push[key])} {why}")
    shortfall = None if budget is None else max(0, int(budget) - pushed)
    return {"budget": budget, "pushed": pushed, "shortfall": shortfall, "reasons": reasons}
