"""The backend's small per-project state in Redis: annotations, pair registry, counters, cycle status.

Why Redis and why keyed by annotation id: Label Studio sends every event once, synchronously, and
may send them out of order or twice (a retried request, a sync racing a webhook). Keying each
constraint by its annotation id makes CREATED/UPDATED idempotent replacements and deletions exact;
a Lua script makes each write atomic so two gunicorn threads never interleave half an update.
Everything here can be rebuilt from Label Studio (`reid-al sync`), so losing it is an inconvenience.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ml_backend.pairs import ordered, pair_id

if TYPE_CHECKING:
    from redis import Redis

    from strategies.constraints import ConstraintGraph

ANSWERS = ("same", "different", "unsure", "skip")
CONSTRAINT_ANSWERS = ("same", "different")
KEY_PREFIX = "reid-al"
PROJECTS_KEY = f"{KEY_PREFIX}:projects"
CYCLE_HISTORY_LENGTH = 50

# KEYS: annotations hash, timestamps hash, tombstone set. ARGV: id, json, timestamp ('' = unknown).
# A stale event (older updated_at than the stored one) or an event for a deleted annotation changes
# nothing, so duplicated and reordered deliveries converge on the same final state.
_RECORD_LUA = """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return {'unchanged', false} end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
  return {'created', false}
end
if old == ARGV[2] then return {'unchanged', false} end
local old_ts = redis.call('HGET', KEYS[2], ARGV[1])
if old_ts and ARGV[3] ~= '' and tonumber(ARGV[3]) < tonumber(old_ts) then return {'unchanged', false} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
return {'updated', old}
"""

# KEYS: pending counter, in-flight counter. ARGV: n. Subtract n, floored at 0 (a sync or an operator
# may have reset it), and forget the in-flight count: the cycle that read it is done.
_CONSUME_LUA = """
redis.call('DEL', KEYS[2])
local left = (tonumber(redis.call('GET', KEYS[1])) or 0) - tonumber(ARGV[1])
if left > 0 then redis.call('SET', KEYS[1], left) return left end
redis.call('DEL', KEYS[1])
return 0
"""

# KEYS: pending counter, in-flight counter[, cycle lock]. ARGV: n. Returns the new total, or with a
# lock key whose lock is held, the changes the running cycle did not read at its start.
_ADD_PENDING_LUA = """
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
  total = total - (tonumber(redis.call('GET', KEYS[2])) or 0)
  if total < 0 then total = 0 end
end
return total
"""

# KEYS: pending counter, in-flight counter. Returns the pending count, recorded as in flight.
_START_PENDING_LUA = """
local n = tonumber(redis.call('GET', KEYS[1])) or 0
redis.call('SET', KEYS[2], n)
return n
"""


class StateError(ValueError):
    """Invalid input to the state store; `field` names the offending argument."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def parse_timestamp(value: Any) -> float | None:
    """Label Studio's ISO-8601 `updated_at` (or epoch seconds) -> epoch seconds; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise StateError("updated_at", f"must be an ISO-8601 string or a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            raise StateError("updated_at", f"not an ISO-8601 timestamp: {value!r}") from None
    raise StateError("updated_at", f"must be an ISO-8601 string or a number, got {type(value).__name__}")


def _annotation_key(annotation_id: Any) -> str:
    if isinstance(annotation_id, bool) or not isinstance(annotation_id, (int, str)):
        raise StateError("annotation_id", f"must be an integer or a string, got {annotation_id!r}")
    key = str(annotation_id).strip()
    if not key:
        raise StateError("annotation_id", "must not be empty")
    return key


def _sort_key(annotation_id: str) -> tuple[int, int | str]:
    return (0, int(annotation_id)) if annotation_id.isdigit() else (1, annotation_id)


class ProjectState:
    """All Redis state of one Label Studio project (project key = the project id as a string)."""

    def __init__(self, redis: Redis, project: str | int) -> None:
        project_key = str(project).strip()
        if not project_key or ":" in project_key or any(c.isspace() for c in project_key):
            raise StateError("project", f"must be a non-empty id without ':' or spaces, got {project!r}")
        self.redis = redis
        self.project = project_key
        self.prefix = f"{KEY_PREFIX}:{project_key}"
        self._record = redis.register_script(_RECORD_LUA)
        self._consume = redis.register_script(_CONSUME_LUA)
        self._add_pending = redis.register_script(_ADD_PENDING_LUA)
        self._start_pending = redis.register_script(_START_PENDING_LUA)

    # --- keys --------------------------------------------------------------------------------------
    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def touch(self) -> None:
        """Register the project so /metrics and `reid-al status` list it."""
        self.redis.sadd(PROJECTS_KEY, self.project)

    # --- annotations ---------------------------------------------------------------------------------
    def _annotation_record(
        self,
        annotation_id: Any,
        task_id: Any,
        image_a: Any,
        image_b: Any,
        answer: Any,
        completed_by: Any,
        updated_at: Any,
    ) -> tuple[str, dict[str, Any], float | None]:
        key = _annotation_key(annotation_id)
        if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, int)):
            raise StateError("task_id", f"must be an integer or None, got {task_id!r}")
        for name, value in (("image_a", image_a), ("image_b", image_b)):
            if not isinstance(value, str) or not value:
                raise StateError(name, f"must be a non-empty image id, got {value!r}")
        if image_a == image_b:
            raise StateError("image_b", f"a pair needs two different images, got {image_a!r} twice")
        if answer not in ANSWERS:
            raise StateError("answer", f"must be one of {', '.join(ANSWERS)}, got {answer!r}")
        if completed_by is not None and (isinstance(completed_by, bool)
                                         or not isinstance(completed_by, (int, str))):
            raise StateError("completed_by", f"must be a user id, got {completed_by!r}")
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

    def record_annotation(
        self,
        annotation_id: int | str,
        *,
        task_id: int | None,
        image_a: str,
        image_b: str,
        answer: str,
        completed_by: int | str | None = None,
        updated_at: str | float | None = None,
    ) -> str:
        """Store one annotation's answer; returns "created", "updated" or "unchanged".

        "unchanged" also covers a stale event (older `updated_at` than what is stored) and an event
        for an annotation already deleted: Label Studio never reuses annotation ids.
        """
        return self.record_annotation_change(
            annotation_id, task_id=task_id, image_a=image_a, image_b=image_b, answer=answer,
            completed_by=completed_by, updated_at=updated_at)[0]

    def record_annotation_change(
        self,
        annotation_id: int | str,
        *,
        task_id: int | None,
        image_a: str,
        image_b: str,
        answer: str,
        completed_by: int | str | None = None,
        updated_at: str | float | None = None,
    ) -> tuple[str, dict[str, Any] | None]:
        """`record_annotation` that also returns the record it replaced (None unless "updated").

        Why: an UPDATED event whose answer and pair are unchanged (only updated_at moved) changes
        no constraint, and the webhook must tell that apart to not count it towards a retrain.
        """
        key, record, ts = self._annotation_record(
            annotation_id, task_id, image_a, image_b, answer, completed_by, updated_at)
        payload = json.dumps(record, sort_keys=True)
        raw_outcome, old = self._record(
            keys=[self.key("annotations"), self.key("annotation_ts"), self.key("deleted")],
            args=[key, payload, "" if ts is None else repr(ts)],
        )
        outcome = raw_outcome.decode() if isinstance(raw_outcome, bytes) else str(raw_outcome)
        if outcome != "unchanged":
            pipe = self.redis.pipeline(transaction=True)
            if old:
                old_pid = json.loads(old)["pair_id"]
                if old_pid != record["pair_id"]:
                    pipe.hdel(self.key(f"pair_answers:{old_pid}"), key)
            pipe.hset(self.key(f"pair_answers:{record['pair_id']}"), key, answer)
            pipe.sadd(self.key("pair_answer_keys"), record["pair_id"])
            pipe.sadd(PROJECTS_KEY, self.project)
            pipe.execute()
        return outcome, (json.loads(old) if old else None)

    def pair_answers(self, pair_id_: str) -> dict[str, str]:
        """Every recorded answer on one pair, by annotation id (several annotators may answer it)."""
        raw = self.redis.hgetall(self.key(f"pair_answers:{pair_id_}"))
        return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in raw.items()}

    def pair_in_conflict(self, pair_id_: str) -> bool:
        """True when one annotator said "same" and another "different" about this pair."""
        answers = set(self.pair_answers(pair_id_).values())
        return {"same", "different"} <= answers

    def remove_annotation(self, annotation_id: int | str) -> bool:
        """Delete one annotation's constraint; True when it existed. The id is remembered as deleted."""
        return self.pop_annotation(annotation_id) is not None

    def pop_annotation(self, annotation_id: int | str) -> dict[str, Any] | None:
        """`remove_annotation` returning the removed record (None when it did not exist).

        Why: deleting a skip/unsure annotation changes no constraint; the caller needs the answer.
        """
        key = _annotation_key(annotation_id)
        old = self.redis.hget(self.key("annotations"), key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.key("annotations"), key)
        pipe.hdel(self.key("annotation_ts"), key)
        pipe.sadd(self.key("deleted"), key)
        if old is not None:
            pipe.hdel(self.key(f"pair_answers:{json.loads(old)['pair_id']}"), key)
        removed = pipe.execute()[0]
        return json.loads(old) if removed and old is not None else None

    def replace_all_annotations(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Replace every stored annotation by `records` (what `reid-al sync` read from Label Studio).

        Each record has the keyword arguments of `record_annotation` plus `annotation_id`. All
        records are validated before anything is written, so a bad record changes nothing.
        """
        prepared: dict[str, tuple[str, float | None]] = {}
        for index, raw in enumerate(records):
            if not isinstance(raw, Mapping):
                raise StateError(f"records[{index}]", "must be a mapping")
            if "annotation_id" not in raw:
                raise StateError(f"records[{index}].annotation_id", "missing")
            try:
                key, record, ts = self._annotation_record(
                    raw["annotation_id"], raw.get("task_id"), raw.get("image_a"), raw.get("image_b"),
                    raw.get("answer"), raw.get("completed_by"), raw.get("updated_at"))
            except StateError as exc:
                raise StateError(f"records[{index}].{exc.field}", str(exc).split(": ", 1)[1]) from None
            prepared[key] = (json.dumps(record, sort_keys=True), ts)
        old_pairs = [p.decode() if isinstance(p, bytes) else p
                     for p in self.redis.smembers(self.key("pair_answer_keys"))]
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
        pipe.sadd(PROJECTS_KEY, self.project)
        pipe.execute()
        return len(prepared)

    def annotations(self) -> list[dict[str, Any]]:
        """Every stored annotation, oldest first (by updated_at, then annotation id)."""
        raw = self.redis.hgetall(self.key("annotations"))
        out = [json.loads(v) for v in raw.values()]
        out.sort(key=lambda r: (r["updated_at"] is None, r["updated_at"] or 0.0,
                                _sort_key(str(r["annotation_id"]))))
        return out

    def annotation(self, annotation_id: int | str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.key("annotations"), _annotation_key(annotation_id))
        return None if raw is None else json.loads(raw)

    def constraint_counts(self) -> dict[str, int]:
        """Annotations by answer: same (must-link), different (cannot-link), unsure, skip."""
        counts = dict.fromkeys(ANSWERS, 0)
        for record in self.annotations():
            counts[record["answer"]] += 1
        return counts

    def conflicts(self) -> list[dict[str, Any]]:
        """Pairs on which annotators disagree (a "same" and a "different"): recorded, never overwritten."""
        by_pair: dict[str, list[dict[str, Any]]] = {}
        for record in self.annotations():
            if record["answer"] in CONSTRAINT_ANSWERS:
                by_pair.setdefault(record["pair_id"], []).append(record)
        out = []
        for pid, records in sorted(by_pair.items()):
            answers = {r["answer"] for r in records}
            if len(answers) > 1:
                out.append({"pair_id": pid, "image_a": records[0]["image_a"],
                            "image_b": records[0]["image_b"],
                            "annotations": {r["annotation_id"]: r["answer"] for r in records}})
        return out

    def constraint_graph(
        self,
        row_of: Callable[[str], int | None],
        *,
        include_pending: bool = True,
    ) -> tuple[ConstraintGraph, int]:
        """Build the ConstraintGraph over pool rows; returns (graph, number of unmapped annotations).

        "same" -> must-link, "different" -> cannot-link, "unsure"/"skip" -> asked (never proposed
        again). With include_pending, every pair pushed to Label Studio and not retired is marked
        asked too, so a cycle never proposes a pair that is already waiting for an annotator.
        """
        from strategies.constraints import ConstraintGraph, ConstraintKind

        graph = ConstraintGraph()
        unmapped = 0
        for record in self.annotations():
            i, j = row_of(record["image_a"]), row_of(record["image_b"])
            if i is None or j is None or i == j:
                unmapped += 1
                continue
            answer = record["answer"]
            if answer == "same":
                graph.add(record["annotation_id"], i, j, ConstraintKind.MUST_LINK)
            elif answer == "different":
                graph.add(record["annotation_id"], i, j, ConstraintKind.CANNOT_LINK)
            else:
                graph.mark_asked(min(i, j), max(i, j))
        if include_pending:
            for record in self.pairs().values():
                if record.get("status") != "open":
                    continue
                i, j = row_of(record["image_a"]), row_of(record["image_b"])
                if i is not None and j is not None and i != j:
                    graph.mark_asked(min(i, j), max(i, j))
        return graph, unmapped

    # --- pair registry -------------------------------------------------------------------------------
    def register_pair(
        self,
        pair_id_: str,
        image_a: str,
        image_b: str,
        task_id: int | None = None,
        model_version: str | None = None,
        **extra: Any,
    ) -> bool:
        """Record a pair served (or about to be served) to annotators; True when it is new.

        Re-registering updates task_id/model_version/extra fields but keeps created_at, so a retried
        push is harmless. Extra fields (p_same, priority, strategy, pool) let /predict answer cheaply.
        """
        if not isinstance(pair_id_, str) or not pair_id_:
            raise StateError("pair_id", f"must be a non-empty string, got {pair_id_!r}")
        if pair_id_ != pair_id(image_a, image_b):
            raise StateError("pair_id", f"{pair_id_!r} is not pair_id({image_a!r}, {image_b!r})")
        if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, int)):
            raise StateError("task_id", f"must be an integer or None, got {task_id!r}")
        low, high = ordered(image_a, image_b)
        old_raw = self.redis.hget(self.key("pairs"), pair_id_)
        record: dict[str, Any] = json.loads(old_raw) if old_raw else {
            "pair_id": pair_id_, "image_a": low, "image_b": high, "created_at": time.time(), "status": "open"}
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

    def register_task_pairs(self, tasks: Iterable[tuple[int, str, str]]) -> int:
        """`register_pair(pair_id, a, b, task_id=t)` for many (t, a, b), in two round trips.

        Why: TASKS_CREATED can carry thousands of tasks and Label Studio gives its webhook 1 s;
        one call per task took longer than that. Tasks already mapped to their pair are skipped.
        Returns the number of tasks (re)registered.
        """
        entries: list[tuple[int, str, str, str]] = []
        for task_id, image_a, image_b in tasks:
            if isinstance(task_id, bool) or not isinstance(task_id, int):
                raise StateError("task_id", f"must be an integer, got {task_id!r}")
            try:
                pid = pair_id(image_a, image_b)
            except ValueError as exc:
                raise StateError("pair_id", str(exc)) from None
            entries.append((task_id, image_a, image_b, pid))
        if not entries:
            return 0
        pids = list(dict.fromkeys(e[3] for e in entries))
        read = self.redis.pipeline(transaction=False)
        read.hmget(self.key("task_pairs"), [str(e[0]) for e in entries])
        read.hmget(self.key("pairs"), pids)
        mapped, stored = read.execute()
        records: dict[str, dict[str, Any]] = {
            pid: json.loads(raw) for pid, raw in zip(pids, stored, strict=True) if raw is not None}
        task_pairs: dict[str, str] = {}
        changed: set[str] = set()
        now = time.time()
        for (task_id, image_a, image_b, pid), current in zip(entries, mapped, strict=True):
            current_pid = None if current is None else current.decode() if isinstance(current, bytes) \
                else str(current)
            if current_pid == pid:
                continue
            low, high = ordered(image_a, image_b)
            record = records.setdefault(pid, {"pair_id": pid, "image_a": low, "image_b": high,
                                              "created_at": now, "status": "open"})
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

    def set_pair_status(self, pair_id_: str, status: str) -> bool:
        """Mark a registered pair "open", "retired" (implied) or "deleted"; False if unknown."""
        if status not in ("open", "retired", "deleted"):
            raise StateError("status", f"must be open, retired or deleted, got {status!r}")
        raw = self.redis.hget(self.key("pairs"), pair_id_)
        if raw is None:
            return False
        record = json.loads(raw)
        record["status"] = status
        self.redis.hset(self.key("pairs"), pair_id_, json.dumps(record, sort_keys=True))
        return True

    def pair_for_task(self, task_id: int) -> str | None:
        raw = self.redis.hget(self.key("task_pairs"), str(task_id))
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    def pair(self, pair_id_: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.key("pairs"), pair_id_)
        return None if raw is None else json.loads(raw)

    def pairs(self) -> dict[str, dict[str, Any]]:
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v)
                for k, v in self.redis.hgetall(self.key("pairs")).items()}

    def pushed_tasks(self, model_version: str) -> set[int]:
        """Task ids that already hold a prediction of `model_version` (a retried push skips them)."""
        return {int(t) for t in self.redis.smembers(self.key(f"pushed:{model_version}"))}

    def mark_pushed_tasks(self, model_version: str, task_ids: Iterable[int]) -> None:
        ids = [int(t) for t in task_ids]
        if ids:
            self.redis.sadd(self.key(f"pushed:{model_version}"), *ids)

    # --- embedded image ids (what the feature store holds) --------------------------------------------
    def mark_embedded(self, image_ids: Iterable[str]) -> None:
        ids = list(image_ids)
        if ids:
            self.redis.sadd(self.key("embedded"), *ids)

    def missing_embeddings(self, image_ids: Iterable[str]) -> list[str]:
        """The ids among `image_ids` not yet embedded (one SMISMEMBER round trip: webhook-safe)."""
        ids = list(dict.fromkeys(image_ids))
        if not ids:
            return []
        flags = self.redis.smismember(self.key("embedded"), ids)
        return [i for i, flag in zip(ids, flags, strict=True) if not flag]

    def set_image_urls(self, urls: Mapping[str, str]) -> None:
        """URLs of images that are not in the pool (user-imported tasks), for pushing them later."""
        if urls:
            self.redis.hset(self.key("image_urls"), mapping=dict(urls))

    def image_urls(self) -> dict[str, str]:
        return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in self.redis.hgetall(self.key("image_urls")).items()}

    def claim_embedding(self, image_ids: Iterable[str]) -> list[str]:
        """The ids among `image_ids` whose embedding nobody requested yet (each is requested once)."""
        ids = list(dict.fromkeys(image_ids))
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for image_id in ids:
            pipe.sadd(self.key("embed_requested"), image_id)
        return [i for i, added in zip(ids, pipe.execute(), strict=True) if added]

    def release_embedding(self, image_ids: Iterable[str]) -> None:
        """Forget that these ids were requested, so a later TASKS_CREATED or /predict asks again.

        Why: an embedding that failed (image not reachable yet, worker killed) must not stay
        claimed forever, or that image is never embedded.
        """
        ids = list(dict.fromkeys(image_ids))
        if ids:
            self.redis.srem(self.key("embed_requested"), *ids)

    # --- counters ------------------------------------------------------------------------------------
    def incr(self, name: str, by: int = 1) -> int:
        """Increment a counter (and list the project, so /metrics shows it)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(self.key("counters"), name, by)
        pipe.sadd(PROJECTS_KEY, self.project)
        return int(pipe.execute()[0])

    def counters(self) -> dict[str, int]:
        return {(k.decode() if isinstance(k, bytes) else k): int(v)
                for k, v in self.redis.hgetall(self.key("counters")).items()}

    def add_pending_constraints(self, n: int = 1, *, running_lock: str | None = None) -> int:
        """Count constraint changes not yet trained on; returns the new total.

        With `running_lock` (the project's cycle lock key) and that lock held, returns only the
        changes the running cycle did not read at its start: those it read are still counted (see
        `consume_pending_constraints`) but must not trigger a follow-up by themselves.
        """
        keys = [self.key("pending_constraints"), self.key("pending_in_flight")]
        if running_lock is not None:
            keys.append(running_lock)
        return int(self._add_pending(keys=keys, args=[n]))

    def start_pending_constraints(self) -> int:
        """A cycle starts (holding the project lock): read the change count and record it as in flight."""
        return int(self._start_pending(keys=[self.key("pending_constraints"),
                                             self.key("pending_in_flight")]))

    def abandon_pending_constraints(self) -> None:
        """A cycle failed: what it read stays pending, and counts towards the next trigger again."""
        self.redis.delete(self.key("pending_in_flight"))

    def take_pending_constraints(self) -> int:
        """Read and reset the change counter atomically (a cycle uses `consume_pending_constraints`)."""
        value = self.redis.getdel(self.key("pending_constraints"))
        return int(value) if value is not None else 0

    def consume_pending_constraints(self, n: int) -> int:
        """A cycle finished: subtract the `n` changes it read at its start (never below 0).

        Why not reset at the start: a cycle that fails or is killed would forget the answers that
        triggered it, and with fewer than REID_AL_RETRAIN_EVERY answers left the project stalls.
        Changes that arrived while the cycle ran stay counted for the next one.
        """
        return int(self._consume(keys=[self.key("pending_constraints"), self.key("pending_in_flight")],
                                 args=[n]))

    def pending_constraints(self) -> int:
        value = self.redis.get(self.key("pending_constraints"))
        return int(value) if value is not None else 0

    # --- settings seen from Label Studio ---------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        if values:
            self.redis.hset(self.key("meta"), mapping={k: json.dumps(v) for k, v in values.items()})

    def meta(self) -> dict[str, Any]:
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v)
                for k, v in self.redis.hgetall(self.key("meta")).items()}

    # --- cycle status --------------------------------------------------------------------------------
    def set_cycle_status(self, **fields_: Any) -> None:
        """Merge fields into the current cycle status (status, job_id, version, error, timestamps)."""
        self.redis.hset(self.key("cycle"), mapping={k: json.dumps(v) for k, v in fields_.items()})

    def cycle_status(self) -> dict[str, Any]:
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v)
                for k, v in self.redis.hgetall(self.key("cycle")).items()}

    def record_cycle(self, summary: Mapping[str, Any]) -> None:
        """Append a finished (or failed) cycle's summary to the bounded history."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.key("cycles"), json.dumps(dict(summary), sort_keys=True))
        pipe.ltrim(self.key("cycles"), 0, CYCLE_HISTORY_LENGTH - 1)
        pipe.hincrbyfloat(self.key("cycle_seconds"), "sum", float(summary.get("duration_s", 0.0)))
        pipe.hincrby(self.key("cycle_seconds"), "count", 1)
        pipe.execute()

    def cycles(self) -> list[dict[str, Any]]:
        """Cycle summaries, newest first."""
        return [json.loads(v) for v in self.redis.lrange(self.key("cycles"), 0, -1)]

    def cycle_seconds(self) -> tuple[float, int]:
        raw = self.redis.hgetall(self.key("cycle_seconds"))
        get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
        return float(get.get("sum", 0.0)), int(get.get("count", 0))

    def versions(self) -> list[str]:
        """Model versions pushed to Label Studio, oldest first."""
        return [v.decode() if isinstance(v,
                                         bytes) else v for v in self.redis.lrange(self.key("versions"),
                                                                                  0, -1)]

    def add_version(self, version: str) -> None:
        if version not in self.versions():
            self.redis.rpush(self.key("versions"), version)

    def current_version(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None


def list_projects(redis: Redis) -> list[str]:
    """Every project that has state, sorted numerically where possible."""
    names = [p.decode() if isinstance(p, bytes) else p for p in redis.smembers(PROJECTS_KEY)]
    return sorted(names, key=_sort_key)
