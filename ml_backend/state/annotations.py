"""Annotations keyed by annotation id, and the answers recorded on each pair.

Why keyed by annotation id: Label Studio sends every event once, synchronously, and may send them out
of order or twice (a retried request, a sync racing a webhook). Keying each answer by its annotation id
makes CREATED/UPDATED idempotent replacements and deletions exact; a Lua script makes each write atomic
so two gunicorn threads never interleave half an update. Deleted ids are remembered (tombstones), so a
late event for a deleted annotation changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ml_backend.errors import InputError
from ml_backend.pairs import ordered, pair_id
from ml_backend.state.base import PROJECTS_KEY, KeyFamily, as_text, preview, register, text_hash, text_list

if TYPE_CHECKING:
    from redis import Redis

ANSWERS = ("same", "different", "unsure", "skip")
TIMESTAMP_FUTURE_SLACK = 86400.0  # Label Studio's clock may run ahead of ours; a day covers any sane skew
CONSTRAINT_ANSWERS = ("same", "different")

# KEYS: 1 annotations hash, 2 timestamps hash, 3 tombstone set, 4 pair_answer_keys, 5 pair_answers:<pair>.
# ARGV: 1 id, 2 json, 3 timestamp ('' = unknown), 4 '1' when the event is a creation, 5 answer, 6 pair id,
# 7 the project's key prefix. A stale event (older updated_at than the stored one), an event for a
# deleted annotation, or a creation without a timestamp for an annotation already stored (a creation is
# never newer than what followed it) changes nothing, so duplicated and reordered deliveries converge.
# Sets `outcome` ('created', 'updated', 'unchanged') and `old` (the replaced record, or false); unless
# unchanged, writes the record and the answers on its pair (moving it off its old pair's, whose key is
# named from the replaced record, hence ARGV[7]: one Redis, not a cluster). Shared with the webhook's
# one-script answer (answer_event.py).
STORE_ANNOTATION_LUA = """
local outcome, old = 'unchanged', false
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then
  local stored = redis.call('HGET', KEYS[1], ARGV[1])
  if not stored then
    outcome = 'created'
  elseif stored ~= ARGV[2] and not (ARGV[3] == '' and ARGV[4] == '1') then
    local old_ts = redis.call('HGET', KEYS[2], ARGV[1])
    if not (old_ts and ARGV[3] ~= '' and tonumber(ARGV[3]) < tonumber(old_ts)) then
      outcome, old = 'updated', stored
    end
  end
end
if outcome ~= 'unchanged' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
  if old then
    local old_pair = cjson.decode(old)['pair_id']
    if old_pair ~= ARGV[6] then redis.call('HDEL', ARGV[7] .. ':pair_answers:' .. old_pair, ARGV[1]) end
  end
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[5])
  redis.call('SADD', KEYS[4], ARGV[6])
end
"""
# KEYS 6, 7: the project set and the project's meta; ARGV[8]: the project. A change registers it.
_RECORD_LUA = STORE_ANNOTATION_LUA + """
if outcome ~= 'unchanged' then
  redis.call('SADD', KEYS[6], ARGV[8])
  redis.call('PERSIST', KEYS[7])
end
return {outcome, old}
"""


def store_annotation_keys(family: KeyFamily, pair: str) -> list[str]:
    """KEYS 1-5 of STORE_ANNOTATION_LUA for one project (``family``) and the answer's pair."""
    return [family.key("annotations"), family.key("annotation_ts"), family.key("deleted"),
            family.key("pair_answer_keys"), family.key(f"pair_answers:{pair}")]


def store_annotation_args(family: KeyFamily, key: str, record: dict[str, Any], ts: float | None,
                          created: bool) -> list[str]:
    """ARGV 1-7 of STORE_ANNOTATION_LUA for one checked record (``record_fields``)."""
    return [key, json.dumps(record, sort_keys=True), "" if ts is None else repr(ts), "1" if created else "",
            record["answer"], record["pair_id"], family.prefix]


def parse_timestamp(value: Any, *, now: float | None = None) -> float | None:
    """Label Studio's ISO-8601 `updated_at` (or epoch seconds) -> epoch seconds; None when absent.

    Why bounded (1970 to a day from now): a newer timestamp wins, so one event dated Infinity or year 9999
    would freeze its annotation against every later, real update."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InputError("updated_at", f"must be an ISO-8601 string or a number, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            ts = float(value)
        except OverflowError:
            raise InputError("updated_at", f"{preview(value)} is not a time") from None
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            ts = datetime.fromisoformat(text).timestamp()
        except (ValueError, OverflowError, OSError):
            raise InputError("updated_at", f"not an ISO-8601 timestamp: {preview(value)}") from None
    else:
        raise InputError("updated_at", f"must be an ISO-8601 string or a number, got {type(value).__name__}")
    latest = (time.time() if now is None else now) + TIMESTAMP_FUTURE_SLACK
    if not 0.0 <= ts <= latest:  # also false for NaN
        raise InputError("updated_at", f"{preview(value)} is not between 1970 and a day from now")
    return ts


def annotation_key(annotation_id: Any) -> str:
    if isinstance(annotation_id, bool) or not isinstance(annotation_id, (int, str)):
        raise InputError("annotation_id", f"must be an integer or a string, got {annotation_id!r}")
    key = str(annotation_id).strip()
    if not key:
        raise InputError("annotation_id", "must not be empty")
    return key


def is_user_id(value: Any) -> bool:
    """A Label Studio user id: an int or a string (never a bool)."""
    return not isinstance(value, bool) and isinstance(value, (int, str))


def sort_key(annotation_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then the others."""
    numeric = annotation_id.isascii() and annotation_id.isdigit()
    return (0, int(annotation_id)) if numeric else (1, annotation_id)


def record_fields(annotation_id: Any, task_id: Any, image_a: Any, image_b: Any, answer: Any,
                  completed_by: Any, updated_at: Any) -> tuple[str, dict[str, Any], float | None]:
    """(key, stored record, timestamp) of one answer, every field checked."""
    key = annotation_key(annotation_id)
    if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, int)):
        raise InputError("task_id", f"must be an integer or None, got {task_id!r}")
    for name, value in (("image_a", image_a), ("image_b", image_b)):
        if not isinstance(value, str) or not value:
            raise InputError(name, f"must be a non-empty image id, got {value!r}")
    if image_a == image_b:
        raise InputError("image_b", f"a pair needs two different images, got {image_a!r} twice")
    if answer not in ANSWERS:
        raise InputError("answer", f"must be one of {', '.join(ANSWERS)}, got {answer!r}")
    if completed_by is not None and not is_user_id(completed_by):
        raise InputError("completed_by", f"must be a user id, got {completed_by!r}")
    ts = parse_timestamp(updated_at)
    low, high = ordered(image_a, image_b)
    record = {
        "annotation_id": key,
        "task_id": task_id,
        "image_a": low,
        "image_b": high,
        "pair_id": pair_id(low, high),
        "answer": answer,
        "completed_by": completed_by,
        "updated_at": ts,
    }
    return key, record, ts


class Annotations(KeyFamily):
    """``annotations`` (id -> record), ``annotation_ts``, the ``deleted`` tombstones, and per pair the
    answers recorded on it (``pair_answers:<pair id>``, listed in ``pair_answer_keys``)."""

    def __init__(self, redis: Redis, project: str) -> None:
        super().__init__(redis, project)
        self._record = redis.register_script(_RECORD_LUA)

    def record(
        self,
        annotation_id: int | str,
        *,
        task_id: int | None,
        image_a: str,
        image_b: str,
        answer: str,
        completed_by: int | str | None = None,
        updated_at: str | float | None = None,
        created: bool = False,
    ) -> tuple[str, dict[str, Any] | None]:
        """Store one annotation's answer; returns ("created" | "updated" | "unchanged", replaced record).

        "unchanged" also covers a stale event (older `updated_at` than what is stored), an event for an
        annotation already deleted (Label Studio never reuses ids) and, with ``created``, a creation event
        without a timestamp for an annotation already stored. The replaced record (None unless
        "updated") tells a caller whether the constraint itself changed or only `updated_at` moved.
        """
        key, record, ts = record_fields(annotation_id, task_id, image_a, image_b, answer, completed_by,
                                        updated_at)
        raw_outcome, old = self._record(
            keys=[*store_annotation_keys(self, record["pair_id"]), PROJECTS_KEY, self.key("meta")],
            args=[*store_annotation_args(self, key, record, ts, created), self.project],
        )
        outcome = as_text(raw_outcome)
        return str(outcome), (json.loads(old) if old else None)

    def remove(self, annotation_id: int | str) -> dict[str, Any] | None:
        """Delete one annotation; returns its record (None when it did not exist). The id is remembered
        as deleted either way."""
        key = annotation_key(annotation_id)
        old = self.redis.hget(self.key("annotations"), key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.key("annotations"), key)
        pipe.hdel(self.key("annotation_ts"), key)
        pipe.sadd(self.key("deleted"), key)
        if old is not None:
            pipe.hdel(self.key(f"pair_answers:{json.loads(old)['pair_id']}"), key)
        removed = pipe.execute()[0]
        return json.loads(old) if removed and old is not None else None

    def replace_all(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Replace every stored annotation by ``records`` (each: the keyword arguments of ``record`` plus
        ``annotation_id``). All are checked before anything is written, so a bad one changes nothing."""
        prepared: dict[str, tuple[str, float | None]] = {}
        for index, raw in enumerate(records):
            if not isinstance(raw, Mapping):
                raise InputError(f"records[{index}]", "must be a mapping")
            if "annotation_id" not in raw:
                raise InputError(f"records[{index}].annotation_id", "missing")
            try:
                key, record, ts = record_fields(
                    raw["annotation_id"], raw.get("task_id"), raw.get("image_a"), raw.get("image_b"),
                    raw.get("answer"), raw.get("completed_by"), raw.get("updated_at"))
            except InputError as exc:
                raise exc.at(f"records[{index}].{exc.field}") from None
            prepared[key] = (json.dumps(record, sort_keys=True), ts)
        old_pairs = text_list(self.redis.smembers(self.key("pair_answer_keys")))
        by_pair: dict[str, dict[str, str]] = {}
        for key, (payload, _ts) in prepared.items():
            record = json.loads(payload)
            by_pair.setdefault(record["pair_id"], {})[key] = record["answer"]
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key("annotations"), self.key("annotation_ts"), self.key("deleted"),
                    self.key("pair_answer_keys"), *(self.key(f"pair_answers:{p}") for p in old_pairs))
        if prepared:
            pipe.hset(self.key("annotations"), mapping={k: v[0] for k, v in prepared.items()})
            stamps = {k: repr(v[1]) for k, v in prepared.items() if v[1] is not None}
            if stamps:
                pipe.hset(self.key("annotation_ts"), mapping=stamps)
            for pid, answers in by_pair.items():
                pipe.hset(self.key(f"pair_answers:{pid}"), mapping=answers)
            pipe.sadd(self.key("pair_answer_keys"), *by_pair)
        register(pipe, self.project)
        pipe.execute()
        return len(prepared)

    def all(self) -> list[dict[str, Any]]:
        """Every stored annotation, oldest first (by updated_at, then annotation id)."""
        out = [json.loads(v) for v in self.redis.hgetall(self.key("annotations")).values()]
        out.sort(key=lambda r: (r["updated_at"] is None, r["updated_at"] or 0.0,
                                sort_key(str(r["annotation_id"]))))
        return out

    def get(self, annotation_id: int | str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.key("annotations"), annotation_key(annotation_id))
        return None if raw is None else json.loads(raw)

    def counts(self) -> dict[str, int]:
        """Annotations by answer: same (must-link), different (cannot-link), unsure, skip."""
        counts = dict.fromkeys(ANSWERS, 0)
        for record in self.all():
            counts[record["answer"]] += 1
        return counts

    def on_pair(self, pair_id_: str) -> dict[str, str]:
        """Every recorded answer on one pair, by annotation id (several annotators may answer it)."""
        return text_hash(self.redis.hgetall(self.key(f"pair_answers:{pair_id_}")))

    def pair_in_conflict(self, pair_id_: str) -> bool:
        """True when one annotator said "same" and another "different" about this pair."""
        return {"same", "different"} <= set(self.on_pair(pair_id_).values())

    def conflicts(self) -> list[dict[str, Any]]:
        """Pairs on which annotators disagree (a "same" and a "different"): recorded, never overwritten."""
        by_pair: dict[str, list[dict[str, Any]]] = {}
        for record in self.all():
            if record["answer"] in CONSTRAINT_ANSWERS:
                by_pair.setdefault(record["pair_id"], []).append(record)
        out = []
        for pid, records in sorted(by_pair.items()):
            if len({r["answer"] for r in records}) > 1:
                first = records[0]
                out.append({"pair_id": pid, "image_a": first["image_a"], "image_b": first["image_b"],
                            "annotations": {r["annotation_id"]: r["answer"] for r in records}})
        return out
