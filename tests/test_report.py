"""`reid-al report`: the progress picture and its summary numbers on a small constructed project."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import redis

from ml_backend.cli import main
from ml_backend.report import collect_progress
from ml_backend.settings import Settings
from ml_backend.state import ProjectState
from strategies.constraints import ConstraintGraph
from trainer.registry import ModelRegistry
from trainer.report import format_summary, implied_pairs, render_report, summarize
from trainer.store import EmbeddingStore

PROJECT = "5"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _npz(labels: list[int], verified: list[bool]) -> bytes:
    buf = io.BytesIO()
    n = len(labels)
    np.savez(
        buf,
        labels=np.array(labels),
        verified=np.array(verified),
        confidence=np.ones(n),
        answers=np.zeros(n, dtype=np.int64),
    )
    return buf.getvalue()


def _project(tmp_path: Path, client: redis.Redis) -> ProjectState:
    """8 images; two versions; answers: {0,1,2} and {3,4} answered same, 0-3 different, two
    'different' answers inside those groups (a contradiction under review, and an annotator conflict)."""
    ids = [f"im{k}" for k in range(8)]
    feats = np.eye(8, dtype=np.float32)
    EmbeddingStore(tmp_path / PROJECT / "features").append(ids, feats, encoder="synthetic")
    registry = ModelRegistry(tmp_path, PROJECT)
    for labels, verified in (
        ([0, 1, 2, 3, 4, 5, 6, 7], [False] * 8),
        ([0, 0, 0, 1, 1, 2, 3, 4], [True] * 5 + [False] * 3),
    ):
        sizes = np.bincount(labels)
        metrics = {
            "identities": len(sizes),
            "identities_verified": len(set(np.array(labels)[verified])),
            "images_verified": sum(verified),
            "images_inferred": 8 - sum(verified),
            "identities_single_image": int((sizes == 1).sum()),
        }
        registry.save(
            embeddings=feats,
            adapter_state=None,
            config={},
            metrics=metrics,
            extra={"identities.npz": _npz(labels, verified)},
        )
    state = ProjectState(client, PROJECT)
    answers = [
        (1, 0, 1, "same"),
        (2, 1, 2, "same"),
        (3, 3, 4, "same"),
        (4, 0, 3, "different"),
        (5, 0, 2, "different"),
        (6, 5, 6, "unsure"),
        (7, 6, 7, "skip"),
        (8, 3, 4, "different"),
    ]
    for ann, a, b, answer in answers:
        state.annotations.record(
            ann,
            task_id=None,
            image_a=ids[a],
            image_b=ids[b],
            answer=answer,
            updated_at=1_700_000_000.0 + 3600 * ann,
        )
    state.incr("pairs_saved", 7)
    # the last cycle's review: (0, 2) contradicts 0=1=2; (3, 4) is a one-to-one tie, a disagreement
    state.reviews.replace([{"pair_id": "p12", "image_a": ids[1], "image_b": ids[2], "kind": "contradiction",
                            "reason": "weakest link", "p_same": 0.5, "weight": 1.5, "annotation_ids": ["2"]},
                           {"pair_id": "p34", "image_a": ids[3], "image_b": ids[4], "kind": "disagreement",
                            "reason": "tie", "p_same": 0.5, "weight": 0.0, "annotation_ids": ["3", "8"]}],
                          contradictions_open=1)
    return state


def test_implied_pairs_counts_transitivity() -> None:
    graph = ConstraintGraph()
    graph.add(1, 0, 1, "must_link")
    graph.add(2, 1, 2, "must_link")
    graph.add(3, 3, 4, "must_link")
    graph.add(4, 0, 3, "cannot_link")
    # same: (0,2) implied; different: 6 pairs across {0,1,2} x {3,4}, (0,3) answered -> 5
    assert implied_pairs(graph, 8) == 6
    graph.add(5, 0, 2, "cannot_link")  # asked now (a contradiction): no longer implied
    assert implied_pairs(graph, 8) == 5
    assert implied_pairs(ConstraintGraph(), 4) == 0


def test_summary_numbers_of_a_constructed_project(tmp_path: Path, redis_client: redis.Redis) -> None:
    state = _project(tmp_path, redis_client)
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    progress = collect_progress(Settings(model_dir=tmp_path), redis_client, PROJECT)
    assert {k: redis_client.dump(k) for k in redis_client.keys("*")} == before  # a report writes nothing
    summary = summarize(progress)
    assert (
        summary["answers"],
        summary["answers_same"],
        summary["answers_different"],
        summary["answers_unsure"],
        summary["answers_skip"],
    ) == (8, 3, 3, 1, 1)
    assert summary["pairs_answered"] == 6 and summary["pairs_implied"] == 5 and summary["pairs_saved"] == 7
    assert summary["contradictions_open"] == 1 and summary["annotator_conflicts"] == 1
    assert summary["versions"] == 2 and summary["version"] == progress.versions[-1].version
    assert (
        summary["identities"],
        summary["identities_verified"],
        summary["images_verified"],
        summary["images_inferred"],
    ) == (5, 2, 5, 3)
    # in arrival order, judged against the latest identities (no cycle stored a judgement): the three
    # "same" confirm what they inferred, 0-3 were apart (nothing changes), then two contradictions
    stop = summary["stopping"]
    assert (stop["answers"], stop["label_changing"], stop["reached"]) == (6, 2, False)
    assert progress.stopping is not None and progress.stopping.p_trace.shape == (6,)
    text = format_summary(summary)
    assert "8 answers (3 same, 3 different, 1 unsure, 1 skipped)" in text
    assert "5 implied by transitivity" in text and "contradictions open: 1" in text
    assert "stopping rule not reached" in text and "2 of 6 answers" in text
    assert state.exists()


def test_report_writes_a_valid_png(tmp_path: Path, redis_client: redis.Redis) -> None:
    import matplotlib.image as mpimg

    _project(tmp_path, redis_client)
    progress = collect_progress(Settings(model_dir=tmp_path), redis_client, PROJECT)
    out = render_report(progress, tmp_path / "report.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(out)
    assert image.shape[0] >= 600 and image.shape[1] >= 900
    assert image[..., :3].std() > 0.05  # something is drawn


def test_report_of_a_project_with_nothing_yet(tmp_path: Path, redis_client: redis.Redis) -> None:
    ProjectState(redis_client, "6").touch()
    progress = collect_progress(Settings(model_dir=tmp_path), redis_client, "6")
    summary = summarize(progress)
    assert summary["answers"] == 0 and summary["versions"] == 0 and "version" not in summary
    assert "no model version yet" in format_summary(summary)
    assert render_report(progress, tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_report_prints_the_summary_and_refuses_bad_input(
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _project(tmp_path, redis_client)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", redis_url)
    out = tmp_path / "progress.png"
    assert main(["report", "--project", PROJECT, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "project 5: 8 answers" in captured.out and "wrote" in captured.err
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert main(["report", "--project", PROJECT, "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs_implied"] == 5

    for argv, message in (
        (["--project", "99"], "unknown project 99"),
        (["--project", "x"], "project"),
        (["--project", PROJECT, "--out", str(tmp_path / "r.jpg")], ".png"),
        (["--project", PROJECT, "--out", str(tmp_path / "no" / "r.png")], "does not exist"),
    ):
        assert main(["report", *argv]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r.jpg").exists() and not (tmp_path / "99").exists()
