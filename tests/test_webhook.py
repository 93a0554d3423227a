"""Webhook events -> recorded answers and queued work; bad events change nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import redis

from ml_backend.errors import InputError
from ml_backend.pairs import pair_id
from ml_backend.queue import CycleQueue
from ml_backend.state import ProjectState
from ml_backend.webhook import WebhookHandler, parse_answer, project_id_of


def choice(value: str, from_name: str = "answer") -> list[dict[str, Any]]:
    return [{"from_name": from_name, "to_name": "image_a", "type": "choices", "value": {"choices": [value]}}]


def annotation_event(ann_id: int = 1, answer: str = "same", *, action: str = "ANNOTATION_CREATED",
                     task_id: int = 11, a: str = "img-a", b: str = "img-b", cancelled: bool = False,
                     updated_at: str = "2024-05-01T10:00:00.000000Z", project: Any = None) -> dict[str, Any]:
    return {
        "action": action,
        "project": project if project is not None else {"id": 3, "title": "p", "label_config": "<View/>"},
        "annotation": {"id": ann_id, "result": [] if cancelled else choice(answer),
                       "was_cancelled": cancelled,
                       "completed_by": 1, "task": task_id, "updated_at": updated_at},
        "task": {"id": task_id, "data": {"id_a": a, "id_b": b, "image_a": f"/u/{a}.jpg",
                                         "image_b": f"/u/{b}.jpg"}},
    }


@pytest.fixture()
def handler(redis_client: redis.Redis) -> WebhookHandler:
    return WebhookHandler(redis_client, CycleQueue(redis_client), retrain_every=3)


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    """Every key and its content, to prove that a rejected event changed nothing."""
    out: dict[bytes, Any] = {}
    for key in client.keys("*"):
        kind = client.type(key)
        out[key] = (client.hgetall(key) if kind == b"hash" else client.smembers(key) if kind == b"set"
                    else client.lrange(key, 0,
                                       -1) if kind == b"list" else client.get(key) if kind == b"string"
                    else kind)
    return out


# --- parse_answer ----------------------------------------------------------------------------------------
def test_parse_answer_choices() -> None:
    assert parse_answer(choice("same")) == "same"
    assert parse_answer(choice("Different")) == "different"
    assert parse_answer(choice("unsure")) == "unsure"
    assert parse_answer([]) == "skip"
    assert parse_answer(choice("same"), was_cancelled=True) == "skip"
    assert parse_answer(choice("same", "other"), "answer") == "skip"
    assert parse_answer(choice("same", "other") + choice("different"), "answer") == "different"
    assert parse_answer([{"type": "textarea", "value": {"text": ["x"]}}, *choice("same")]) == "same"


@pytest.mark.parametrize(("result", "field"), [
    ("same", "annotation.result"),
    ([1], "annotation.result[0]"),
    ([{"type": "choices", "value": {"choices": "same"}}], "annotation.result[0].value.choices"),
    (choice("maybe"), "annotation.result"),
    ([{"type": "choices", "value": {"choices": [["same"]]}}], "annotation.result[0].value.choices[0]"),
    ([{"type": "choices", "value": {"choices": ["same", {"x": 1}]}}],
     "annotation.result[0].value.choices[1]"),
    ([{"type": "choices", "value": {"choices": [1]}}], "annotation.result[0].value.choices[0]"),
    (choice("same") + choice("different"), "annotation.result"),
])
def test_parse_answer_errors(result: Any, field: str) -> None:
    with pytest.raises(InputError) as info:
        parse_answer(result)
    assert info.value.field == field and info.value.status == 422


def test_project_id_of() -> None:
    assert project_id_of({"id": 3}) == "3"
    assert project_id_of(4) == "4"
    assert project_id_of("5.1700000000") == "5"
    for bad, status in ((None, 400), ({"title": "x"}, 400), (True, 400), ("a b", 422), (-1, 422)):
        with pytest.raises(InputError) as info:
            project_id_of(bad)
        assert info.value.status == status


# --- events ----------------------------------------------------------------------------------------------
def test_created_updated_deleted(handler: WebhookHandler, redis_client: redis.Redis) -> None:
    state = ProjectState(redis_client, "3")
    assert handler.handle(annotation_event(1, "same"))["outcome"] == "created"
    assert handler.handle(annotation_event(1, "same"))["outcome"] == "unchanged"
    body = handler.handle(annotation_event(1, "different", action="ANNOTATION_UPDATED",
                                           updated_at="2024-05-01T11:00:00Z"))
    assert body["outcome"] == "updated"
    assert [r["answer"] for r in state.annotations.all()] == ["different"]
    body = handler.handle({"action": "ANNOTATIONS_DELETED", "project": {"id": 3},
                           "annotations": [{"id": 1}, {"id": 99}]})
    assert body["removed"] == [1] and body["unknown"] == [99]
    assert state.annotations.all() == []
    counters = state.counters()
    assert counters["events:ANNOTATION_CREATED"] == 2 and counters["events:ANNOTATIONS_DELETED"] == 1


def test_two_annotators_disagreeing_is_a_recorded_conflict(handler: WebhookHandler,
                                                           redis_client: redis.Redis) -> None:
    first = handler.handle(annotation_event(1, "same", a="a", b="b"))
    second = handler.handle(annotation_event(2, "different", a="b", b="a"))
    assert "conflict" not in first and second["conflict"] is True
    state = ProjectState(redis_client, "3")
    answers = {r["annotation_id"]: r["answer"] for r in state.annotations.all()}
    assert answers == {"1": "same", "2": "different"}
    assert state.counters()["conflicts_detected"] == 1
    assert len(state.annotations.conflicts()) == 1


def test_an_answer_on_a_review_task_is_one_more_vote_on_its_pair(handler: WebhookHandler,
                                                                 redis_client: redis.Redis) -> None:
    from ml_backend.pairs import pair_id

    handler.handle(annotation_event(1, "same", task_id=11, a="a", b="b"))
    review = annotation_event(2, "different", task_id=12, a="a", b="b")
    review["task"]["data"].update({"review": "second_opinion", "review_key": f"{pair_id('a', 'b')}:1"})
    body = handler.handle(review)
    assert body["outcome"] == "created" and body["conflict"] is True
    state = ProjectState(redis_client, "3")
    assert state.annotations.on_pair(pair_id("a", "b")) == {"1": "same", "2": "different"}
    assert state.annotations.get(2)["task_id"] == 12
    assert state.pending.count() == 2  # a new vote changes what the next cycle trusts


def test_skip_and_unsure_record_no_constraint_but_are_asked(handler: WebhookHandler,
                                                              redis_client: redis.Redis) -> None:
    handler.handle(annotation_event(1, cancelled=True, a="a", b="b"))
    handler.handle(annotation_event(2, "unsure", a="c", b="d"))
    state = ProjectState(redis_client, "3")
    assert {r["answer"] for r in state.annotations.all()} == {"skip", "unsure"}
    graph, unmapped = state.constraint_graph({"a": 0, "b": 1, "c": 2, "d": 3}.get)
    assert len(graph) == 0 and unmapped == 0
    assert graph.was_asked(0, 1) and graph.was_asked(2, 3)
    assert state.pending.count() == 0


def test_every_n_constraints_enqueues_one_cycle(handler: WebhookHandler, redis_client: redis.Redis) -> None:
    bodies = [handler.handle(annotation_event(i, "same", a=f"x{i}", b=f"y{i}")) for i in range(1, 6)]
    assert [b.get("cycle") for b in bodies] == [None, None, "enqueued", "queued", "queued"]
    assert CycleQueue(redis_client).depth() == 1


def test_start_training_enqueues_and_coalesces(handler: WebhookHandler, redis_client: redis.Redis) -> None:
    ProjectState(redis_client, "3").touch()  # an unknown project's START_TRAINING is a 404 (test_project_ids)
    first = handler.handle({"action": "START_TRAINING", "project": {"id": 3}})
    second = handler.handle({"action": "START_TRAINING", "project": {"id": 3}})
    assert first["cycle"] == "enqueued" and second["cycle"] == "queued"
    assert second["job_id"] == first["job_id"]
    assert CycleQueue(redis_client).depth() == 1


def test_tasks_created_registers_pairs_and_enqueues_embedding(handler: WebhookHandler,
                                                                redis_client: redis.Redis) -> None:
    state = ProjectState(redis_client, "3")
    state.images.mark_embedded(["e1", "e2"])
    body = handler.handle({"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": [
        {"id": 1, "data": {"id_a": "e1", "id_b": "e2", "image_a": "/1", "image_b": "/2"}},
        {"id": 2, "data": {"image_a": "http://h/new.jpg", "image_b": "/2"}},
        {"id": 3, "data": {"text": "not a pair"}},
    ]})
    assert (body["tasks"], body["unusable"], body["missing_embeddings"]) == (2, 1, 2)
    assert body["embed_job"]
    assert state.pairs.for_task(1) is not None and state.pairs.for_task(2) is not None
    body = handler.handle({"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": [
        {"id": 1, "data": {"id_a": "e1", "id_b": "e2", "image_a": "/1", "image_b": "/2"}}]})
    assert body["missing_embeddings"] == 0 and "embed_job" not in body


def test_tasks_deleted_closes_pairs(handler: WebhookHandler, redis_client: redis.Redis) -> None:
    handler.handle({"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": [
        {"id": 1, "data": {"id_a": "e1", "id_b": "e2", "image_a": "/1", "image_b": "/2"}}]})
    body = handler.handle({"action": "TASKS_DELETED", "project": {"id": 3}, "tasks": [{"id": 1}, {"id": 5}]})
    assert body["closed_pairs"] == 1
    assert next(iter(ProjectState(redis_client, "3").pairs.all().values()))["status"] == "deleted"


def test_unknown_and_ignored_events_are_acknowledged_and_counted(handler: WebhookHandler,
                                                                  redis_client: redis.Redis) -> None:
    ProjectState(redis_client, "3").touch()  # for an unknown project they are counted globally instead
    assert handler.handle({"action": "SOMETHING_NEW", "project": {"id": 3}})["status"] == "ignored"
    assert handler.handle({"action": "PROJECT_UPDATED", "project": {"id": 3}})["known"] is True
    assert handler.handle({"action": "WHATEVER"})["project"] is None
    counters = ProjectState(redis_client, "3").counters()
    assert counters["events:unknown"] == 1 and counters["events:PROJECT_UPDATED"] == 1
    assert redis_client.hget("reid-al:global:counters", "events:unknown") == b"1"


BAD_EVENTS: list[tuple[Any, str, int]] = [
    ([], "body", 400),
    ({}, "action", 400),
    ({"action": 5}, "action", 422),
    ({**annotation_event(), "project": None}, "project", 400),
    ({k: v for k, v in annotation_event().items() if k != "annotation"}, "annotation", 400),
    ({**annotation_event(), "annotation": "x"}, "annotation", 422),
    ({**annotation_event(), "task": {"data": {}}}, "task.id", 400),
    ({**annotation_event(), "task": {"id": "7", "data": {}}}, "task.id", 422),
    ({**annotation_event(), "task": {"id": 7, "data": {"id_a": "x"}}}, "task.data", 422),
    ({**annotation_event(), "task": {"id": 7}}, "task.data", 400),
    ({"action": "ANNOTATIONS_DELETED", "project": {"id": 3}}, "annotations", 400),
    ({"action": "ANNOTATIONS_DELETED", "project": {"id": 3}, "annotations": [{"id": 1}, {"id": "2"}]},
     "annotations[1].id", 422),
    ({"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": {"id": 1}}, "tasks", 422),
    ({"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": [{"data": {}}]}, "tasks[0].id", 400),
]


def _with(event: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    event = copy.deepcopy(event)
    target = event
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return event


BAD_EVENTS += [
    (_with(annotation_event(), ["annotation", "id"], "1"), "annotation.id", 422),
    (_with(annotation_event(), ["annotation", "was_cancelled"], "no"), "annotation.was_cancelled", 422),
    (_with(annotation_event(), ["annotation", "result"], choice("perhaps")), "annotation.result", 422),
    (_with(annotation_event(), ["annotation", "completed_by"], [1]), "annotation.completed_by", 422),
    (_with(annotation_event(), ["annotation", "result"], [{"from_name": "answer", "type": "choices",
                                                            "value": {"choices": [["same"]]}}]),
     "annotation.result[0].value.choices[0]", 422),
    (_with(annotation_event(), ["annotation", "updated_at"], "not a date"), "annotation.updated_at", 422),
]


@pytest.mark.parametrize(("event", "field", "status"), BAD_EVENTS)
def test_bad_events_are_rejected_without_state_change(handler: WebhookHandler, redis_client: redis.Redis,
                                                      event: Any, field: str, status: int) -> None:
    handler.handle(annotation_event(50, "same", a="keep-a", b="keep-b"))
    before = snapshot(redis_client)
    with pytest.raises(InputError) as info:
        handler.handle(event)
    assert (info.value.field, info.value.status) == (field, status)
    assert snapshot(redis_client) == before


def test_retrain_every_must_be_positive(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="retrain_every"):
        WebhookHandler(redis_client, None, retrain_every=0)


def test_embedding_of_an_image_is_requested_once(handler: WebhookHandler, redis_client: redis.Redis) -> None:
    payload = {"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": [
        {"id": 1, "data": {"image_a": "http://h/1.jpg", "image_b": "http://h/2.jpg"}}]}
    assert "embed_job" in handler.handle(payload)
    assert "embed_job" not in handler.handle(payload)
    assert CycleQueue(redis_client).depth() == 1


# --- what counts towards REID_AL_RETRAIN_EVERY ------------------------------------------------------------
def test_update_that_only_moves_updated_at_counts_nothing(handler: WebhookHandler,
                                                          redis_client: redis.Redis) -> None:
    state = ProjectState(redis_client, "3")
    handler.handle(annotation_event(1, "same"))
    assert state.pending.count() == 1
    for minute in range(10, 15):  # re-saves of the same answer: Label Studio moves updated_at only
        body = handler.handle(annotation_event(1, "same", action="ANNOTATION_UPDATED",
                                               updated_at=f"2024-05-01T10:{minute}:00Z"))
        assert body["outcome"] == "updated" and "cycle" not in body
    assert state.pending.count() == 1
    handler.handle(annotation_event(1, "different", action="ANNOTATION_UPDATED",
                                    updated_at="2024-05-01T11:00:00Z"))
    assert state.pending.count() == 2  # the constraint changed
    handler.handle(annotation_event(1, "unsure", action="ANNOTATION_UPDATED",
                                    updated_at="2024-05-01T12:00:00Z"))
    assert state.pending.count() == 3  # a cannot-link was withdrawn
    handler.handle(annotation_event(1, "skip", action="ANNOTATION_UPDATED", cancelled=True,
                                    updated_at="2024-05-01T13:00:00Z"))
    assert state.pending.count() == 3  # unsure -> skip: still no constraint


def test_deleting_skip_or_unsure_counts_nothing(handler: WebhookHandler, redis_client: redis.Redis) -> None:
    state = ProjectState(redis_client, "3")
    handler.handle(annotation_event(1, cancelled=True, a="a", b="b"))
    handler.handle(annotation_event(2, "unsure", a="c", b="d"))
    handler.handle(annotation_event(3, "different", a="e", b="f"))
    assert state.pending.count() == 1
    body = handler.handle({"action": "ANNOTATIONS_DELETED", "project": {"id": 3},
                           "annotations": [{"id": 1}, {"id": 2}]})
    assert body["removed"] == [1, 2] and state.pending.count() == 1
    handler.handle({"action": "ANNOTATIONS_DELETED", "project": {"id": 3}, "annotations": [{"id": 3}]})
    assert state.pending.count() == 2


def test_tasks_created_costs_a_fixed_number_of_redis_commands(redis_client: redis.Redis) -> None:
    """Label Studio gives the webhook 1 s: registering N tasks must not cost N round trips."""
    handler = WebhookHandler(redis_client, None, retrain_every=3)
    state = ProjectState(redis_client, "3")
    state.pairs.register(pair_id("i0", "j0"), "i0", "j0", model_version="v1", p_same=0.25)
    tasks = [{"id": i, "data": {"id_a": f"i{i}", "id_b": f"j{i}", "image_a": f"/i{i}", "image_b": f"/j{i}"}}
             for i in range(500)]
    redis_client.config_resetstat()
    body = handler.handle({"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": tasks})
    stats = redis_client.info("commandstats")
    calls = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")
    assert body["tasks"] == 500 and calls < 20, stats
    assert all(state.pairs.for_task(i) == pair_id(f"i{i}", f"j{i}") for i in range(500))
    first = state.pairs.get(pair_id("i0", "j0"))
    assert first is not None and first["p_same"] == 0.25 and first["task_id"] == 0


def test_answers_during_a_cycle_trigger_a_follow_up_only_after_retrain_every(
        handler: WebhookHandler, redis_client: redis.Redis) -> None:
    queue = CycleQueue(redis_client)
    state = ProjectState(redis_client, "3")
    state.pending.add(5)
    assert queue.acquire_lock("3", "tok", wait=0)  # a cycle runs and read the 5 changes
    assert state.pending.start() == 5
    bodies = [handler.handle(annotation_event(i, "same", a=f"x{i}", b=f"y{i}")) for i in range(1, 4)]
    assert [b.get("cycle") for b in bodies] == [None, None, "enqueued"]
    assert queue.release_lock("3", "tok")  # the worker died (lock gone): its 5 changes count again
    assert handler.handle(annotation_event(9, "same", a="x9", b="y9"))["cycle"] == "queued"
    assert state.pending.count() == 9


def test_an_answer_is_recorded_in_two_round_trips(redis_client: redis.Redis,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Label Studio waits on every event: the label config's names and one script, nothing more."""
    handler = WebhookHandler(redis_client, CycleQueue(redis_client), retrain_every=100)
    handler.handle(annotation_event(1, "same"))  # loads the script into Redis once
    calls: list[str] = []
    execute, pipeline = redis_client.execute_command, redis_client.pipeline
    monkeypatch.setattr(redis_client, "execute_command",
                        lambda *args, **kw: calls.append(str(args[0])) or execute(*args, **kw))
    monkeypatch.setattr(redis_client, "pipeline",
                        lambda *args, **kw: calls.append("pipeline") or pipeline(*args, **kw))
    for event in (annotation_event(2, "different", task_id=12, b="img-c"),
                  annotation_event(2, "same", task_id=12, b="img-c", action="ANNOTATION_UPDATED",
                                   updated_at="2024-05-01T11:00:00Z"),
                  annotation_event(2, "same", task_id=12, b="img-c")):  # a repeat: unchanged
        calls.clear()
        handler.handle(event)
        assert calls == ["HGETALL", "EVALSHA"]
    handler.retrain_every = 1  # from now on each new constraint also asks for a cycle, already queued
    calls.clear()
    assert handler.handle(annotation_event(3, "same", task_id=13, b="img-d"))["cycle"] == "enqueued"
    handler.handle(annotation_event(4, "same", task_id=14, b="img-e"))  # also checks the job is alive
    calls.clear()
    assert handler.handle(annotation_event(5, "same", task_id=15, b="img-f"))["cycle"] == "queued"
    assert calls == ["HGETALL", "EVALSHA", "EVALSHA"]
    state = ProjectState(redis_client, "3")
    assert state.counters()["cycles_queued"] == 2
    assert state.pending.count() == 6 and state.annotations.get(2)["answer"] == "same"
    assert state.counters()["events_unchanged"] == 1 and state.pairs.exists(pair_id("img-a", "img-c"))
