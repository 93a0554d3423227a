"""Adapter training on frozen features: identity start, learning a camera shift away, determinism, errors."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from strategies.constraints import must_link_components
from strategies.metrics import retrieval_metrics
from trainer.adapter import (
    Adapter,
    TrainConfig,
    TrainResult,
    apply_adapter,
    train_adapter,
)
from trainer.runtime import resolve_device, tensor_of
from trainer.training import BatchBuilder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 32


def camera_shift_data(
    n_ids: int,
    per_id: int,
    rng: np.random.Generator,
    cam_vectors: np.ndarray,
    *,
    shift: float = 2.0,
    noise: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Identity centre + per-camera offset vector + noise: the camera offset dominates the raw cosine."""
    centres = rng.normal(size=(n_ids, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ids = np.repeat(np.arange(n_ids), per_id)
    cams = rng.integers(0, cam_vectors.shape[0], size=ids.size)
    x = centres[ids] + shift * cam_vectors[cams] + noise * rng.normal(size=(ids.size, D)) / np.sqrt(D)
    return x.astype(np.float32), ids, cams


@pytest.fixture(scope="module")
def split() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cam_vectors = rng.normal(size=(3, D))
    cam_vectors /= np.linalg.norm(cam_vectors, axis=1, keepdims=True)
    xtr, idtr, camtr = camera_shift_data(30, 8, rng, cam_vectors)
    xte, idte, camte = camera_shift_data(25, 6, rng, cam_vectors)  # held-out identities
    return {"xtr": xtr, "idtr": idtr, "camtr": camtr, "xte": xte, "idte": idte, "camte": camte}


def held_out_map(features: np.ndarray, ids: np.ndarray, cams: np.ndarray) -> float:
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    q, g = cams == 0, cams != 0  # query camera 0, gallery the other cameras
    return retrieval_metrics(f[q], f[g], ids[q], ids[g], cams[q], cams[g]).mAP


def ml_pairs_across_cameras(ids: np.ndarray, cams: np.ndarray) -> list[tuple[int, int]]:
    pairs = []
    for k in np.unique(ids):
        rows = np.flatnonzero(ids == k)
        other = rows[cams[rows] != cams[rows[0]]]
        if other.size:
            pairs.append((int(rows[0]), int(other[0])))
    return pairs


def small_config(**overrides: object) -> TrainConfig:
    params: dict[str, object] = {"epochs": 6, "batch_size": 64, "hidden_dim": 32, "device": "cpu"}
    params.update(overrides)
    return TrainConfig(**params)  # type: ignore[arg-type]


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- the adapter module ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["residual_mlp", "linear"])
def test_adapter_starts_as_identity(kind: str) -> None:
    x = np.random.default_rng(1).normal(size=(20, D)).astype(np.float32)
    state = Adapter(D, kind=kind, hidden_dim=16).to_state()
    out = apply_adapter(state, x, device="cpu")
    expected = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32


def test_adapter_state_survives_registry_style_torch_save() -> None:
    adapter = Adapter(D, hidden_dim=8, random_state=3)
    with torch.no_grad():
        adapter.fc2.weight.normal_()  # make the non-linear branch matter
    buf = io.BytesIO()
    torch.save(adapter.to_state(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    x = np.random.default_rng(2).normal(size=(5, D)).astype(np.float32)
    np.testing.assert_allclose(apply_adapter(loaded, x), apply_adapter(adapter.to_state(), x), atol=1e-6)
    assert _weights_equal(Adapter.from_state(loaded).to_state()["weights"], adapter.to_state()["weights"])


def test_apply_adapter_none_and_batching() -> None:
    x = np.random.default_rng(3).normal(size=(37, D)).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(apply_adapter(None, x), axis=1), 1.0, atol=1e-6)
    adapter = Adapter(D, hidden_dim=8)
    with torch.no_grad():
        adapter.fc2.weight.normal_()
    state = adapter.to_state()
    np.testing.assert_allclose(apply_adapter(state, x, batch_size=4), apply_adapter(state, x), atol=1e-6)


def test_adapter_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="kind"):
        Adapter(D, kind="transformer")
    with pytest.raises(ValueError, match="in_dim"):
        Adapter(0)
    with pytest.raises(ValueError, match="state"):
        Adapter.from_state({"format": "something else"})
    with pytest.raises(ValueError, match="state"):
        Adapter.from_state({"format": "reid-al-adapter/1", "kind": "linear"})
    state = Adapter(D).to_state()
    with pytest.raises(ValueError, match="columns"):
        apply_adapter(state, np.zeros((3, D + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="features"):
        apply_adapter(None, np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        apply_adapter(None, np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="batch_size"):
        apply_adapter(state, np.ones((2, D)), batch_size=0)


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu-of-dreams")


# ---- training -------------------------------------------------------------------------------------------


def test_training_lowers_loss_and_raises_held_out_map(split: dict[str, np.ndarray]) -> None:
    ml = ml_pairs_across_cameras(split["idtr"], split["camtr"])
    result = train_adapter(
        split["xtr"], split["idtr"], ml, [], small_config(epochs=12), cameras=split["camtr"]
    )
    assert isinstance(result, TrainResult)
    assert len(result.losses_per_epoch) == 12 and result.steps > 0 and result.seconds > 0
    assert result.losses_per_epoch[-1] < 0.5 * result.losses_per_epoch[0]
    assert set(result.terms_per_epoch[0]) == {"cluster", "pair", "total"}  # the default terms
    frozen = held_out_map(split["xte"], split["idte"], split["camte"])
    adapted = held_out_map(apply_adapter(result.adapter_state, split["xte"]), split["idte"], split["camte"])
    assert frozen < 0.85
    assert adapted > frozen + 0.2


def test_seeded_runs_are_bit_identical(split: dict[str, np.ndarray]) -> None:
    ml = ml_pairs_across_cameras(split["idtr"], split["camtr"])
    cl = [(0, 200)]
    cfg = small_config(epochs=2)
    a = train_adapter(split["xtr"], split["idtr"], ml, cl, cfg, cameras=split["camtr"])
    b = train_adapter(split["xtr"], split["idtr"], ml, cl, cfg, cameras=split["camtr"])
    other_seed = small_config(epochs=2, seed=1)
    c = train_adapter(split["xtr"], split["idtr"], ml, cl, other_seed, cameras=split["camtr"])
    assert a.losses_per_epoch == b.losses_per_epoch
    assert _weights_equal(a.adapter_state["weights"], b.adapter_state["weights"])
    assert not _weights_equal(a.adapter_state["weights"], c.adapter_state["weights"])
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's global setting is restored
    threads = torch.get_num_threads()
    few = small_config(epochs=1, batch_size=32, num_threads=threads + 1)
    train_adapter(split["xtr"][:32], split["idtr"][:32], [], [], few)  # one step
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("term", ["cluster", "pair", "ua", "gm"])
def test_each_term_alone_trains_with_finite_losses(split: dict[str, np.ndarray], term: str) -> None:
    ml = ml_pairs_across_cameras(split["idtr"], split["camtr"])
    result = train_adapter(split["xtr"], split["idtr"], ml, [(0, 100)], small_config(epochs=2, terms=(term,)))
    assert all(np.isfinite(v) for v in result.losses_per_epoch)
    assert set(result.terms_per_epoch[-1]) == {term, "total"}
    assert result.terms_per_epoch[-1][term] > 0
    initial = Adapter(D, hidden_dim=32).to_state()["weights"]
    assert not _weights_equal(result.adapter_state["weights"], initial)


@pytest.mark.parametrize(
    "labels",
    [np.full(40, -1), np.zeros(40, dtype=int), np.arange(40)],
    ids=["all-outliers", "one-class", "all-singletons"],
)
def test_degenerate_label_sets_stay_finite(labels: np.ndarray) -> None:
    x = np.random.default_rng(4).normal(size=(40, D)).astype(np.float32)
    for outliers in ("exclude", "instance"):
        result = train_adapter(x, labels, [], [], small_config(epochs=2, outliers=outliers))
        assert all(np.isfinite(v) for v in result.losses_per_epoch)
        for weights in result.adapter_state["weights"].values():
            assert torch.isfinite(weights).all()


def test_steps_per_run_are_bounded_whatever_the_pool_size(split: dict[str, np.ndarray]) -> None:
    # 240 rows, 8 anchors per step: 30 steps make a pass, the cap makes it 3 per epoch
    capped = train_adapter(split["xtr"], split["idtr"], [], [],
                           small_config(epochs=2, batch_size=16, max_steps_per_epoch=3))
    assert capped.steps == 6
    full = train_adapter(split["xtr"], split["idtr"], [], [],
                         small_config(epochs=2, batch_size=16, max_steps_per_epoch=None))
    assert full.steps == 60


def test_cluster_cap_keeps_answered_identities_first() -> None:
    from trainer.adapter import _keep_clusters

    labels = np.repeat(np.arange(10), 3)
    labels[-2:] = -1
    answered = np.array([0, 1, 27, 28, 29])  # rows of identities 0 and 9 (rows 28, 29 are outliers)
    kept = _keep_clusters(labels, answered, 4, np.random.default_rng(0))
    assert int(kept.max()) + 1 == 4
    assert (kept[:3] >= 0).all() and kept[27] >= 0  # the answered identities stay
    assert (kept[28:] == -1).all()  # outliers stay outliers
    assert len({int(v) for v in kept[kept >= 0]}) == 4
    same = _keep_clusters(labels, answered, 4, np.random.default_rng(0))
    assert np.array_equal(kept, same)  # seeded
    # members of one identity keep one label
    for identity in range(10):
        assert len(set(kept[labels == identity].tolist())) == 1


def test_cluster_cap_bounds_the_memory_and_is_a_no_op_when_it_does_not_bite(
    split: dict[str, np.ndarray],
) -> None:
    ml = ml_pairs_across_cameras(split["idtr"], split["camtr"])[:5]
    cfg = small_config(epochs=1, batch_size=16, max_steps_per_epoch=None)
    capped = train_adapter(split["xtr"], split["idtr"], ml, [], dataclasses.replace(cfg, max_clusters=5))
    assert capped.steps == 5  # 5 identities x 8 rows walked, 8 anchors per step
    loose = train_adapter(split["xtr"], split["idtr"], ml, [], dataclasses.replace(cfg, max_clusters=30))
    uncapped = train_adapter(split["xtr"], split["idtr"], ml, [], dataclasses.replace(cfg, max_clusters=None))
    assert loose.steps == uncapped.steps == 30
    assert loose.losses_per_epoch == uncapped.losses_per_epoch
    assert _weights_equal(loose.adapter_state["weights"], uncapped.adapter_state["weights"])


def _captions(labels: np.ndarray, n_captions: int, width: int, seed: int = 0) -> np.ndarray:
    """Attribute-like caption features: one of ``n_captions`` per identity, shared by many identities."""
    table = np.random.default_rng(seed).normal(size=(n_captions, width))
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    return table[labels % n_captions].astype(np.float32)


def test_text_features_add_image_text_terms_and_change_the_model(split: dict[str, np.ndarray]) -> None:
    ml = ml_pairs_across_cameras(split["idtr"], split["camtr"])
    texts = _captions(split["idtr"], 6, 16)
    texts[::5] = 0.0  # some images have no caption
    cfg = small_config(epochs=2)
    image_only = train_adapter(split["xtr"], split["idtr"], ml, [], cfg)
    with_text = train_adapter(split["xtr"], split["idtr"], ml, [], cfg, text_features=texts)
    assert image_only.text_dim == 0 and with_text.text_dim == 16
    assert {"text_ua", "text_gm"} <= set(with_text.terms_per_epoch[-1])
    assert all(np.isfinite(v) for v in with_text.losses_per_epoch)
    assert not _weights_equal(image_only.adapter_state["weights"], with_text.adapter_state["weights"])
    # the text head is not part of the served adapter: same architecture, same keys
    assert image_only.adapter_state["weights"].keys() == with_text.adapter_state["weights"].keys()
    again = train_adapter(split["xtr"], split["idtr"], ml, [], cfg, text_features=texts)
    assert _weights_equal(with_text.adapter_state["weights"], again.adapter_state["weights"])  # seeded


def test_no_text_trains_exactly_as_before(split: dict[str, np.ndarray]) -> None:
    cfg = small_config(epochs=2)
    base = train_adapter(split["xtr"], split["idtr"], [], [], cfg)
    empty = np.zeros((split["xtr"].shape[0], 16), dtype=np.float32)
    for result in (
        train_adapter(split["xtr"], split["idtr"], [], [], cfg, text_features=empty),
        train_adapter(split["xtr"], split["idtr"], [], [], dataclasses.replace(cfg, text_terms=()),
                      text_features=_captions(split["idtr"], 6, 16)),
    ):
        assert result.text_dim == 0
        assert result.losses_per_epoch == base.losses_per_epoch
        assert _weights_equal(result.adapter_state["weights"], base.adapter_state["weights"])
    with pytest.raises(ValueError, match="text_features"):
        train_adapter(split["xtr"], split["idtr"], [], [], cfg, text_features=empty[:10])


def test_warm_start_continues_from_init_state(split: dict[str, np.ndarray]) -> None:
    first = train_adapter(split["xtr"], split["idtr"], [], [], small_config(epochs=2))
    frozen = small_config(epochs=1, lr=1e-12, weight_decay=0.0)
    again = train_adapter(split["xtr"], split["idtr"], [], [], frozen, init_state=first.adapter_state)
    x = split["xte"]
    np.testing.assert_allclose(
        apply_adapter(again.adapter_state, x), apply_adapter(first.adapter_state, x), atol=1e-5
    )
    cold = train_adapter(split["xtr"], split["idtr"], [], [], frozen)
    np.testing.assert_allclose(apply_adapter(cold.adapter_state, x), apply_adapter(None, x), atol=1e-5)


def test_partners_prefer_must_links_and_other_cameras() -> None:
    labels = np.repeat(np.arange(10), 10)
    cams = np.tile(np.arange(10) % 2, 10)  # every cluster has both cameras
    ml = np.array([[0, 55]])
    builder = BatchBuilder(
        labels,
        must_link_components(ml, 100),
        ml,
        np.zeros((0, 2), dtype=np.int64),
        cams,
        np.random.default_rng(0),
    )
    anchors = np.arange(100)
    partners = np.stack([builder.partners(anchors) for _ in range(20)])
    same_cluster = labels[partners] == labels[anchors]
    other_camera = cams[partners] != cams[anchors]
    ml_mask = np.zeros(100, dtype=bool)
    ml_mask[[0, 55]] = True
    assert (same_cluster | ml_mask[anchors])[:, ~ml_mask].all()
    assert other_camera[:, ~ml_mask].mean() > 0.9
    assert (partners[:, 0] == 55).mean() > 0.3
    strong, weak, negative = builder.masks(np.array([0, 55, 1, 20]))
    assert strong[0, 1] and not weak[0, 1] and weak[0, 2]
    assert not (weak[0, 3] or strong[0, 3] or negative.any())


def test_cannot_links_become_forced_negatives_between_components() -> None:
    labels = np.zeros(6, dtype=np.int64)
    ml = np.array([[0, 1], [2, 3]])
    cl = np.array([[1, 2]])
    builder = BatchBuilder(labels, must_link_components(ml, 6), ml, cl, None, np.random.default_rng(0))
    strong, weak, negative = builder.masks(np.arange(6))
    assert negative[0, 3] and negative[3, 0] and negative[1, 2]  # whole components are different
    assert not weak[0, 3] and weak[0, 4]
    assert strong[0, 1] and strong[2, 3] and not negative[4, 5]


# ---- bad input ------------------------------------------------------------------------------------------


def test_train_adapter_rejects_bad_input() -> None:
    x = np.random.default_rng(5).normal(size=(10, D)).astype(np.float32)
    labels = np.zeros(10, dtype=int)
    cfg = small_config(epochs=1)
    with pytest.raises(ValueError, match="features"):
        train_adapter(x[0], labels, [], [], cfg)
    with pytest.raises(ValueError, match="at least 2 rows"):
        train_adapter(x[:1], labels[:1], [], [], cfg)
    with pytest.raises(ValueError, match="pseudo_labels"):
        train_adapter(x, labels[:5], [], [], cfg)
    with pytest.raises(ValueError, match="pseudo_labels"):
        train_adapter(x, np.full(10, -2), [], [], cfg)
    with pytest.raises(ValueError, match="pseudo_labels"):
        train_adapter(x, labels.astype(float), [], [], cfg)
    with pytest.raises(ValueError, match="ml_pairs"):
        train_adapter(x, labels, [(0, 10)], [], cfg)
    with pytest.raises(ValueError, match="cl_pairs"):
        train_adapter(x, labels, [], [(3, 3)], cfg)
    with pytest.raises(ValueError, match="cl_pairs"):
        train_adapter(x, labels, [], [(1, 2, 3)], cfg)
    with pytest.raises(ValueError, match="cameras"):
        train_adapter(x, labels, [], [], cfg, cameras=np.zeros(3))
    with pytest.raises(ValueError, match="init_state"):
        train_adapter(x, labels, [], [], cfg, init_state=Adapter(D + 1).to_state())
    with pytest.raises(TypeError, match="config"):
        train_adapter(x, labels, [], [], {"epochs": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", 1),
        ("lr", 0.0),
        ("terms", ("cluster", "triplet")),
        ("terms", ()),
        ("adapter", "transformer"),
        ("outliers", "drop"),
        ("momentum", 1.0),
        ("view_dropout", 1.0),
        ("hard_negatives", 0),
        ("max_steps_per_epoch", 0),
        ("max_clusters", 0),
        ("text_terms", ("ua", "itm")),
        ("text_weight", -1.0),
        ("gm_weight", -1.0),
        ("num_threads", 0),
        ("ua_paired_weight", -0.5),
    ],
)
def test_train_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_tensor_of_shares_writable_memory_and_copies_read_only_arrays() -> None:
    writable = np.ones((3, 2), dtype=np.float32)
    assert np.shares_memory(tensor_of(writable).numpy(), writable)
    read_only = np.ones((3, 2), dtype=np.float32)
    read_only.setflags(write=False)
    copied = tensor_of(read_only)
    assert not np.shares_memory(copied.numpy(), read_only) and torch.equal(copied, torch.ones(3, 2))


def test_read_only_memmap_features_train_and_embed_without_torch_warnings(tmp_path: Path) -> None:
    # The embedding store and the registry hand out read-only memmaps. torch warns once per process,
    # so the check runs in a fresh interpreter with warnings as errors.
    code = f"""
import numpy as np
from trainer.adapter import TrainConfig, apply_adapter, train_adapter
rng = np.random.default_rng(0)
x = rng.normal(size=(40, 16)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
np.save({str(tmp_path / "x.npy")!r}, x)
x = np.load({str(tmp_path / "x.npy")!r}, mmap_mode="r")
assert not x.flags.writeable
result = train_adapter(x, np.repeat(np.arange(8), 5), [(0, 1)], [(0, 5)], TrainConfig(epochs=1))
apply_adapter(result.adapter_state, x)
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_caption_ids_number_distinct_rows_as_numpy_unique_does() -> None:
    from trainer.adapter import _row_ids

    rng = np.random.default_rng(3)
    table = rng.normal(size=(7, 5)).astype(np.float32)
    table[2, 0] = table[4, 0]  # rows sharing a first column are ordered by the next
    rows = table[rng.integers(0, 7, size=200)]
    rows[::9] = 0.0
    rows[1] = -0.0  # a zero row written as -0.0 is the same (empty) caption
    _, expected = np.unique(rows + 0.0, axis=0, return_inverse=True)
    np.testing.assert_array_equal(_row_ids(rows), expected.reshape(-1))
