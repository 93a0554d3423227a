"""`sync`: Label Studio's annotations -> the backend's state, with a real Redis.

The unit tests feed Label Studio-shaped task listings (the shape recorded from a real 1.23.2, see
tests/test_labelstudio.py) through a small in-memory client; the e2e test syncs from a real one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from ml_backend.errors import LabelStudioError
from ml_backend.labelstudio import LabelStudioClient
from ml_backend.pairs import pair_id, task_data
from ml_backend.settings import Settings
from ml_backend.state import ProjectState
from ml_backend.state.annotations import parse_timestamp
from ml_backend.status import project_problem_lines
from ml_backend.sync import WATERMARK_OVERLAP_S, choices_control, reconcile, sync

LABEL_CONFIG = (Path(__file__).resolve().parents[1] / "ml_backend" / "label_config.xml").read_text()
PARSED = {"answer": {"type": "Choices", "to_name": ["image_a"], "labels": ["same", "different", "unsure"]}}


def result(*choices: str, from_name: str = "answer") -> list[dict[str, Any]]:
    return [
        {"from_name": from_name, "to_name": "image_a", "type": "choices", "value": {"choices": list(choices)}}
    ]


def ann(
    aid: int, res: list[dict[str, Any]], *, cancelled: bool = False, ts: str = "2026-01-01T00:00:00Z"
) -> dict:
    return {"id": aid, "result": res, "was_cancelled": cancelled, "completed_by": 1, "updated_at": ts}


def pair(k: int, a: str, b: str, annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": k, "data": task_data(a, b, f"/u/{a}", f"/u/{b}"), "annotations": annotations}


class ListingClient:
    """Serves a fixed Label Studio task listing; records nothing, changes nothing."""

    def __init__(self, tasks: list[dict[str, Any]], parsed: dict[str, Any] | None = None) -> None:
        self.tasks = tasks
        self.parsed = PARSED if parsed is None else parsed

    def get_project(self, pid: int) -> dict[str, Any]:
        return {"id": pid, "parsed_label_config": self.parsed}

    def iter_tasks(self, pid: int, *, fields: str | None = None) -> Iterator[dict[str, Any]]:
        assert fields == "all"
        yield from self.tasks


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(model_dir=tmp_path / "models")


def test_choices_control_reads_the_parsed_config() -> None:
    assert choices_control({"parsed_label_config": PARSED}) == "answer"
    two = {"answer": {"type": "Choices"}, "quality": {"type": "Choices"}, "box": {"type": "Labels"}}
    assert choices_control({"parsed_label_config": two}) == "answer"
    assert (
        choices_control({"parsed_label_config": {"q": {"type": "Choices"}, "r": {"type": "Choices"}}}) is None
    )
    assert choices_control({"parsed_label_config": {"verdict": {"type": "Choices"}}}) == "verdict"
    assert choices_control({}) is None


def test_sync_records_every_answer_kind_and_reports_unreadable_ones(
    redis_client: redis_lib.Redis,
    settings: Settings,
) -> None:
    tasks = [
        pair(1, "a", "b", [ann(11, result("same"))]),
        pair(2, "a", "c", [ann(12, result("different")), ann(13, result("same"))]),  # two annotators disagree
        pair(3, "b", "c", [ann(14, [], cancelled=True)]),
        pair(4, "c", "d", [ann(15, result("unsure"))]),
        pair(5, "d", "e", [ann(16, result("same", "different"))]),  # unreadable: two choices
        pair(6, "e", "f", [ann(17, result("maybe"))]),  # unreadable: unknown choice
        pair(7, "f", "g", []),  # open task
        {"id": 8, "data": {"text": "not a pair"}, "annotations": [ann(18, result("same"))]},
        pair(9, "g", "h", [ann(19, result("different", from_name="other") + result("same"))]),
    ]
    report = sync("5", settings, ListingClient(tasks), redis=redis_client)
    assert report.from_name == "answer"
    assert (report.tasks, report.pair_tasks, report.annotations) == (9, 8, 9)
    assert report.answers == {"same": 3, "different": 1, "unsure": 1, "skip": 1}
    assert report.added == 6 and report.removed == 0 and report.changed == 0
    assert report.not_pair == 1
    assert sorted(i["annotation_id"] for i in report.invalid) == [16, 17]
    assert "exactly one choice" in report.invalid[0]["error"]
    assert report.conflicts == 1
    assert report.pairs_registered == 8
    state = ProjectState(redis_client, "5")
    stored = {r["annotation_id"]: r for r in state.annotations.all()}
    assert stored["19"]["answer"] == "same"  # only the "answer" control counts
    assert stored["11"]["pair_id"] == pair_id("a", "b") and stored["11"]["task_id"] == 1
    assert stored["14"]["answer"] == "skip"
    assert state.pending.count() == 6
    assert {p["task_id"] for p in state.pairs.all().values()} == {1, 2, 3, 4, 5, 6, 7, 9}


def test_sync_diffs_against_state_and_is_idempotent(
    redis_client: redis_lib.Redis,
    settings: Settings,
) -> None:
    state = ProjectState(redis_client, "5")
    state.annotations.record(11, task_id=1, image_a="a", image_b="b", answer="different")  # LS now says same
    state.annotations.record(99, task_id=9, image_a="x", image_b="y", answer="same")  # deleted in LS since
    state.annotations.record(12, task_id=2, image_a="a", image_b="c", answer="different")
    state.pairs.register(pair_id("x", "y"), "x", "y", task_id=9)
    tasks = [pair(1, "a", "b", [ann(11, result("same"))]), pair(2, "a", "c", [ann(12, result("different"))])]
    first = sync(5, settings, ListingClient(tasks), redis=redis_client)
    assert (first.added, first.changed, first.removed, first.unchanged) == (0, 1, 1, 1)
    assert first.pairs_closed == 1 and state.pairs.get(pair_id("x", "y"))["status"] == "deleted"
    answers = {r["annotation_id"]: r["answer"] for r in state.annotations.all()}
    assert answers == {"11": "same", "12": "different"}
    second = sync(5, settings, ListingClient(tasks), redis=redis_client)
    assert (second.added, second.changed, second.removed, second.unchanged) == (0, 0, 0, 2)
    assert second.n_changes == 0


def test_sync_requests_a_cycle_only_when_something_changed(
    redis_client: redis_lib.Redis,
    settings: Settings,
) -> None:
    tasks = [pair(1, "a", "b", [ann(11, result("same"))])]
    report = sync(5, settings, ListingClient(tasks), redis=redis_client, request_cycle=True)
    assert report.cycle is not None and report.cycle["outcome"] == "enqueued"
    assert ProjectState(redis_client, "5").cycles.status()["status"] == "queued"
    again = sync(5, settings, ListingClient(tasks), redis=redis_client, request_cycle=True)
    assert again.cycle is None


def test_sync_argument_errors_change_nothing(
    redis_client: redis_lib.Redis,
    settings: Settings,
) -> None:
    with pytest.raises(ValueError, match="pid"):
        sync("abc", settings, ListingClient([]), redis=redis_client)
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY"):
        sync(5, replace(settings, label_studio_api_key=""), redis=redis_client)
    assert redis_client.keys("reid-al:5:*") == []


class RacingClient(ListingClient):
    """A listing during which webhooks arrive: after the second task, a new answer on the (already read)
    first task, a newer answer replacing one the listing already returned, a deletion of an annotation the
    listing already returned, and a task created after the listing passed it, all written to the real state
    exactly as the webhook writes them."""

    def __init__(self, tasks: list[dict[str, Any]], state: ProjectState) -> None:
        super().__init__(tasks)
        self.state = state

    def iter_tasks(self, pid: int, *, fields: str | None = None) -> Iterator[dict[str, Any]]:
        assert fields == "all"
        yield from self.tasks[:2]
        later = "2026-01-02T00:00:00Z"
        self.state.annotations.record(
            21, task_id=1, image_a="a", image_b="b", answer="different", completed_by=2, updated_at=later
        )
        self.state.annotations.record(
            11, task_id=1, image_a="a", image_b="b", answer="different", completed_by=1, updated_at=later
        )
        self.state.annotations.remove(12)
        self.state.pairs.register(pair_id("p", "q"), "p", "q", task_id=40)
        yield from self.tasks[2:]


def test_sync_keeps_answers_and_deletions_that_webhooks_record_during_the_listing(
    redis_client: redis_lib.Redis,
    settings: Settings,
) -> None:
    state = ProjectState(redis_client, "5")
    ts = "2026-01-01T00:00:00Z"
    state.annotations.record(11, task_id=1, image_a="a", image_b="b", answer="same", updated_at=ts)
    state.annotations.record(12, task_id=2, image_a="a", image_b="c", answer="different", updated_at=ts)
    state.annotations.record(99, task_id=9, image_a="x", image_b="y", answer="same", updated_at=ts)  # gone
    tasks = [
        pair(1, "a", "b", [ann(11, result("same"))]),  # read before annotation 21 existed, 11 was updated
        pair(2, "a", "c", [ann(12, result("different"))]),  # read before annotation 12 was deleted
        pair(3, "b", "c", [ann(13, result("same"))]),
    ]
    report = sync(5, settings, RacingClient(tasks, state), redis=redis_client)
    stored = {r["annotation_id"]: r["answer"] for r in state.annotations.all()}
    assert stored == {"11": "different", "13": "same", "21": "different"}  # 21 kept, 12 not resurrected
    assert (report.added, report.removed) == (1, 1)  # 13 added, 99 (stored before, absent in LS) removed
    assert state.pairs.get(pair_id("p", "q"))["status"] == "open"  # task created during the sync stays open
    # The deletion stays remembered and the newer answer stays newer: a listing that still shows 12 and
    # the old answer of 11 (read just before those webhooks) changes nothing.
    tasks[0]["annotations"].append(ann(21, result("different"), ts="2026-01-02T00:00:00Z"))
    again = sync(5, settings, ListingClient(tasks), redis=redis_client)
    assert {r["annotation_id"]: r["answer"] for r in state.annotations.all()} == stored
    assert again.n_changes == 0


class ChangingClient(ListingClient):
    """Label Studio's task listing with its ``updated_after`` filter: each task has an ``updated_at`` (epoch
    seconds here), and a filtered listing returns only the later ones, as the Data Manager filter does."""

    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        super().__init__(tasks)
        self.calls: list[float | None] = []
        self.fail: Exception | None = None

    def iter_tasks(
        self, pid: int, *, fields: str | None = None, updated_after: float | None = None
    ) -> Iterator[dict[str, Any]]:
        assert fields == "all"
        self.calls.append(updated_after)
        if self.fail is not None:
            raise self.fail
        yield from (t for t in self.tasks if updated_after is None or t["updated_at"] > updated_after)


def at(t: float) -> str:
    return f"2026-01-01T00:{int(t) // 60:02d}:{int(t) % 60:02d}Z"


T0 = parse_timestamp(at(0))


def test_reconcile_reads_only_what_changed_after_the_watermark_and_recovers_it(
    redis_client: redis_lib.Redis, settings: Settings
) -> None:
    settings = replace(settings, reconcile_full_minutes=60, retrain_every=2)
    tasks = [dict(pair(k, "a", f"x{k}", []), updated_at=T0 + k) for k in range(1, 4)]
    tasks[0]["annotations"] = [ann(11, result("same"), ts=at(1))]
    client = ChangingClient(tasks)
    first = reconcile(5, settings, client, redis=redis_client, now=T0 + 100)
    assert (first.kind, first.added, client.calls) == ("full", 1, [None])  # no watermark yet: every task
    state = ProjectState(redis_client, "5")
    assert state.reconcile_marks()["watermark"] == T0 + 3
    # An answer and a deletion whose webhooks were lost: their tasks' updated_at moves on
    tasks[1].update(annotations=[ann(12, result("different"), ts=at(200))], updated_at=T0 + 200)
    tasks[0].update(annotations=[], updated_at=T0 + 201)
    second = reconcile(5, settings, client, redis=redis_client, now=T0 + 300)
    assert (second.kind, second.since, second.tasks) == ("incremental", T0 + 3 - WATERMARK_OVERLAP_S, 3)
    assert (second.added, second.removed) == (1, 1)
    assert {r["annotation_id"]: r["answer"] for r in state.annotations.all()} == {"12": "different"}
    assert second.cycle is not None and second.cycle["outcome"] == "enqueued"  # 3 changes >= RETRAIN_EVERY
    third = reconcile(5, settings, client, redis=redis_client, now=T0 + 400)
    assert (third.kind, third.tasks, third.n_changes) == ("incremental", 2, 0)  # the overlap re-reads 2
    assert client.calls[-1] == T0 + 201 - WATERMARK_OVERLAP_S
    status = state.reconcile_status()
    assert status is not None
    assert (status["kind"], status["recovered"], status["recovered_total"], status["passes"]) == (
        "incremental",
        0,
        3,
        3,
    )
    assert state.counters()["reconciles:incremental"] == 2 and state.counters()["reconciles:full"] == 1


def test_an_incremental_pass_removes_only_annotations_of_the_tasks_it_read(
    redis_client: redis_lib.Redis, settings: Settings
) -> None:
    """A task missing from a partial listing is unchanged, not gone: its answers and open pair stay."""
    tasks = [
        dict(pair(1, "a", "b", [ann(11, result("same"))]), updated_at=T0 + 1),
        dict(pair(2, "a", "c", [ann(12, result("same"))]), updated_at=T0 + 100),  # task 1: before the overlap
    ]
    client = ChangingClient(tasks)
    reconcile(5, settings, client, redis=redis_client, now=T0 + 110)
    tasks[1].update(annotations=[], updated_at=T0 + 500)  # 12 deleted; task 1 untouched (not listed)
    report = reconcile(5, settings, client, redis=redis_client, now=T0 + 600)
    assert (report.kind, report.tasks, report.removed, report.pairs_closed) == ("incremental", 1, 1, 0)
    state = ProjectState(redis_client, "5")
    assert [r["annotation_id"] for r in state.annotations.all()] == ["11"]


def test_a_full_pass_comes_every_full_minutes_and_sees_a_deleted_task(
    redis_client: redis_lib.Redis, settings: Settings
) -> None:
    settings = replace(settings, reconcile_full_minutes=5)
    tasks = [
        dict(pair(1, "a", "b", [ann(11, result("same"))]), updated_at=T0 + 1),
        dict(pair(2, "a", "c", [ann(12, result("same"))]), updated_at=T0 + 2),
    ]
    client = ChangingClient(tasks)
    reconcile(5, settings, client, redis=redis_client, now=T0 + 10)
    del tasks[0]  # a deleted task moves no other task's updated_at: only a full pass notices
    assert reconcile(5, settings, client, redis=redis_client, now=T0 + 200).n_changes == 0
    full = reconcile(5, settings, client, redis=redis_client, now=T0 + 10 + 5 * 60)
    assert (full.kind, full.removed, full.pairs_closed) == ("full", 1, 1)


def test_a_failed_reconciliation_is_recorded_counted_and_shown(
    redis_client: redis_lib.Redis, settings: Settings
) -> None:
    client = ChangingClient([dict(pair(1, "a", "b", [ann(11, result("same"))]), updated_at=T0 + 1)])
    reconcile(5, settings, client, redis=redis_client, now=T0 + 10)
    client.fail = LabelStudioError("GET", "http://ls/api/tasks", 503, "maintenance")
    with pytest.raises(LabelStudioError):
        reconcile(5, settings, client, redis=redis_client, now=T0 + 100)
    state = ProjectState(redis_client, "5")
    assert state.reconcile_marks()["watermark"] == T0 + 1  # unchanged: the next pass reads from there
    status = state.reconcile_status()
    assert status is not None and status["failures"] == 1 and "HTTP 503" in status["error"]
    (line,) = [x for x in project_problem_lines({"reconcile": status}) if "reconciliation" in x]
    assert "FAILED" in line and "HTTP 503: maintenance" in line and "1 answer change(s) recovered" in line
    client.fail = None
    reconcile(5, settings, client, redis=redis_client, now=T0 + 200)
    status = state.reconcile_status()
    assert status is not None and status["error"] is None
    (line,) = [x for x in project_problem_lines({"reconcile": status}) if "reconciliation" in x]
    assert "(incremental, 1 task(s) read), 0 answer change(s) recovered; 1 recovered in 2 pass(es)" in line


@pytest.mark.e2e
def test_sync_from_a_real_label_studio(
    ls_client: LabelStudioClient,
    redis_client: redis_lib.Redis,
    settings: Settings,
) -> None:
    project = int(ls_client.create_project("sync test project", LABEL_CONFIG)["id"])
    try:
        ids = ls_client.create_tasks(
            project,
            [
                {"data": task_data(a, b, f"/u/{a}", f"/u/{b}")}
                for a, b in [("a", "b"), ("b", "c"), ("c", "d")]
            ],
        )
        same = ls_client.create_annotation(ids[0], result("same"))
        skip = ls_client.create_annotation(ids[1], [], was_cancelled=True)
        diff = ls_client.create_annotation(ids[2], result("different"))
        report = sync(project, settings, ls_client, redis=redis_client)
        assert report.from_name == "answer"
        assert report.added == 3 and report.answers == {"same": 1, "different": 1, "unsure": 0, "skip": 1}
        state = ProjectState(redis_client, str(project))
        assert {r["annotation_id"] for r in state.annotations.all()} == {
            str(same["id"]),
            str(skip["id"]),
            str(diff["id"]),
        }
        ls_client.delete_annotation(diff["id"])
        ls_client.update_annotation(same["id"], result=result("different"))
        report = sync(project, settings, ls_client, redis=redis_client)
        assert (report.removed, report.changed, report.unchanged) == (1, 1, 1)
        assert state.annotations.get(same["id"])["answer"] == "different"
        assert state.annotations.get(diff["id"]) is None
        # Label Studio's own updated_at filter: after the newest task, nothing; a changed answer moves its
        # task past the watermark, and an incremental pass reads that task alone
        assert report.newest_update is not None
        assert list(ls_client.iter_tasks(project, updated_after=report.newest_update)) == []
        ls_client.update_annotation(skip["id"], result=result("same"), was_cancelled=False)
        changed = sync(project, settings, ls_client, redis=redis_client, since=report.newest_update)
        assert (changed.kind, changed.tasks, changed.changed, changed.removed) == ("incremental", 1, 1, 0)
        assert state.annotations.get(skip["id"])["answer"] == "same"
    finally:
        ls_client.delete_project(project)
