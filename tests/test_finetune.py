"""Full fine-tuning of the visual tower on a tiny open_clip (and a small MobileNetV2), CPU only."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.encoders import OpenClipEncoder, create_encoder, encoder_from_spec
from trainer.finetune import (
    FinetuneConfig,
    FinetuneResult,
    ImageDecodeError,
    finetune_encoder,
    save_checkpoint,
    visual_tower,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_IDS, PER_ID = 4, 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Clearly separable identities: each a distinct colour layout (quadrants), with pixel noise."""
    root = tmp_path_factory.mktemp("finetune_images")
    rng = np.random.default_rng(0)
    items, labels = [], []
    for ident in range(N_IDS):
        base = rng.integers(0, 256, size=(2, 2, 3)).astype(np.int64)
        layout = np.kron(base, np.ones((16, 16, 1), dtype=np.int64))
        for k in range(PER_ID):
            arr = np.clip(layout + rng.integers(-25, 26, size=layout.shape), 0, 255).astype(np.uint8)
            path = root / f"id{ident}_{k}.png"
            Image.fromarray(arr, "RGB").save(path)
            items.append((f"id{ident}_{k}", str(path)))
            labels.append(ident)
    return items, np.asarray(labels, dtype=np.int64)


@pytest.fixture()
def encoder(tiny: OpenClipEncoder) -> OpenClipEncoder:
    """A fresh copy per test: fine-tuning works in place."""
    return copy.deepcopy(tiny)


def _config(**overrides: object) -> FinetuneConfig:
    params: dict[str, object] = {"epochs": 3, "batch_size": 12, "lr": 1e-3, "num_workers": 0, "seed": 0,
                                 "device": "cpu"}
    params.update(overrides)
    return FinetuneConfig(**params)  # type: ignore[arg-type]


def _batch(encoder: OpenClipEncoder, items: list[tuple[str, str]]) -> torch.Tensor:
    return torch.stack([encoder.preprocess(Image.open(p).convert("RGB")) for _, p in items])


ML = [(0, 1), (6, 7)]
CL = [(0, 6), (12, 18)]


def test_loss_falls_on_separable_identities(encoder: OpenClipEncoder, dataset: tuple) -> None:
    items, labels = dataset
    result = finetune_encoder(encoder, items, labels, ML, CL, _config(epochs=4))
    assert isinstance(result, FinetuneResult)
    assert len(result.losses_per_epoch) == 4
    assert all(np.isfinite(result.losses_per_epoch))
    assert result.losses_per_epoch[-1] < 0.5 * result.losses_per_epoch[0]
    assert set(result.terms_per_epoch[0]) == {"cluster", "pair", "total"}
    assert result.device == "cpu" and result.precision == "fp32"
    assert result.n_images == len(items) and result.steps == 4 * 4  # 24 rows, 6 anchors a step
    # the fine-tuned embedding separates the identities: nearest neighbour of every image shares its label
    emb = encoder.embed(_batch(encoder, items)).numpy()
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    assert (labels[sim.argmax(axis=1)] == labels).mean() == 1.0


def test_gradients_reach_visual_tower_and_text_tower_is_untouched(
    encoder: OpenClipEncoder, dataset: tuple
) -> None:
    items, labels = dataset
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    finetune_encoder(encoder, items, labels, ML, CL, _config(epochs=1))
    after = encoder.model.state_dict()
    visual = [k for k in before if k.startswith("visual.")]
    other = [k for k in before if not k.startswith("visual.")]
    assert visual and other
    changed = [k for k in visual if not torch.equal(before[k], after[k])]
    assert len(changed) >= 0.9 * len(visual), sorted(set(visual) - set(changed))
    assert "visual.conv1.weight" in changed and "visual.proj" in changed
    for k in other:  # text transformer, token embedding, logit_scale
        assert torch.equal(before[k], after[k]), k
    assert not any(p.requires_grad for p in encoder.model.parameters())  # frozen again afterwards
    assert not encoder.model.training


def test_seeded_runs_are_identical_and_seeds_differ(tiny: OpenClipEncoder, dataset: tuple) -> None:
    items, labels = dataset
    runs = []
    for seed in (0, 0, 1):
        enc = copy.deepcopy(tiny)
        result = finetune_encoder(enc, items, labels, ML, CL, _config(epochs=2, seed=seed))
        assert result.state_dict is not None
        runs.append(result)
    a, b, c = runs
    assert a.losses_per_epoch == b.losses_per_epoch
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.losses_per_epoch != c.losses_per_epoch


def test_decode_workers_give_the_same_run(tiny: OpenClipEncoder, dataset: tuple) -> None:
    """Batches are drawn in the main process: DataLoader workers only decode."""
    items, labels = dataset
    serial = finetune_encoder(copy.deepcopy(tiny), items, labels, ML, CL, _config(epochs=1))
    workers = finetune_encoder(copy.deepcopy(tiny), items, labels, ML, CL,
                               _config(epochs=1, num_workers=2))
    assert serial.losses_per_epoch == workers.losses_per_epoch


def test_checkpoint_round_trip_matches_the_model_in_memory(
    encoder: OpenClipEncoder, dataset: tuple, tmp_path: Path
) -> None:
    items, labels = dataset
    batch = _batch(encoder, items)
    original = encoder.embed(batch)
    path = tmp_path / "ckpt" / "finetuned.pt"
    result = finetune_encoder(encoder, items, labels, ML, CL, _config(epochs=2), checkpoint=path)
    assert result.checkpoint == path and path.is_file() and result.state_dict is None
    tuned = encoder.embed(batch)
    assert not torch.allclose(tuned, original, atol=1e-3)
    loaded = encoder_from_spec("open_clip_tiny", checkpoint=path, device="cpu", precision="fp32")
    torch.testing.assert_close(loaded.embed(batch), tuned, rtol=0, atol=1e-6)
    # text tower came through unchanged
    torch.testing.assert_close(loaded.embed_texts(["a person"]), encoder.embed_texts(["a person"]))
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_seed004_terms_and_outlier_instances(encoder: OpenClipEncoder, dataset: tuple) -> None:
    items, labels = dataset
    noisy = labels.copy()
    noisy[::5] = -1
    result = finetune_encoder(encoder, items, noisy, ML, CL,
                              _config(epochs=2, terms=("cluster", "pair", "ua", "gm"), outliers="instance"))
    assert set(result.terms_per_epoch[-1]) == {"cluster", "pair", "ua", "gm", "total"}
    assert all(np.isfinite(v) for t in result.terms_per_epoch for v in t.values())
    assert result.terms_per_epoch[0]["ua"] > 0 and result.terms_per_epoch[0]["gm"] > 0


def test_pairs_alone_train_when_every_row_is_an_outlier(encoder: OpenClipEncoder, dataset: tuple) -> None:
    items, _ = dataset
    outliers = np.full(len(items), -1, dtype=np.int64)
    result = finetune_encoder(encoder, items, outliers, ML, CL, _config(epochs=1))
    assert set(result.terms_per_epoch[0]) == {"cluster", "pair", "total"}
    assert result.terms_per_epoch[0]["cluster"] == 0.0 and result.terms_per_epoch[0]["pair"] > 0
    with pytest.raises(ValueError, match="nothing to train on"):
        finetune_encoder(encoder, items, outliers, [], [], _config(epochs=1))


def test_mobilenetv2_backbone_trains_with_frozen_batchnorm_stats(dataset: tuple, tmp_path: Path) -> None:
    items, labels = dataset
    enc = create_encoder("mobilenetv2", precision="fp32", device="cpu", image_size=32)
    assert visual_tower(enc) is enc.model
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    path = tmp_path / "mnv2.pt"
    finetune_encoder(enc, items[:12], labels[:12], [], [], _config(epochs=1, max_steps_per_epoch=1, lr=1e-4),
                     checkpoint=path)
    after = enc.model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in before if k.endswith("weight")]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in weights)
    loaded = encoder_from_spec("mobilenetv2", checkpoint=path, device="cpu", precision="fp32", image_size=32)
    batch = torch.stack([enc.preprocess(Image.open(p)) for _, p in items[:4]])
    torch.testing.assert_close(loaded.embed(batch), enc.embed(batch), rtol=0, atol=1e-5)


def test_save_checkpoint_errors(encoder: OpenClipEncoder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path"):
        save_checkpoint(encoder, tmp_path)
    with pytest.raises(TypeError, match="encoder"):
        save_checkpoint(object(), tmp_path / "x.pt")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("batch_size", 1), ("lr", 0.0), ("terms", ("cluster", "nope")), ("terms", ()),
     ("momentum", 1.0), ("max_steps_per_epoch", 0), ("num_workers", -1), ("weight_decay", -1.0),
     ("outliers", "drop"), ("max_grad_norm", 0.0), ("device", ""), ("num_threads", 0)],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**{field: value})  # type: ignore[arg-type]


def test_bad_inputs_name_the_argument(encoder: OpenClipEncoder, dataset: tuple, tmp_path: Path) -> None:
    items, labels = dataset
    cfg = _config(epochs=1)
    with pytest.raises(TypeError, match="encoder"):
        finetune_encoder("open_clip_tiny", items, labels, [], [], cfg)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config"):
        finetune_encoder(encoder, items, labels, [], [], {"epochs": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="items"):
        finetune_encoder(encoder, items[:1], labels[:1], [], [], cfg)
    with pytest.raises(TypeError, match="items"):
        finetune_encoder(encoder, "images/", labels, [], [], cfg)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"items\[1\]"):
        finetune_encoder(encoder, [items[0], ("only-id",)], labels[:2], [], [], cfg)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="duplicate"):
        finetune_encoder(encoder, [items[0], items[0]], labels[:2], [], [], cfg)
    with pytest.raises(FileNotFoundError, match=r"items\[1\]"):
        finetune_encoder(encoder, [items[0], ("ghost", str(tmp_path / "ghost.png"))], labels[:2], [], [], cfg)
    with pytest.raises(ValueError, match="pseudo_labels"):
        finetune_encoder(encoder, items, labels[:-1], [], [], cfg)
    with pytest.raises(ValueError, match="pseudo_labels"):
        finetune_encoder(encoder, items, labels.astype(float), [], [], cfg)
    with pytest.raises(ValueError, match="ml_pairs"):
        finetune_encoder(encoder, items, labels, [(0, len(items))], [], cfg)
    with pytest.raises(ValueError, match="cl_pairs"):
        finetune_encoder(encoder, items, labels, [], [(3, 3)], cfg)
    with pytest.raises(ValueError, match="checkpoint"):
        finetune_encoder(encoder, items, labels, [], [], cfg, checkpoint=tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            finetune_encoder(encoder, items, labels, [], [], _config(device="cuda"))


def test_undecodable_image_is_named(encoder: OpenClipEncoder, dataset: tuple, tmp_path: Path) -> None:
    items, labels = dataset
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad_items = [*items[:-1], ("broken", str(broken))]
    with pytest.raises(ImageDecodeError, match=r"items\[23\].*broken.png"):
        finetune_encoder(encoder, bad_items, labels, [], [], _config(epochs=1))


def test_reduced_precision_encoder_is_trained_in_fp32_with_a_warning(
    encoder: OpenClipEncoder, dataset: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    """A bf16 inference copy is promoted to fp32 master weights (and the caller told about the rounding)."""
    items, labels = dataset
    encoder.model.to(torch.bfloat16)
    encoder.dtype = torch.bfloat16
    with caplog.at_level("WARNING", logger="trainer.finetune"):
        result = finetune_encoder(encoder, items, labels, ML, CL, _config(epochs=1), progress=True)
    assert "precision='fp32'" in caplog.text
    assert encoder.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in encoder.model.parameters())
    assert "fine-tuned" in encoder.precision_note
    assert np.isfinite(result.losses_per_epoch).all()
    assert encoder.embed(_batch(encoder, items[:2])).dtype == torch.float32
