"""ProjectState against a real Redis: idempotent, order-independent annotation records."""

from __future__ import annotations

import itertools
import json

import pytest
import redis

from ml_backend.errors import InputError
from ml_backend.pairs import pair_id
from ml_backend.state import ProjectState, cycle_lock_key, list_projects, parse_timestamp
from strategies.constraints import ConstraintKind, Relation

ROWS = {"a": 0, "b": 1, "c": 2, "d": 3}


def _state(client: redis.Redis, project: str = "7") -> ProjectState:
    return ProjectState(client, project)


def test_record_created_unchanged_updated(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    kw = {"task_id": 1, "image_a": "b", "image_b": "a", "answer": "same",
          "updated_at": "2024-01-01T00:00:00Z"}
    assert s.annotations.record(10, **kw) == ("created", None)
    assert s.annotations.record(10, **kw) == ("unchanged", None)
    later = {**kw, "answer": "different", "updated_at": "2024-01-02T00:00:00Z"}
    outcome, _ = s.annotations.record(10, **later)
    assert outcome == "updated"
    (rec,) = s.annotations.all()
    assert (rec["annotation_id"], rec["image_a"], rec["image_b"], rec["answer"]) == ("10", "a", "b",
                                                                                     "different")
    assert rec["pair_id"] == pair_id("a", "b")
    assert list_projects(redis_client) == ["7"]


def test_stale_update_is_ignored(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    s.annotations.record(1, task_id=1, image_a="a", image_b="b", answer="different",
                        updated_at="2024-01-02T00:00:00Z")
    assert s.annotations.record(1, task_id=1, image_a="a", image_b="b", answer="same",
                                updated_at="2024-01-01T00:00:00Z") == ("unchanged", None)
    assert s.annotations.get(1)["answer"] == "different"


def test_removed_annotation_is_not_resurrected_by_a_late_event(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    s.annotations.record(1, task_id=1, image_a="a", image_b="b", answer="same")
    assert s.annotations.remove(1) is not None
    assert s.annotations.remove(1) is None
    assert s.annotations.record(1, task_id=1, image_a="a", image_b="b", answer="same")[0] == "unchanged"
    assert s.annotations.all() == []


def _events() -> list[tuple[str, dict]]:
    return [
        ("record", {"annotation_id": 1, "task_id": 1, "image_a": "a", "image_b": "b", "answer": "same",
                    "updated_at": 100.0}),
        ("record", {"annotation_id": 1, "task_id": 1, "image_a": "a", "image_b": "b", "answer": "different",
                    "updated_at": 200.0}),
        ("record", {"annotation_id": 2, "task_id": 2, "image_a": "b", "image_b": "c", "answer": "same",
                    "updated_at": 150.0}),
        ("remove", {"annotation_id": 3}),
        ("record", {"annotation_id": 3, "task_id": 3, "image_a": "c", "image_b": "d", "answer": "same",
                    "updated_at": 120.0}),
    ]


def _apply(s: ProjectState, events: list[tuple[str, dict]]) -> None:
    for kind, kw in events:
        if kind == "record":
            kw = dict(kw)
            s.annotations.record(kw.pop("annotation_id"), **kw)
        else:
            s.annotations.remove(kw["annotation_id"])


def test_duplicated_and_reordered_events_converge(redis_client: redis.Redis) -> None:
    events = _events()
    finals = set()
    for n, order in enumerate(itertools.permutations(events)):
        s = _state(redis_client, str(100 + n))
        _apply(s, list(order) + list(order[:2]))  # plus duplicates
        finals.add(json.dumps([(r["annotation_id"], r["answer"]) for r in s.annotations.all()]))
    assert finals == {json.dumps([["2", "same"], ["1", "different"]])}


def test_constraint_graph_maps_answers(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    s.annotations.record(1, task_id=1, image_a="a", image_b="b", answer="same")
    s.annotations.record(2, task_id=2, image_a="b", image_b="c", answer="different")
    s.annotations.record(3, task_id=3, image_a="c", image_b="d", answer="unsure")
    s.annotations.record(4, task_id=4, image_a="a", image_b="zz", answer="same")
    s.pairs.register(pair_id("a", "d"), "a", "d", task_id=9)
    graph, unmapped = s.constraint_graph(ROWS.get)
    assert unmapped == 1
    assert len(graph) == 2
    assert [c.kind for c in graph.must_links()] == [ConstraintKind.MUST_LINK]
    assert graph.relation(0, 2) is Relation.DIFFERENT
    assert graph.was_asked(2, 3) and graph.was_asked(0, 3)
    graph2, _ = s.constraint_graph(ROWS.get, include_pending=False)
    assert not graph2.was_asked(0, 3)


def test_two_annotators_disagreeing_is_a_conflict(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    s.annotations.record(1, task_id=1, image_a="a", image_b="b", answer="same", completed_by=1)
    s.annotations.record(2, task_id=1, image_a="b", image_b="a", answer="different", completed_by=2)
    (conflict,) = s.annotations.conflicts()
    assert conflict["annotations"] == {"1": "same", "2": "different"}
    assert len(s.annotations.all()) == 2  # both kept, nothing overwritten
    graph, _ = s.constraint_graph(ROWS.get)
    assert len(graph.contradictions()) == 1


def test_pair_answer_index_follows_records_removals_and_replacement(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    pid = pair_id("a", "b")
    s.annotations.record(1, task_id=1, image_a="a", image_b="b", answer="same", updated_at=1.0)
    assert s.annotations.on_pair(pid) == {"1": "same"} and not s.annotations.pair_in_conflict(pid)
    s.annotations.record(2, task_id=1, image_a="b", image_b="a", answer="different", updated_at=2.0)
    assert s.annotations.pair_in_conflict(pid)
    s.annotations.record(2, task_id=1, image_a="b", image_b="a", answer="same", updated_at=3.0)
    assert not s.annotations.pair_in_conflict(pid)
    assert s.annotations.on_pair(pid) == {"1": "same", "2": "same"}
    s.annotations.record(1, task_id=1, image_a="a", image_b="c", answer="same", updated_at=4.0)  # moved pair
    assert s.annotations.on_pair(pid) == {"2": "same"}
    assert s.annotations.on_pair(pair_id("a", "c")) == {"1": "same"}
    s.annotations.remove(2)
    assert s.annotations.on_pair(pid) == {}
    s.annotations.replace_all([{"annotation_id": 7, "task_id": 1, "image_a": "a", "image_b": "b",
                                "answer": "different"}])
    assert s.annotations.on_pair(pid) == {"7": "different"} and s.annotations.on_pair(pair_id("a", "c")) == {}


def test_replace_all_is_validated_before_writing(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    s.annotations.record(1, task_id=1, image_a="a", image_b="b", answer="same")
    bad = [{"annotation_id": 5, "task_id": 5, "image_a": "a", "image_b": "c", "answer": "same"},
           {"annotation_id": 6, "task_id": 6, "image_a": "a", "image_b": "c", "answer": "maybe"}]
    with pytest.raises(InputError, match=r"records\[1\]\.answer"):
        s.annotations.replace_all(bad)
    assert [r["annotation_id"] for r in s.annotations.all()] == ["1"]
    s.annotations.remove(1)
    skip = {"annotation_id": 1, "task_id": 1, "image_a": "a", "image_b": "b", "answer": "skip"}
    assert s.annotations.replace_all([bad[0], skip]) == 2
    assert {r["annotation_id"]: r["answer"] for r in s.annotations.all()} == {"1": "skip", "5": "same"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"annotation_id": None}, "annotation_id"), ({"annotation_id": True}, "annotation_id"),
     ({"task_id": "x"}, "task_id"), ({"image_a": ""}, "image_a"), ({"image_b": "a"}, "image_b"),
     ({"answer": "yes"}, "answer"), ({"updated_at": "yesterday"}, "updated_at"), ({"completed_by": 1.5},
                                                                                    "completed_by")],
)
def test_bad_records_name_the_argument_and_change_nothing(redis_client: redis.Redis, kwargs: dict,
                                                          field: str) -> None:
    s = _state(redis_client)
    base = {"annotation_id": 1, "task_id": 1, "image_a": "a", "image_b": "b", "answer": "same"}
    base.update(kwargs)
    with pytest.raises(InputError) as info:
        s.annotations.record(base.pop("annotation_id"), **base)
    assert info.value.field == field
    assert s.annotations.all() == []


def test_bad_project_is_rejected(redis_client: redis.Redis) -> None:
    for bad in ("", "a:b", "a b"):
        with pytest.raises(InputError, match="project"):
            ProjectState(redis_client, bad)


def test_pair_registry(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    pid = pair_id("a", "b")
    assert s.pairs.register(pid, "b", "a", model_version="v1", p_same=0.4) is True
    assert s.pairs.register(pid, "a", "b", task_id=12) is False
    rec = s.pairs.get(pid)
    assert (rec["task_id"], rec["model_version"], rec["p_same"], rec["status"]) == (12, "v1", 0.4, "open")
    assert s.pairs.for_task(12) == pid
    assert s.pairs.set_status(pid, "retired") and s.pairs.all()[pid]["status"] == "retired"
    assert s.pairs.set_status("nope", "retired") is False
    with pytest.raises(InputError, match="pair_id"):
        s.pairs.register("0123", "a", "b")
    with pytest.raises(InputError, match="status"):
        s.pairs.set_status(pid, "gone")


def test_counters_pending_versions_cycles(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    assert s.incr("x") == 1 and s.incr("x", 4) == 5
    assert s.counters() == {"x": 5}
    assert s.pending.add() == 1 and s.pending.add(2) == 3 and s.pending.count() == 3
    s.cycles.add_version("v1")
    s.cycles.add_version("v2")
    s.cycles.add_version("v1")
    assert s.cycles.versions() == ["v1", "v2"] and s.cycles.current_version() == "v2"
    s.cycles.record({"status": "finished", "duration_s": 2.0})
    s.cycles.record({"status": "failed", "duration_s": 1.0})
    assert [c["status"] for c in s.cycles.history()] == ["failed", "finished"]
    assert s.cycles.seconds() == (3.0, 2)
    s.images.mark_embedded(["a", "b"])
    assert s.images.missing(["a", "c", "c"]) == ["c"]
    s.pairs.mark_pushed("v2", [3, 4])
    assert s.pairs.pushed_tasks("v2") == {3, 4}


def test_parse_timestamp() -> None:
    assert parse_timestamp("1970-01-01T00:00:10Z") == 10.0
    assert parse_timestamp(5) == 5.0
    assert parse_timestamp(None) is None
    with pytest.raises(InputError, match="updated_at"):
        parse_timestamp([1])


def test_consume_pending_subtracts_what_a_cycle_read_never_below_zero(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    s.pending.add(25)
    read = s.pending.start()
    s.pending.add(3)  # answers that arrive while the cycle runs
    assert s.pending.consume(read) == 3 and s.pending.count() == 3
    assert s.pending.consume(10) == 0 and s.pending.count() == 0
    assert s.pending.consume(0) == 0


def test_a_failed_cycle_leaves_what_it_read_pending(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    s.pending.add(4)
    with pytest.raises(RuntimeError), s.pending.cycle() as read:
        assert read == 4
        raise RuntimeError("push failed")
    assert s.pending.count() == 4 and redis_client.get(s.pending.key("pending_in_flight")) is None
    with s.pending.cycle() as read:
        s.pending.add(1)
    assert read == 4 and s.pending.count() == 1


def test_released_embeddings_can_be_claimed_again(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    assert s.images.claim(["a", "b"]) == ["a", "b"]
    assert s.images.claim(["a", "b"]) == []
    s.images.release(["a"])
    assert s.images.claim(["a", "b"]) == ["a"]


def test_record_change_and_pop_return_the_previous_record(redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    kw = {"task_id": 1, "image_a": "a", "image_b": "b"}
    assert s.annotations.record(1, answer="same", updated_at=1.0, **kw) == ("created", None)
    outcome, old = s.annotations.record(1, answer="same", updated_at=2.0, **kw)
    assert outcome == "updated" and old is not None and old["answer"] == "same" and old["updated_at"] == 1.0
    popped = s.annotations.remove(1)
    assert popped is not None and popped["answer"] == "same" and popped["updated_at"] == 2.0
    assert s.annotations.remove(1) is None


def test_register_task_pairs_matches_register_pair_in_two_round_trips(redis_client: redis.Redis) -> None:
    one, many = _state(redis_client), ProjectState(redis_client, "8")
    for s in (one, many):
        s.pairs.register(pair_id("a", "b"), "a", "b", model_version="v1", p_same=0.5)
    tasks = [(10, "b", "a"), (11, "c", "d"), (12, "c", "d"), (13, "e", "f")]
    for task_id, a, b in tasks:
        one.pairs.register(pair_id(a, b), a, b, task_id=task_id)
    assert many.pairs.register_tasks(tasks) == 4
    assert many.pairs.register_tasks(tasks) == 0  # already mapped: nothing rewritten

    def without_time(records: dict) -> dict:
        return {k: {f: v for f, v in r.items() if f != "created_at"} for k, r in records.items()}

    assert without_time(many.pairs.all()) == without_time(one.pairs.all())
    assert many.pairs.all()[pair_id("a", "b")]["p_same"] == 0.5
    assert {t: many.pairs.for_task(t) for t, _, _ in tasks} == {t: one.pairs.for_task(t) for t, _, _ in tasks}
    with pytest.raises(InputError, match="pair_id"):
        many.pairs.register_tasks([(14, "x", "x")])


def test_changes_read_by_a_running_cycle_do_not_count_towards_the_next_trigger(
        redis_client: redis.Redis) -> None:
    s = _state(redis_client)
    lock = cycle_lock_key(s.project)
    s.pending.add(25)
    assert s.pending.start() == 25
    assert s.pending.add() == 26  # no lock held: the cycle died
    redis_client.set(lock, "token")
    assert s.pending.add() == 2  # only what the running cycle did not read
    assert s.pending.add() == 3 and s.pending.count() == 28
    s.pending.abandon()  # the cycle failed: everything counts again
    assert s.pending.add() == 29
    assert s.pending.start() == 29
    assert s.pending.consume(29) == 0
    s.pending.add(1)
    assert s.pending.add() == 2  # consumed: nothing in flight any more
