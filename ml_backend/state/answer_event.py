"""One annotation event's whole effect on the project state, in one Redis round trip.

Why one script across key families: Label Studio posts each event inside the annotator's request and
waits for the answer, so the webhook's cost is the annotator's wait and caps the event rate one core
can take. Done key family by key family, an answer took eleven round trips (record, pair answers,
counters, conflict check, pair registry, pending count); as one Lua script it is one, and atomic, so
two gunicorn threads never see half an answer. The effects are exactly those of the separate steps:
``Annotations.record``, the counters, ``PairRegistry.register`` of a pair seen for the first time and
``PendingChanges.add`` when the constraint itself changed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml_backend.state.annotations import (
    STORE_ANNOTATION_LUA,
    record_fields,
    store_annotation_args,
    store_annotation_keys,
)
from ml_backend.state.base import PROJECTS_KEY, KeyFamily, as_text
from ml_backend.state.pairs import new_pair_record
from ml_backend.state.pending import cycle_lock_key

if TYPE_CHECKING:
    from redis import Redis

# KEYS 1-5 and ARGV 1-7: STORE_ANNOTATION_LUA's (the answer and its pair's answers). KEYS: 6 projects,
# 7 meta, 8 counters, 9 pairs, 10 task_pairs, 11 pending, 12 pending in flight, 13 cycle lock. ARGV: 8 event
# counter, 9 project, 10 pair record JSON (if the pair is new), 11 task id ('' = none).
# Returns {outcome, replaced record or false, 1 when annotators now disagree on the pair, pending count
# after this change or -1 when the constraint did not change}.
_ANSWER_LUA = STORE_ANNOTATION_LUA + """
local function constraint(answer, pid)
  if answer == 'same' or answer == 'different' then return answer .. '|' .. pid end
  return ''
end
redis.call('HINCRBY', KEYS[8], ARGV[8], 1)
redis.call('SADD', KEYS[6], ARGV[9])
redis.call('PERSIST', KEYS[7])
if outcome == 'unchanged' then
  redis.call('HINCRBY', KEYS[8], 'events_unchanged', 1)
  return {outcome, false, 0, -1}
end
redis.call('HINCRBY', KEYS[8], outcome == 'created' and 'pairs_asked' or 'annotations_updated', 1)
local old_constraint = ''
if old then
  local previous = cjson.decode(old)
  old_constraint = constraint(previous['answer'], previous['pair_id'])
end
local conflict = 0
if ARGV[5] == 'same' or ARGV[5] == 'different' then
  local seen = {}
  for _, a in ipairs(redis.call('HVALS', KEYS[5])) do seen[a] = true end
  if seen['same'] and seen['different'] then
    conflict = 1
    redis.call('HINCRBY', KEYS[8], 'conflicts_detected', 1)
  end
end
if redis.call('HEXISTS', KEYS[9], ARGV[6]) == 0 then
  redis.call('HSET', KEYS[9], ARGV[6], ARGV[10])
  if ARGV[11] ~= '' then redis.call('HSET', KEYS[10], ARGV[11], ARGV[6]) end
end
local pending = -1
if old_constraint ~= constraint(ARGV[5], ARGV[6]) then
  pending = redis.call('INCRBY', KEYS[11], 1)
  if redis.call('EXISTS', KEYS[13]) == 1 then
    pending = pending - (tonumber(redis.call('GET', KEYS[12])) or 0)
    if pending < 0 then pending = 0 end
  end
end
return {outcome, old, conflict, pending}
"""


@dataclass(frozen=True)
class AnswerOutcome:
    """What one annotation event did: ``outcome`` ("created", "updated" or "unchanged"), the record it
    replaced, whether annotators now disagree on the pair, and the pending constraint changes that may
    trigger a cycle (None when this event changed no constraint)."""

    outcome: str
    replaced: dict[str, Any] | None
    conflict: bool
    pending: int | None


class AnswerEvents(KeyFamily):
    """Records annotation events (the webhook's hot path); see the module for why one script."""

    def __init__(self, redis: Redis, project: str) -> None:
        super().__init__(redis, project)
        self._script = redis.register_script(_ANSWER_LUA)

    def record(self, action: str, annotation_id: int | str, **fields: Any) -> AnswerOutcome:
        """Record one ANNOTATION_CREATED/UPDATED event; ``fields`` are ``Annotations.record``'s (task_id,
        image_a, image_b, answer, completed_by, updated_at), every one checked before anything is written."""
        key, record, ts = record_fields(
            annotation_id, fields.get("task_id"), fields.get("image_a"), fields.get("image_b"),
            fields.get("answer"), fields.get("completed_by"), fields.get("updated_at"))
        task_id = record["task_id"]
        pid = record["pair_id"]
        pair = new_pair_record(pid, record["image_a"], record["image_b"], time.time(), task_id=task_id)
        outcome, old, conflict, pending = self._script(
            keys=[*store_annotation_keys(self, pid), PROJECTS_KEY, self.key("meta"), self.key("counters"),
                  self.key("pairs"), self.key("task_pairs"), self.key("pending_constraints"),
                  self.key("pending_in_flight"), cycle_lock_key(self.project)],
            args=[*store_annotation_args(self, key, record, ts, action == "ANNOTATION_CREATED"),
                  f"events:{action}", self.project, json.dumps(pair, sort_keys=True),
                  "" if task_id is None else str(task_id)],
        )
        return AnswerOutcome(
            outcome=str(as_text(outcome)),
            replaced=json.loads(old) if old else None,
            conflict=bool(conflict),
            pending=None if int(pending) < 0 else int(pending),
        )
