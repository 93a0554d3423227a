"""The pending-change protocol: how many constraint changes no cycle has trained on yet.

One counter decides when answers trigger a retrain (REID_AL_RETRAIN_EVERY), and it must survive
failures: a cycle reads the count when it starts (recorded as "in flight"), and subtracts what it read
only when it succeeds. A failed or killed cycle leaves the answers that triggered it counted, so the
next answer can trigger again; changes that arrive while a cycle runs stay counted for the next one,
but while the cycle's lock is held the ones it already read do not trigger a follow-up by themselves.
Every step is one Lua script, so concurrent webhooks and workers never see half an update.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ml_backend.state.base import KeyFamily, project_prefix

if TYPE_CHECKING:
    from redis import Redis

# KEYS: pending counter, in-flight counter, cycle lock. ARGV: n. Returns the new total, or, while the
# lock is held, the changes the running cycle did not read at its start.
_ADD_LUA = """
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  total = total - (tonumber(redis.call('GET', KEYS[2])) or 0)
  if total < 0 then total = 0 end
end
return total
"""

# KEYS: pending counter, in-flight counter. Returns the pending count, recorded as in flight.
_START_LUA = """
local n = tonumber(redis.call('GET', KEYS[1])) or 0
redis.call('SET', KEYS[2], n)
return n
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


def cycle_lock_key(project: str) -> str:
    """The per-project cycle lock (taken by the cycle job through CycleQueue)."""
    return f"{project_prefix(project)}:cycle:lock"


def cycle_alive_key(project: str, job_id: str) -> str:
    """Present while the cycle job ``job_id`` runs (it beats; see CycleQueue.keep_alive)."""
    return f"{project_prefix(project)}:cycle:alive:{job_id}"


class PendingChanges(KeyFamily):
    """``pending_constraints`` and ``pending_in_flight``, read against the project's cycle lock."""

    def __init__(self, redis: Redis, project: str) -> None:
        super().__init__(redis, project)
        self._add = redis.register_script(_ADD_LUA)
        self._start = redis.register_script(_START_LUA)
        self._consume = redis.register_script(_CONSUME_LUA)
        self._keys = [self.key("pending_constraints"), self.key("pending_in_flight")]

    def add(self, n: int = 1) -> int:
        """Count ``n`` constraint changes; returns the count that may trigger a cycle (see the module)."""
        return int(self._add(keys=[*self._keys, cycle_lock_key(self.project)], args=[n]))

    def count(self) -> int:
        value = self.redis.get(self._keys[0])
        return int(value) if value is not None else 0

    def start(self) -> int:
        """A cycle starts (holding the project's lock): read the count and record it as in flight."""
        return int(self._start(keys=self._keys))

    def abandon(self) -> None:
        """The cycle failed: what it read stays pending and counts towards the next trigger again."""
        self.redis.delete(self._keys[1])

    def consume(self, n: int) -> int:
        """The cycle finished: subtract the ``n`` it read at its start (never below 0); returns what is
        left, the changes that arrived while it ran."""
        return int(self._consume(keys=self._keys, args=[n]))

    @contextmanager
    def cycle(self) -> Iterator[int]:
        """``start`` / ``consume`` around a block that runs one cycle under the project's lock, or
        ``abandon`` when it raises; yields the number of changes the cycle trains on."""
        n = self.start()
        try:
            yield n
        except BaseException:
            self.abandon()
            raise
        self.consume(n)
