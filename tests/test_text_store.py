"""The text store: captions embedded by the encoder's text tower, keyed by the text, beside the image
features (the tiny random open_clip model: the real open_clip text path in milliseconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainer.encoders import Encoder, NoTextTowerError, encoder_has_text
from trainer.store import StoreMismatchError
from trainer.text_store import TextStore, clean_text, text_key

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ImageOnly(Encoder):
    """An encoder with no text tower (what mobilenetv2 is), without loading any weights."""

    name = "image-only"
    dim = 4
    device = torch.device("cpu")
    dtype = torch.float32

    def _forward_images(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.flatten(1)[:, : self.dim]


class Counting:
    """Wraps an encoder and records the texts its text tower is asked for."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.name = encoder.name
        self.calls: list[list[str]] = []

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return self.encoder.embed_texts(texts)


def test_texts_are_embedded_once_and_rows_follow_the_items(tmp_path: Path, tiny: Any) -> None:
    store = TextStore(tmp_path / "text")
    counting = Counting(tiny)
    texts = ["red coat", None, "  red coat ", "male, backpack", ""]
    assert store.missing(texts) == ["red coat", "male, backpack"]
    assert store.embed(counting, texts, batch_size=1) == 2  # the same text twice is one row
    assert counting.calls == [["red coat"], ["male, backpack"]]
    assert (store.encoder, store.dim, len(store)) == (tiny.name, tiny.dim, 2)

    feats = store.features_for(texts)
    assert feats is not None and feats.shape == (5, tiny.dim) and feats.dtype == np.float32
    norms = np.linalg.norm(feats, axis=1)
    np.testing.assert_allclose(norms, [1, 0, 1, 1, 0], atol=1e-5)  # zero rows: no text
    np.testing.assert_array_equal(feats[0], feats[2])
    expected = tiny.embed_texts(["red coat", "male, backpack"]).numpy()
    np.testing.assert_allclose(feats[[0, 3]], expected, atol=1e-6)

    # another process (a new object on the same directory) finds them: nothing is embedded again
    again = TextStore(tmp_path / "text", encoder=tiny.name)
    assert again.missing(texts) == [] and again.embed(counting, texts) == 0
    assert len(counting.calls) == 2
    assert "red coat" in again and "blue coat" not in again


def test_a_changed_text_is_embedded_again(tmp_path: Path, tiny: Any) -> None:
    store = TextStore(tmp_path / "text")
    store.embed(tiny, ["red coat", "hat"])
    before = store.features_for(["red coat", "hat"])
    changed = ["blue coat", "hat"]  # the first image's caption was corrected
    assert store.missing(changed) == ["blue coat"]
    assert store.embed(tiny, changed) == 1
    after = store.features_for(changed)
    assert before is not None and after is not None
    assert not np.allclose(after[0], before[0])  # the new caption's features, not the old row
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], tiny.embed_texts(["blue coat"]).numpy()[0], atol=1e-6)
    assert text_key("blue coat") != text_key("red coat") and text_key(" hat ") == text_key("hat")


def test_another_encoder_is_refused(tmp_path: Path, tiny: Any) -> None:
    store = TextStore(tmp_path / "text")
    store.embed(tiny, ["red coat"])
    with pytest.raises(StoreMismatchError, match="encoder"):
        TextStore(tmp_path / "text", encoder="open_clip:ViT-B-32:laion2b_s34b_b79k")

    other = Counting(tiny)
    other.name = "another-clip"
    with pytest.raises(StoreMismatchError, match="another-clip"):
        store.embed(other, ["blue coat"])
    assert other.calls == [] and store.missing(["blue coat"]) == ["blue coat"]


def test_an_image_only_encoder_cannot_embed_text(tmp_path: Path) -> None:
    store = TextStore(tmp_path / "text")
    with pytest.raises(NoTextTowerError, match="image-only"):
        store.embed(ImageOnly(), ["red coat"])
    assert len(store) == 0 and not (tmp_path / "text" / "manifest.json").exists()
    assert not encoder_has_text("mobilenetv2") and not encoder_has_text("mobilenetv2:file=w.pt")
    assert encoder_has_text("open_clip:ViT-B-32:laion2b_s34b_b79k") and encoder_has_text("open_clip_tiny")
    assert not encoder_has_text("synthetic")


def test_no_text_gives_no_features(tmp_path: Path, tiny: Any) -> None:
    store = TextStore(tmp_path / "text")
    assert store.features_for([None, None]) is None  # nothing stored at all
    assert store.missing([None, " ", ""]) == [] and store.embed(tiny, [None, ""]) == 0
    store.embed(tiny, ["red coat"])
    assert store.features_for([None, "   "]) is None  # texts stored, but none of these items has one
    assert store.features_for(["not embedded yet"]) is None
    assert clean_text("  ") is None and clean_text(" a ") == "a"
    with pytest.raises(TypeError, match="text"):
        clean_text(["a"])
    with pytest.raises(ValueError, match="batch_size"):
        store.embed(tiny, ["x"], batch_size=0)


def test_a_writer_that_lost_the_race_appends_only_the_rest(tmp_path: Path, tiny: Any) -> None:
    first, second = TextStore(tmp_path / "text"), TextStore(tmp_path / "text")
    assert second.missing(["red coat", "hat"]) == ["red coat", "hat"]
    first.embed(tiny, ["red coat"])  # another process, meanwhile
    assert second.embed(tiny, ["red coat", "hat"]) == 1  # "red coat" left out, no duplicate-id error
    assert len(TextStore(tmp_path / "text")) == 2
