"""The pair registry: every pair served (or about to be served) to annotators, its task and its scores.

Why: a retried push must find the tasks it created (pairs are keyed by the stable pair id), /predict
answers pushed pairs from their stored P(same) and priority, and a cycle marks every open pair as asked
so it never proposes a pair that is already waiting for an annotator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from ml_backend.errors import InputError
from ml_backend.pairs import ordered, pair_id
from ml_backend.state.base import KeyFamily, as_text, json_hash

PAIR_STATUSES = ("open", "retired", "deleted")


def _check_task_id(task_id: Any, *, optional: bool) -> None:
    if task_id is None and optional:
        return
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        raise InputError("task_id", f"must be an integer{' or None' if optional else ''}, got {task_id!r}")


def new_pair_record(pid: str, image_a: str, image_b: str, created_at: float,
                    task_id: int | None = None) -> dict[str, Any]:
    """The record of a pair registered for the first time (``PairRegistry.register``)."""
    low, high = ordered(image_a, image_b)
    return {"pair_id": pid, "image_a": low, "image_b": high, "created_at": created_at, "status": "open",
            "task_id": task_id, "model_version": None}


class PairRegistry(KeyFamily):
    """``pairs`` (pair id -> record), ``task_pairs`` (task id -> pair id) and, per model version, the
    tasks that already hold its prediction (``pushed:<version>``)."""

    def register(
        self,
        pair_id_: str,
        image_a: str,
        image_b: str,
        task_id: int | None = None,
        model_version: str | None = None,
        **extra: Any,
    ) -> bool:
        """Record a pair; True when it is new.

        Re-registering updates task_id/model_version/extra fields but keeps created_at, so a retried
        push is harmless. Extra fields (p_same, priority, strategy, pool) let /predict answer cheaply.
        """
        if not isinstance(pair_id_, str) or not pair_id_:
            raise InputError("pair_id", f"must be a non-empty string, got {pair_id_!r}")
        if pair_id_ != pair_id(image_a, image_b):
            raise InputError("pair_id", f"{pair_id_!r} is not pair_id({image_a!r}, {image_b!r})")
        _check_task_id(task_id, optional=True)
        old_raw = self.redis.hget(self.key("pairs"), pair_id_)
        record = json.loads(old_raw) if old_raw else new_pair_record(pair_id_, image_a, image_b, time.time())
        if task_id is not None:
            record["task_id"] = task_id
            self.redis.hset(self.key("task_pairs"), str(task_id), pair_id_)
        record.setdefault("task_id", None)
        if model_version is not None:
            record["model_version"] = model_version
        record.setdefault("model_version", None)
        record.update(extra)
        self.redis.hset(self.key("pairs"), pair_id_, json.dumps(record, sort_keys=True))
        return old_raw is None

    def register_tasks(self, tasks: Iterable[tuple[int, str, str]]) -> int:
        """``register(pair_id, a, b, task_id=t)`` for many (t, a, b), in two round trips.

        Why: TASKS_CREATED can carry thousands of tasks and Label Studio gives its webhook 1 s; one
        call per task took longer than that. Tasks already mapped to their pair are skipped. Returns
        the number of tasks (re)registered.
        """
        entries: list[tuple[int, str, str, str]] = []
        for task_id, image_a, image_b in tasks:
            _check_task_id(task_id, optional=False)
            try:
                pid = pair_id(image_a, image_b)
            except ValueError as exc:
                raise InputError("pair_id", str(exc)) from None
            entries.append((task_id, image_a, image_b, pid))
        if not entries:
            return 0
        pids = list(dict.fromkeys(e[3] for e in entries))
        read = self.redis.pipeline(transaction=False)
        read.hmget(self.key("task_pairs"), [str(e[0]) for e in entries])
        read.hmget(self.key("pairs"), pids)
        mapped, stored = read.execute()
        records = {pid: json.loads(raw) for pid, raw in zip(pids, stored, strict=True) if raw is not None}
        task_pairs: dict[str, str] = {}
        changed: set[str] = set()
        now = time.time()
        for (task_id, image_a, image_b, pid), current in zip(entries, mapped, strict=True):
            if as_text(current) == pid:
                continue
            record = records.setdefault(pid, new_pair_record(pid, image_a, image_b, now))
            record["task_id"] = task_id
            record.setdefault("model_version", None)
            task_pairs[str(task_id)] = pid
            changed.add(pid)
        if task_pairs:
            write = self.redis.pipeline(transaction=True)
            write.hset(self.key("task_pairs"), mapping=task_pairs)
            write.hset(self.key("pairs"), mapping={pid: json.dumps(records[pid], sort_keys=True)
                                                   for pid in changed})
            write.execute()
        return len(task_pairs)

    def set_status(self, pair_id_: str, status: str) -> bool:
        """Mark a registered pair "open", "retired" (implied) or "deleted"; False if unknown."""
        if status not in PAIR_STATUSES:
            raise InputError("status", f"must be open, retired or deleted, got {status!r}")
        record = self.get(pair_id_)
        if record is None:
            return False
        record["status"] = status
        self.redis.hset(self.key("pairs"), pair_id_, json.dumps(record, sort_keys=True))
        return True

    def for_task(self, task_id: int) -> str | None:
        """The pair id of a Label Studio task."""
        return as_text(self.redis.hget(self.key("task_pairs"), str(task_id)))

    def get(self, pair_id_: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.key("pairs"), pair_id_)
        return None if raw is None else json.loads(raw)

    def exists(self, pair_id_: str) -> bool:
        return bool(self.redis.hexists(self.key("pairs"), pair_id_))

    def all(self) -> dict[str, dict[str, Any]]:
        return json_hash(self.redis.hgetall(self.key("pairs")))

    def pushed_tasks(self, model_version: str) -> set[int]:
        """Task ids that already hold a prediction of `model_version` (a retried push skips them)."""
        return {int(t) for t in self.redis.smembers(self.key(f"pushed:{model_version}"))}

    def mark_pushed(self, model_version: str, task_ids: Iterable[int]) -> None:
        ids = [int(t) for t in task_ids]
        if ids:
            self.redis.sadd(self.key(f"pushed:{model_version}"), *ids)
