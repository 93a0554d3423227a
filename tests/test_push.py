"""push_cycle against an in-memory double of the Label Studio client (Label Studio is another process;
the real client is tested against a real Label Studio in the e2e test)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from ml_backend.pairs import pair_id
from ml_backend.push import (
    MIN_SCORE,
    REVIEW_SCORE,
    p_answer,
    push_cycle,
    queue_key,
    score_of,
    uncertainty_priority,
    version_id,
)
from ml_backend.state import ProjectState
from strategies.constraints import ConstraintGraph, ConstraintKind


@dataclass(frozen=True)
class Proposal:
    i: int
    j: int
    priority: float
    p_same: float
    strategy: str = "aas"
    pool: str = "U_os"
    reason: str = "test"


class LabelStudioDouble:
    """Keeps tasks, predictions, project fields and views in memory, like Label Studio would."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}
        self.predictions: list[dict[str, Any]] = []
        self.project: dict[str, Any] = {}
        self.views: dict[str, int] = {}
        self.calls: list[str] = []
        self._next = 100

    def task_ids_by_pair(self, pid: int) -> dict[str, int]:
        self.calls.append("task_ids_by_pair")
        return {t["data"]["pair_id"]: tid for tid, t in self.tasks.items() if "pair_id" in t["data"]}

    def create_tasks(self, pid: int, tasks: list[dict[str, Any]]) -> list[int]:
        self.calls.append("create_tasks")
        ids = []
        for task in tasks:
            self._next += 1
            self.tasks[self._next] = {"id": self._next, "data": dict(task["data"]), "total_annotations": 0,
                                      "cancelled_annotations": 0}
            ids.append(self._next)
        return ids

    def iter_tasks(self, pid: int) -> list[dict[str, Any]]:
        return [dict(t) for t in self.tasks.values()]

    def import_predictions(self, pid: int, predictions: list[dict[str, Any]]) -> None:
        self.calls.append("import_predictions")
        self.predictions.extend(predictions)

    def patch_project(self, pid: int, **fields: Any) -> dict[str, Any]:
        version = fields.get("model_version")
        if version and not any(p["model_version"] == version for p in self.predictions):
            # Label Studio 1.23: "Model version doesn't exist either as live model or as static predictions."
            raise RuntimeError(f"HTTP 400: model_version {version!r} has no prediction")
        self.project.update(fields)
        return self.project

    def ensure_view(self, pid: int, title: str = "", ordering: list[str] | None = None) -> int:
        self.calls.append("ensure_view")
        return self.views.setdefault(title, len(self.views) + 1)

    def delete_tasks(self, pid: int, task_ids: list[int]) -> None:
        self.calls.append("delete_tasks")
        for tid in task_ids:
            self.tasks.pop(tid)

    def update_task_data(self, task_id: int, data: dict[str, Any]) -> None:
        self.calls.append("update_task_data")
        self.tasks[task_id]["data"] = dict(data)

    def queue(self) -> list[int]:
        """Task ids as the "Most informative first" view serves them (by data.queue, lowest first)."""
        tasks = sorted(self.tasks.values(), key=lambda t: (t["data"].get("queue", ""), t["id"]))
        return [t["id"] for t in tasks]


class Learned:
    """A calibrator that has learned from answers (so choices are pre-filled): cosine mapped to P(same)."""

    is_prior = False

    def predict(self, similarities: np.ndarray) -> np.ndarray:
        return (np.asarray(similarities, dtype=np.float64) + 1.0) / 2.0


IDS = ["a", "b", "c", "d", "e"]


def embeddings() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def push(client: LabelStudioDouble, state: ProjectState, version: str, proposals: list[Proposal],
         graph: ConstraintGraph | None = None, calibrator: Any = None) -> Any:
    return push_cycle(client, state, project_id=3, version=version, proposals=proposals,
                      embeddings=embeddings(),
                      image_ids=IDS, url_for=lambda i: f"/data/local-files/?d={i}.jpg",
                      caption_for=lambda i: f"cap {i}", graph=graph, from_name="answer", to_name="image_a",
                      calibrator=Learned() if calibrator is None else calibrator)


def test_first_push_creates_tasks_predictions_view_and_version(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    report = push(client, state, "v0001-x", [Proposal(0, 1, 0.9, 0.7), Proposal(2, 3, 0.2, 0.1)])
    assert (report.created, report.predictions, report.rescored, report.retired) == (2, 2, 0, 0)
    datas = sorted((t["data"] for t in client.tasks.values()), key=lambda d: d["id_a"])
    assert datas[0] == {"image_a": "/data/local-files/?d=a.jpg", "image_b": "/data/local-files/?d=b.jpg",
                        "id_a": "a", "id_b": "b", "pair_id": pair_id("a", "b"), "caption_a": "cap a",
                        "caption_b": "cap b", "strategy": "aas", "pool": "U_os", "reason": "test",
                        "queue": "0.100000"}
    by_task = {p["task"]: p for p in client.predictions}
    first_id = next(t for t, v in client.tasks.items() if v["data"]["id_a"] == "a")
    first = by_task[first_id]
    assert first["score"] == pytest.approx(0.7) and first["model_version"] == "v0001-x"  # P(answer)
    assert first["result"] == [{"from_name": "answer", "to_name": "image_a", "type": "choices",
                                "value": {"choices": ["same"]}}]
    assert by_task[client.queue()[1]]["score"] == pytest.approx(0.9)  # P(different) with P(same) 0.1
    assert client.queue()[0] == first_id  # most informative served first
    assert client.project == {"model_version": "v0001-x"}
    assert report.view_id == 1 and state.cycles.versions() == ["v0001-x"]
    assert state.pairs.get(pair_id("a", "b"))["task_id"] in client.tasks


def test_retried_push_creates_no_duplicates(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    proposals = [Proposal(0, 1, 0.9, 0.7), Proposal(2, 3, 0.2, 0.1)]
    push(client, state, "v0001-x", proposals)
    report = push(client, state, "v0001-x", proposals)
    assert (report.created, report.existing, report.predictions) == (0, 2, 0)
    assert len(client.tasks) == 2 and len(client.predictions) == 2
    assert report.view_id == 1 and len(client.views) == 1  # ensured again, by title: no duplicate


def test_a_deleted_view_is_recreated_by_the_next_push(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    first = push(client, state, "v0001-x", [Proposal(0, 1, 0.9, 0.7)])
    assert state.meta()["view_id"] == first.view_id == 1
    client.views.clear()  # a user deleted "Most informative first" in the Data Manager
    client.views["someone else's view"] = 7
    second = push(client, state, "v0002-y", [Proposal(2, 3, 0.2, 0.1)])
    assert client.calls.count("ensure_view") == 2
    assert second.view_id == 2 and state.meta()["view_id"] == 2
    assert set(client.views.values()) == {7, 2}


def test_next_version_rescores_open_tasks_and_retires_implied(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    push(client, state, "v0001-x", [Proposal(0, 1, 0.9, 0.7), Proposal(1, 2, 0.5, 0.5), Proposal(3, 4,
                                                                                                 0.4, 0.4)])
    answered = next(t for t in client.tasks.values() if t["data"]["id_a"] == "d")
    answered["total_annotations"] = 1
    graph = ConstraintGraph()
    graph.add("1", 0, 2, ConstraintKind.MUST_LINK)
    graph.add("2", 1, 2, ConstraintKind.MUST_LINK)  # implies (0, 1) same
    report = push(client, state, "v0002-y", [Proposal(0, 2, 0.8, 0.8), Proposal(0, 3, 0.6, 0.3)], graph=graph)
    assert report.implied_proposals == 1  # (0, 2) is already constrained
    assert report.created == 1
    assert report.retired == 2  # (a, b) implied same; (b, c) is itself constrained
    assert {t["data"]["id_a"] + t["data"]["id_b"] for t in client.tasks.values()} == {"ad", "de"}
    assert state.counters()["pairs_saved"] == 2
    assert state.pairs.get(pair_id("a", "b"))["status"] == "retired"
    v2 = [p for p in client.predictions if p["model_version"] == "v0002-y"]
    assert len(v2) == 1  # only the new open task; the answered one is not re-scored
    assert client.project["model_version"] == "v0002-y"


def test_open_tasks_from_users_are_rescored_by_uncertainty(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    client.create_tasks(3, [{"data": {"id_a": "c", "id_b": "e", "image_a": "/c", "image_b": "/e"}}])
    report = push(client, state, "v0001-x", [])
    assert (report.rescored, report.predictions) == (1, 1)
    (pred,) = client.predictions
    emb = embeddings()
    p = (float(emb[2] @ emb[4]) + 1) / 2
    assert pred["score"] == pytest.approx(p_answer(p))
    (task,) = client.tasks.values()
    assert task["data"]["queue"] == queue_key(score_of(uncertainty_priority(p))) and report.requeued == 1


def test_no_choice_is_pre_filled_while_the_calibrator_is_its_prior(redis_client: redis.Redis) -> None:
    class Prior(Learned):
        is_prior = True

    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    push(client, state, "v0001-x", [Proposal(0, 1, 0.9, 0.7)], calibrator=Prior())
    (pred,) = client.predictions
    assert pred["result"] == [] and pred["score"] == pytest.approx(0.7)


def test_a_task_is_moved_in_the_queue_only_when_its_place_changes(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    push(client, state, "v0001-x", [Proposal(0, 1, 0.9, 0.7), Proposal(2, 3, 0.2, 0.1)])
    assert client.calls.count("update_task_data") == 0  # created in place
    report = push(client, state, "v0002-x", [Proposal(0, 1, 0.9, 0.7), Proposal(2, 3, 0.95, 0.1)])
    assert report.requeued == 1 and client.calls.count("update_task_data") == 1
    moved = next(t for t in client.tasks.values() if t["data"]["id_a"] == "c")
    assert moved["data"]["queue"] == queue_key(score_of(0.95)) and client.queue()[0] == moved["id"]
    assert moved["data"]["caption_a"] == "cap c"  # the rest of the task's data is kept


def test_user_imported_tasks_with_urls_only_are_rescored_once_embedded(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    client.create_tasks(3, [{"data": {"image_a": "http://h/x.jpg", "image_b": "/data/local-files/?d=y.jpg"}},
                            {"data": {"image_a": "http://h/x.jpg", "image_b": "http://h/unknown.jpg"}},
                            {"data": {"text": "not a pair"}}])
    ids = ["a", "b", "c", "http://h/x.jpg", "/data/local-files/?d=y.jpg"]
    report = push_cycle(client, state, project_id=3, version="v1", proposals=[], embeddings=embeddings(),
                        image_ids=ids, url_for=lambda i: None)
    assert (report.rescored, report.predictions) == (1, 1)
    assert client.predictions[0]["task"] == 101


def test_nothing_open_to_score_leaves_the_project_version(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    push(client, state, "v0001-x", [Proposal(0, 1, 0.9, 0.7)])
    for task in client.tasks.values():
        task["total_annotations"] = 1  # everything answered, and the sampler found nothing new
    report = push(client, state, "v0002-y", [])
    assert (report.predictions, report.model_version_set) == (0, False)
    assert client.project["model_version"] == "v0001-x"
    assert state.cycles.versions() == ["v0001-x", "v0002-y"]


def test_unservable_images_are_not_pushed(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    report = push_cycle(client, state, project_id=3, version="v1", proposals=[Proposal(0, 1, 0.5, 0.5)],
                        embeddings=embeddings(), image_ids=IDS, url_for=lambda i: None)
    assert report.unservable == 1 and not client.tasks


def test_shape_mismatch_is_rejected(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="embeddings"):
        push_cycle(LabelStudioDouble(), ProjectState(redis_client, "3"), project_id=3, version="v1",
                   proposals=[],
                   embeddings=np.zeros((2, 3), dtype=np.float32), image_ids=IDS, url_for=str)


def test_helpers() -> None:
    assert score_of(0.9) == pytest.approx(0.1) and score_of(2.0) == MIN_SCORE > REVIEW_SCORE == 0.0
    assert queue_key(REVIEW_SCORE) == "0.000000" < queue_key(MIN_SCORE) < queue_key(0.25) < queue_key(1.0)
    assert p_answer(0.2) == pytest.approx(0.8) and p_answer(0.9) == pytest.approx(0.9)
    assert uncertainty_priority(0.5) == 1.0 and uncertainty_priority(1.0) == 0.0
    assert version_id("v1") == "v1"

    class V:
        version = "v9"

    assert version_id(V()) == "v9"
    with pytest.raises(ValueError, match="version"):
        version_id(3)


@pytest.mark.slow
def test_run_project_cycle_pushes_a_real_cycle_and_retires_implied_tasks(redis_client: redis.Redis,
                                                                         tmp_path: Path) -> None:
    """The worker's glue: real trainer cycle on a small store + pool -> push through the client."""
    from ml_backend.jobs import run_project_cycle
    from ml_backend.pool import Pool, PoolItem
    from ml_backend.settings import Settings
    from trainer.store import EmbeddingStore

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 16))
    feats = np.repeat(centres, 5, axis=0) + 0.3 * rng.normal(size=(30, 16))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"im{k:02d}" for k in range(30)]
    EmbeddingStore(tmp_path / "3" / "features").append(ids, feats, encoder="synthetic")
    Pool([PoolItem(id=i, path=f"/imgs/{i}.jpg", url=f"/data/local-files/?d={i}.jpg", text=f"t{i}")
          for i in ids]).save(tmp_path, "3")
    settings = Settings(model_dir=tmp_path, budget=8, strategy="uncertainty", torch_threads=1)
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    state.set_meta(from_name="answer", to_name="image_a")

    first = run_project_cycle(settings, redis_client, "3", client=client)
    version = first["version"]
    assert first["push"]["created"] == len(client.tasks) > 0
    assert client.project["model_version"] == version and state.cycles.versions() == [version]
    assert {p["model_version"] for p in client.predictions} == {version}
    from trainer.registry import ModelRegistry

    assert ModelRegistry(tmp_path, "3").load(version).config["train"]["num_threads"] == 1
    task = next(iter(client.tasks.values()))
    assert task["data"]["image_a"] == f"/data/local-files/?d={task['data']['id_a']}.jpg"
    assert task["data"]["caption_a"] == f"t{task['data']['id_a']}"

    # Two answers that imply the open task's pair: it must be retired by the next cycle's push.
    a, b = task["data"]["id_a"], task["data"]["id_b"]
    c = next(i for i in ids if i not in (a, b))
    state.annotations.record(901, task_id=None, image_a=a, image_b=c, answer="same")
    state.annotations.record(902, task_id=None, image_a=c, image_b=b, answer="different")
    second = run_project_cycle(settings, redis_client, "3", client=client)
    assert second["version"] != version and state.cycles.versions() == [version, second["version"]]
    assert task["id"] not in client.tasks and second["push"]["retired"] >= 1
    assert state.counters()["pairs_saved"] >= 1
    pair_ids = [t["data"]["pair_id"] for t in client.tasks.values()]
    assert len(pair_ids) == len(set(pair_ids))  # no duplicate pair task across cycles
    assert client.calls.count("ensure_view") == 2 and len(client.views) == 1  # every push, one view


# ---------------------------------------------------------------------------------------------- reviews
def review(a: str, b: str, kind: str = "contradiction") -> dict[str, Any]:
    return {"pair_id": pair_id(a, b), "image_a": a, "image_b": b, "kind": kind, "reason": "weakest link",
            "p_same": 0.4, "weight": 1.4, "annotation_ids": ["7"]}


def push_reviews(client: LabelStudioDouble, state: ProjectState, version: str, reviews: list[dict[str, Any]],
                 proposals: list[Proposal] | None = None, graph: ConstraintGraph | None = None,
                 url_for: Any = None) -> Any:
    return push_cycle(client, state, project_id=3, version=version, proposals=proposals or [],
                      embeddings=embeddings(), image_ids=IDS,
                      url_for=url_for or (lambda i: f"/data/local-files/?d={i}.jpg"), graph=graph,
                      reviews=reviews)


def test_a_review_is_a_new_task_served_before_every_other(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    push(client, state, "v0001-x", [Proposal(0, 1, 1.0, 0.9)])  # the original task, top priority
    state.annotations.record(7, task_id=101, image_a="a", image_b="b", answer="same")
    client.tasks[101]["total_annotations"] = 1
    graph = ConstraintGraph()
    graph.add("7", 0, 1, ConstraintKind.MUST_LINK)  # (a, b) is answered: implied, yet asked again
    report = push_reviews(client, state, "v0002-x", [review("a", "b")],
                          proposals=[Proposal(2, 3, 1.0, 0.8)], graph=graph)
    assert (report.reviews_created, report.created) == (1, 1)
    task = next(t for t in client.tasks.values() if t["data"].get("review"))
    assert task["data"]["review_key"] == f"{pair_id('a', 'b')}:1" and task["data"]["strategy"] == "review"
    assert task["data"]["pool"] == "contradiction" and task["data"]["reason"] == "weakest link"
    assert client.queue()[0] == task["id"] and task["data"]["queue"] == queue_key(REVIEW_SCORE)
    assert all(t["data"]["queue"] >= queue_key(MIN_SCORE) for t in client.tasks.values() if t is not task)
    assert task["id"] in {p["task"] for p in client.predictions if p["model_version"] == "v0002-x"}
    assert state.counters()["reviews_pushed"] == 1 and report.retired == 0  # the review is never "implied"

    again = push_reviews(client, state, "v0003-x", [review("a", "b")], graph=graph)
    assert (again.reviews_created, again.reviews_existing) == (0, 1)  # a retried push finds it
    assert [p["task"] for p in client.predictions if p["model_version"] == "v0003-x"
            and p["task"] == task["id"]] == [task["id"]]  # predicted again under the new version
    assert client.queue()[0] == task["id"]


def test_an_answer_makes_the_next_review_of_the_pair_a_new_task(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    state.annotations.record(7, task_id=None, image_a="a", image_b="b", answer="same")
    push_reviews(client, state, "v0001-x", [review("a", "b", "second_opinion")])
    (first,) = [t for t in client.tasks.values() if t["data"].get("review")]
    first["total_annotations"] = 1
    state.annotations.record(8, task_id=first["id"], image_a="a", image_b="b", answer="different")
    report = push_reviews(client, state, "v0002-x", [review("a", "b", "disagreement")])
    assert report.reviews_created == 1
    keys = sorted(t["data"]["review_key"] for t in client.tasks.values() if t["data"].get("review"))
    assert keys == [f"{pair_id('a', 'b')}:1", f"{pair_id('a', 'b')}:2"]


def test_a_resolved_review_task_still_open_is_deleted(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    push_reviews(client, state, "v0001-x", [review("a", "b"), review("c", "d", "disagreement")])
    assert sum(bool(t["data"].get("review")) for t in client.tasks.values()) == 2
    report = push_reviews(client, state, "v0002-x", [review("c", "d", "disagreement")])
    assert report.reviews_retired == 1
    assert [t["data"]["id_a"] for t in client.tasks.values() if t["data"].get("review")] == ["c"]


def test_a_review_of_an_image_label_studio_cannot_show_is_not_pushed(redis_client: redis.Redis) -> None:
    client, state = LabelStudioDouble(), ProjectState(redis_client, "3")
    report = push_reviews(client, state, "v0001-x", [review("a", "b")],
                          url_for=lambda i: None if i == "b" else f"/data/local-files/?d={i}.jpg")
    assert (report.reviews_created, report.unservable) == (0, 1) and client.tasks == {}
    assert "reviews_pushed" not in state.counters()
