"""/predict internals: label-config names, image URLs, scoring, the serving model, on-the-fly embedding."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis

from ml_backend.errors import InputError
from ml_backend.pairs import pair_id
from ml_backend.predict import (
    UNSCORED,
    Predictor,
    ServingModel,
    label_names,
    load_serving_model,
)
from ml_backend.settings import Settings
from ml_backend.state import ProjectState

REPO = Path(__file__).resolve().parents[1]


def test_label_names_of_the_shipped_config() -> None:
    assert label_names((REPO / "label_config.xml").read_text()) == ("answer", "image_a")
    assert label_names('<View><Choices name="q" toName="i1,i2"/></View>') == ("q", "i1")


def test_shipped_label_config_copies_are_identical() -> None:
    assert (REPO / "label_config.xml").read_bytes() == (REPO / "ml_backend" / "label_config.xml").read_bytes()
    text = (REPO / "label_config.xml").read_text()
    for needle in ('value="same"', 'value="different"', 'value="unsure"', 'required="true"', 'hotkey="1"',
                   "$image_a", "$image_b", "$caption_a", "$caption_b", "$id_a", "$id_b"):
        assert needle in text


@pytest.mark.parametrize(("config", "needle"), [("", "non-empty"), ("<View", "XML"),
                                                ("<View><Image name='i' value='$i'/></View>", "no <Choices>"),
                                                ('<View><Choices name="q"/></View>', "toName")])
def test_label_names_errors(config: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle) as info:
        label_names(config)
    assert info.value.field == "label_config"


class _Learned:
    """A calibrator that has learned from answers: cosine mapped linearly to P(same)."""

    is_prior = False

    def predict(self, similarities: np.ndarray) -> np.ndarray:
        return (np.asarray(similarities, dtype=np.float64) + 1.0) / 2.0


def _model(_state: ProjectState, calibrator: object | None = None) -> ServingModel:
    emb = np.zeros((3, 2), dtype=np.float32)
    emb[0] = [1, 0]
    emb[1] = [0.6, 0.8]
    emb[2] = [-1, 0]
    return ServingModel(version="v0003-x", row_of={"a": 0, "b": 1, "c": 2}, embeddings=emb,
                        calibrator=_Learned() if calibrator is None else calibrator)


def _task(a: str, b: str) -> dict:
    return {"id": 1, "data": {"id_a": a, "id_b": b, "image_a": f"/{a}.jpg", "image_b": f"/{b}.jpg"}}


def test_the_score_shown_is_the_probability_of_the_proposed_answer(redis_client: redis.Redis,
                                                                     tmp_path: Path) -> None:
    state = ProjectState(redis_client, "3")
    state.cycles.add_version("v0003-x")
    state.pairs.register(pair_id("a", "c"), "a", "c", model_version="v0003-x", p_same=0.2, priority=0.95)
    predictor = Predictor(Settings(model_dir=tmp_path), load_model=_model)
    results = predictor.predict([_task("a", "b"), _task("a", "c"), _task("a", "zz")], None, state)
    p_ab = (0.6 + 1) / 2
    assert results[0]["score"] == pytest.approx(p_ab) and results[0]["p_same"] == pytest.approx(p_ab)
    assert results[0]["result"][0]["value"]["choices"] == ["same"]
    assert results[1]["score"] == pytest.approx(0.8)  # P(different) of the registry's P(same) 0.2
    assert results[1]["result"][0]["value"]["choices"] == ["different"]
    assert results[2] == {"result": [], "score": UNSCORED, "model_version": "v0003-x"}  # zz: no image file
    assert {r["model_version"] for r in results} == {"v0003-x"}
    assert results[0]["result"][0]["from_name"] == "answer"  # defaults before any label config was seen


def test_a_review_task_gets_the_models_own_answer(redis_client: redis.Redis, tmp_path: Path) -> None:
    state = ProjectState(redis_client, "3")
    state.cycles.add_version("v0003-x")
    state.pairs.register(pair_id("a", "c"), "a", "c", model_version="v0003-x", p_same=0.4, priority=0.95)
    predictor = Predictor(Settings(model_dir=tmp_path), load_model=_model)
    review = _task("a", "c")
    review["data"]["review_key"] = f"{pair_id('a', 'c')}:1"
    unscorable = _task("a", "zz")
    unscorable["data"]["review_key"] = f"{pair_id('a', 'zz')}:1"
    results = predictor.predict([_task("a", "c"), review, unscorable], None, state)
    assert results[0]["score"] == pytest.approx(0.6)  # the first ask: the registry's P(same) 0.4
    assert results[1]["score"] == pytest.approx(1.0)  # the model now: cosine -1, P(same) 0, not stored
    assert results[1]["result"][0]["value"]["choices"] == ["different"]
    assert results[2] == {"result": [], "score": UNSCORED, "model_version": "v0003-x"}


def test_no_choice_is_pre_filled_while_the_calibrator_is_its_prior(redis_client: redis.Redis,
                                                                    tmp_path: Path) -> None:
    class Prior(_Learned):
        is_prior = True

    predictor = Predictor(Settings(model_dir=tmp_path), load_model=lambda s: _model(s, Prior()))
    (result,) = predictor.predict([_task("a", "b")], None, ProjectState(redis_client, "3"))
    assert result["result"] == [] and result["score"] == pytest.approx(0.8)  # still says how sure


def test_predict_without_any_model(redis_client: redis.Redis, tmp_path: Path) -> None:
    state = ProjectState(redis_client, "3")
    predictor = Predictor(Settings(model_dir=tmp_path), load_model=lambda _s: None)
    assert predictor.predict([_task("a", "b")], None, state) == [
        {"result": [], "score": UNSCORED, "model_version": "initial"}]


def test_on_the_fly_embedding_is_bounded(redis_client: redis.Redis, tmp_path: Path) -> None:
    for name in "uvwxyz":
        (tmp_path / f"{name}.jpg").write_bytes(b"img")
    calls: list[int] = []

    def embed(paths: list[Path]) -> np.ndarray:
        calls.append(len(paths))
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(paths), 1))

    deferred: list[list[dict[str, str]]] = []
    settings = Settings(model_dir=tmp_path, predict_embed_max=3, document_root=str(tmp_path))
    predictor = Predictor(settings, load_model=_model, embed_images=embed)
    tasks = [{"id": i, "data": {"id_a": a, "id_b": "a", "image_a": f"/data/local-files/?d={a}.jpg",
                                "image_b": "/a.jpg"}} for i, a in enumerate("uvwxyz")]
    state = ProjectState(redis_client, "3")
    results = predictor.predict(tasks, None, state, on_missing=deferred.append)
    assert sum(calls) == 3
    scored = [r for r in results if r["result"]]
    assert len(scored) == 3 and all(r["result"][0]["value"]["choices"] == ["same"] for r in scored)
    assert [d["id"] for d in deferred[0]] == list("uvwxyz")  # all queued for storing, once
    assert state.counters()["predict_embedded"] == 3 and state.counters()["predict_embed_deferred"] == 3
    again = predictor.predict(tasks, None, state, on_missing=deferred.append)
    assert len(deferred) == 1
    assert all(r["result"] for r in again)  # the next 3 embedded now; the first 3 cached in the process
    assert sum(calls) == 6


def test_on_the_fly_embedding_respects_time(redis_client: redis.Redis, tmp_path: Path) -> None:
    (tmp_path / "u.jpg").write_bytes(b"img")

    def slow(paths: list[Path]) -> np.ndarray:
        time.sleep(0.05)
        return np.ones((len(paths), 2), dtype=np.float32)

    settings = Settings(model_dir=tmp_path, predict_embed_seconds=0.0, document_root=str(tmp_path))
    results = Predictor(settings, load_model=_model, embed_images=slow).predict(
        [{"id": 1, "data": {"id_a": "u", "id_b": "a", "image_a": "/data/local-files/?d=u.jpg",
                            "image_b": "/a.jpg"}}], None, ProjectState(redis_client, "3"))
    assert results[0]["score"] == UNSCORED


def test_load_serving_model_from_store_and_registry(redis_client: redis.Redis, tmp_path: Path) -> None:
    from trainer.registry import ModelRegistry
    from trainer.store import EmbeddingStore

    state = ProjectState(redis_client, "3")
    assert load_serving_model(Settings(model_dir=tmp_path), state) is None
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(6, 4)).astype(np.float32)
    store = EmbeddingStore(tmp_path / "3" / "features")
    store.append([f"i{k}" for k in range(6)], feats, encoder="test")
    frozen = load_serving_model(Settings(model_dir=tmp_path), state)
    assert frozen is not None and frozen.version == "initial" and frozen.embeddings.shape == (6, 4)
    assert np.allclose(np.linalg.norm(frozen.embeddings, axis=1), 1.0, atol=1e-5)
    registry = ModelRegistry(tmp_path, "3")
    emb = feats[:5] / np.linalg.norm(feats[:5], axis=1, keepdims=True)
    version = registry.save(embeddings=emb, adapter_state=None, config={}, metrics={})
    state.cycles.add_version(version)  # what push_cycle records once the version is in Label Studio
    served = load_serving_model(Settings(model_dir=tmp_path), state)
    assert served is not None and served.version == version
    assert served.embeddings.shape == (6, 4)  # the 6th row, stored after the cycle, is appended
    assert served.row_of["i5"] == 5 and served.calibrator is not None


def test_serving_model_is_the_pushed_version_not_the_newest_saved(redis_client: redis.Redis,
                                                                  tmp_path: Path) -> None:
    """A cycle saves to the registry before its push: until state.add_version, /predict keeps serving
    (and labelling with) the version Label Studio serves, so no task gets scores under two versions."""
    from trainer.registry import ModelRegistry
    from trainer.store import EmbeddingStore

    state = ProjectState(redis_client, "3")
    feats = np.eye(4, dtype=np.float32)
    EmbeddingStore(tmp_path / "3" / "features").append([f"i{k}" for k in range(4)], feats, encoder="test")
    registry = ModelRegistry(tmp_path, "3")
    pushed = registry.save(embeddings=feats, adapter_state=None, config={}, metrics={})
    state.cycles.add_version(pushed)
    unpushed = registry.save(embeddings=feats[::-1].copy(), adapter_state=None, config={}, metrics={})
    assert registry.latest() == unpushed
    served = load_serving_model(Settings(model_dir=tmp_path), state)
    assert served is not None and served.version == pushed
    assert np.array_equal(served.embeddings, feats)
    predictor = Predictor(Settings(model_dir=tmp_path))
    task = {"id": 1, "data": {"id_a": "i0", "id_b": "i1", "image_a": "/i0.jpg", "image_b": "/i1.jpg"}}
    assert predictor.predict([task], None, state)[0]["model_version"] == pushed
    state.cycles.add_version(unpushed)  # the push finished: the new version is served from now on
    assert predictor.predict([task], None, state)[0]["model_version"] == unpushed
    no_features = ProjectState(redis_client, "4")
    assert load_serving_model(Settings(model_dir=tmp_path), no_features) is None


def test_a_rejected_predict_does_not_change_meta(redis_client: redis.Redis, tmp_path: Path) -> None:
    predictor = Predictor(Settings(model_dir=tmp_path), load_model=_model)
    state = ProjectState(redis_client, "3")
    state.touch()  # names are recorded for registered projects only
    state.set_meta(from_name="answer", to_name="image_a")
    config = '<View><Choices name="other" toName="img"/></View>'
    with pytest.raises(InputError) as info:
        predictor.predict([_task("a", "b"), {"data": 1}], config, state)
    assert info.value.field == "tasks[1].data"
    assert state.meta() == {"from_name": "answer", "to_name": "image_a"}
    predictor.predict([_task("a", "b")], config, state)  # a valid request does record the names
    assert state.meta() == {"from_name": "other", "to_name": "img"}


def test_predict_rejects_bad_tasks(redis_client: redis.Redis, tmp_path: Path) -> None:
    predictor = Predictor(Settings(model_dir=tmp_path), load_model=_model)
    state = ProjectState(redis_client, "3")
    for tasks, field in (("x", "tasks"), ([1], "tasks[0]"), ([{"data": 1}], "tasks[0].data")):
        with pytest.raises(InputError) as info:
            predictor.predict(tasks, None, state)  # type: ignore[arg-type]
        assert info.value.field == field


@pytest.mark.slow
def test_predict_embeds_a_new_image_with_the_real_encoder(redis_client: redis.Redis, tmp_path: Path) -> None:
    """Frozen store features from mobilenetv2 (offline weights) + one image Label Studio imported."""
    from PIL import Image

    from trainer.encoders import encoder_from_spec
    from trainer.extraction import extract_embeddings
    from trainer.store import EmbeddingStore

    rng = np.random.default_rng(0)
    paths = []
    for k in range(4):
        path = tmp_path / f"im{k}.png"
        Image.fromarray(rng.integers(0, 255, size=(40, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    store = EmbeddingStore(tmp_path / "3" / "features")
    extract_embeddings(encoder_from_spec("mobilenetv2"), [(f"im{k}", paths[k]) for k in range(3)], store,
                       batch_size=4, num_workers=0, progress=False)
    settings = Settings(model_dir=tmp_path, encoder="mobilenetv2", document_root=str(tmp_path))
    state = ProjectState(redis_client, "3")
    new = "/data/local-files/?d=im3.png"
    task = {"id": 1, "data": {"id_a": "im0", "id_b": new, "image_a": "/data/local-files/?d=im0.png",
                              "image_b": new}}
    (result,) = Predictor(settings).predict([task], None, state)
    assert 0.5 <= result["score"] <= 1.0 and result["model_version"] == "initial" and "p_same" in result
    assert result["result"] == []  # no answer yet: the calibrator is its prior, nothing is pre-filled
    assert state.counters()["predict_embedded"] == 1
