"""Reviews in the backend: a contradiction becomes a review task served first, resolved by later answers,
listed in /status, /metrics and `reid-al status`."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from ml_backend.app import create_app
from ml_backend.jobs import review_records, run_project_cycle
from ml_backend.pairs import pair_id
from ml_backend.pool import Pool, PoolItem
from ml_backend.push import MIN_SCORE, REVIEW_SCORE, queue_key
from ml_backend.queue import CycleQueue
from ml_backend.settings import Settings
from ml_backend.state import ProjectState
from ml_backend.status import format_status
from strategies.review import Review
from tests.test_push import LabelStudioDouble
from trainer.store import EmbeddingStore

AUTH = {"Authorization": "Basic " + base64.b64encode(b"ann:secret").decode()}


def _pool(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 16))
    feats = np.repeat(centres, 5, axis=0) + 0.3 * rng.normal(size=(30, 16))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"im{k:02d}" for k in range(30)]
    EmbeddingStore(tmp_path / "3" / "features").append(ids, feats, encoder="synthetic")
    Pool([PoolItem(id=i, path=f"/imgs/{i}.jpg", url=f"/data/local-files/?d={i}.jpg") for i in ids]).save(
        tmp_path, "3")
    return ids


def _answer(state: ProjectState, ann: int, a: str, b: str, answer: str, task_id: int | None = None) -> None:
    state.annotations.record(ann, task_id=task_id, image_a=a, image_b=b, answer=answer,
                             updated_at=1_700_000_000 + ann)


def _review_tasks(client: LabelStudioDouble) -> list[dict[str, Any]]:
    return [t for t in client.tasks.values() if t["data"].get("review_key")]


@pytest.mark.slow
def test_a_contradiction_is_reviewed_first_and_resolved_by_later_answers(redis_client: redis.Redis,
                                                                        tmp_path: Path) -> None:
    ids = _pool(tmp_path)
    settings = Settings(model_dir=tmp_path, budget=6, strategy="hybrid", torch_threads=1,
                        basic_auth_user="ann", basic_auth_pass="secret")
    state = ProjectState(redis_client, "3")
    state.set_meta(from_name="answer", to_name="image_a")
    _answer(state, 1, ids[0], ids[1], "same")
    _answer(state, 2, ids[1], ids[2], "same")
    _answer(state, 3, ids[0], ids[2], "different")  # contradicts the "same" path 0-1-2
    client = LabelStudioDouble()

    first = run_project_cycle(settings, redis_client, "3", client=client)
    assert first["review"]["contradictions_open"] == 1 and first["push"]["reviews_created"] == 1
    (task,) = _review_tasks(client)
    (open_review,) = state.reviews.open()
    assert open_review["kind"] == "contradiction" and task["data"]["pool"] == "contradiction"
    suspect = (task["data"]["id_a"], task["data"]["id_b"])
    assert pair_id(*suspect) == open_review["pair_id"]
    assert set(suspect) <= {ids[0], ids[1], ids[2]}
    assert client.queue()[0] == task["id"] and task["data"]["queue"] == queue_key(REVIEW_SCORE)
    assert all(t["data"]["queue"] >= queue_key(MIN_SCORE) for t in client.tasks.values()
               if t["id"] != task["id"])  # the review is served first

    # while open, the identities keep images 0 and 2 apart
    from ml_backend.export import read_identities

    labels = read_identities(settings.project_dir("3") / first["version"]).labels
    assert labels[0] != labels[2]

    status = CycleQueue.for_settings(redis_client, settings).status("3")
    assert status["reviews"]["open"][0]["pair_id"] == open_review["pair_id"]
    assert status["reviews"]["contradictions_open"] == 1 and status["reviews"]["pushed"] == 1
    assert "under review: 1 pair(s) (1 contradiction), 1 contradiction(s) open" in format_status(
        {"queue": "q", "queue_depth": 0, "projects": [status]})
    http = create_app(settings, redis=redis_client).test_client()
    metrics = http.get("/metrics", headers=AUTH).get_data(as_text=True)
    assert 'reid_al_contradictions_open{project="3"} 1' in metrics
    assert 'reid_al_reviews_open{kind="contradiction",project="3"} 1' in metrics
    assert 'reid_al_reviews_pushed_total{project="3"} 1' in metrics
    assert http.get("/status?project=3", headers=AUTH).json["reviews"]["by_kind"]["contradiction"] == 1

    # two annotators look again and side against the suspect: the majority settles it
    was_same = state.annotations.on_pair(open_review["pair_id"])
    verdict = "different" if "same" in was_same.values() else "same"
    task["total_annotations"] = 1
    _answer(state, 10, *suspect, verdict, task_id=task["id"])
    _answer(state, 11, *suspect, verdict, task_id=task["id"])
    second = run_project_cycle(settings, redis_client, "3", client=client)
    assert second["review"]["contradictions_open"] == 0 and second["review"]["resolved"] == 1
    assert state.reviews.open() == [] and state.counters()["reviews_resolved"] == 1
    assert _review_tasks(client) == [task]  # no new review of the pair
    metrics = http.get("/metrics", headers=AUTH).get_data(as_text=True)
    assert 'reid_al_reviews_resolved_total{project="3"} 1' in metrics
    assert 'reid_al_contradictions_open{project="3"} 0' in metrics


def test_review_records_name_images_not_rows() -> None:
    ids = ["z", "a", "m"]
    records = review_records([Review(0, 1, "disagreement", 0.1, 0.4, ("7", "8"), "tie")], ids)
    assert records == [{"pair_id": pair_id("a", "z"), "image_a": "a", "image_b": "z", "kind": "disagreement",
                        "reason": "tie", "p_same": 0.4, "weight": 0.1, "annotation_ids": ["7", "8"]}]


def test_the_open_set_is_replaced_and_what_left_it_counts_as_resolved(redis_client: redis.Redis) -> None:
    state = ProjectState(redis_client, "5")
    one = review_records([Review(0, 1, "contradiction", 1.2, 0.3, ("1",), "weakest link"),
                          Review(1, 2, "second_opinion", 1.9, 0.9, ("2",), "held")], ["a", "b", "c"])
    assert state.reviews.replace(one) == []
    assert [r["kind"] for r in state.reviews.open()] == ["contradiction", "second_opinion"]
    assert state.reviews.counts() == {"contradiction": 1, "disagreement": 0, "second_opinion": 1}
    assert state.reviews.replace(one[1:]) == [one[0]["pair_id"]]
    assert state.counters()["reviews_resolved"] == 1
    assert state.reviews.replace(one[1:]) == [] and state.counters()["reviews_resolved"] == 1  # idempotent
    with pytest.raises(ValueError, match="lacks"):
        state.reviews.replace([{"pair_id": "x"}])
    assert [r["pair_id"] for r in state.reviews.open()] == [one[1]["pair_id"]]  # a bad call changed nothing


def test_the_identity_link_setting_reaches_the_cycle(redis_client: redis.Redis, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.cycle as cycle

    ids = _pool(tmp_path)
    state = ProjectState(redis_client, "3")
    state.set_meta(from_name="answer", to_name="image_a")
    _answer(state, 1, ids[0], ids[1], "different")
    seen: list[bool | str] = []
    real = cycle.run_cycle

    def spy(features, graph, config, **kw):  # type: ignore[no-untyped-def]
        seen.append(config.link_past_cannot_link)
        return real(features, graph, config, **kw)

    monkeypatch.setattr(cycle, "run_cycle", spy)  # the job imports it when it runs
    for value in ("0", "1", "auto"):
        settings = Settings(model_dir=tmp_path, budget=2, strategy="random", torch_threads=1,
                            link_past_cannot_link=value)
        run_project_cycle(settings, redis_client, "3", client=LabelStudioDouble())
    assert seen == [False, True, "auto"]

    def status_text(summary: dict[str, Any]) -> str:
        state.cycles.record({**summary, "status": "finished", "duration_s": 0.0})  # as the cycle job does
        status = CycleQueue.for_settings(redis_client, settings).status("3")
        return format_status({"queue": "q", "queue_depth": 0, "projects": [status]})

    agreed = run_project_cycle(settings, redis_client, "3", client=LabelStudioDouble())
    assert agreed["identities"]["link_past_cannot_link"] == 1  # auto, and the answers agree
    assert "makes no link of its own" not in status_text(agreed)
    _answer(state, 2, ids[0], ids[1], "same")  # another annotator says the opposite: someone erred
    erred = run_project_cycle(settings, redis_client, "3", client=LabelStudioDouble())
    assert erred["review"]["answers_in_conflict"] == 1 and erred["identities"]["link_past_cannot_link"] == 0
    assert ("1 answer conflict(s): an image whose nearest image was answered 'different' makes no link"
            in status_text(erred))
