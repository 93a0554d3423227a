"""extract_embeddings: every image mode, bad files reported not fatal, resumable after interruption."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.encoders import Encoder, create_encoder
from trainer.extraction import ExtractionReport, auto_num_workers, extract_embeddings
from trainer.images import load_rgb, to_rgb
from trainer.store import EmbeddingStore, StoreMismatchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


class Stop(Exception):
    """Raised from on_batch to simulate an interrupted job."""


def _photo(seed: int, size: tuple[int, int] = (48, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 3, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)


def _write_pool(root: Path, n: int, start: int = 0) -> list[tuple[str, str]]:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(start, start + n):
        path = root / f"img{k:03d}.jpg"
        _photo(k).save(path, quality=90)
        items.append((f"id{k:03d}", str(path)))
    return items


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[str, str]], set[str]]:
    """One file per awkward case; returns (items, ids that must fail)."""
    root = tmp_path_factory.mktemp("odd")
    base = _photo(1, (40, 90))
    files: dict[str, Image.Image | bytes | None] = {}
    files["rgb.jpg"] = base
    files["big.png"] = _photo(2, (700, 300))
    files["rgba.png"] = base.convert("RGBA")
    files["la.png"] = base.convert("LA")
    files["grey.png"] = base.convert("L")
    files["bw.png"] = base.convert("1")
    files["palette.png"] = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    files["cmyk.jpg"] = base.convert("CMYK")
    files["grey16.png"] = Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16))
    files["anim.gif"] = None  # written below (two frames)
    good_jpeg = io.BytesIO()
    base.save(good_jpeg, "JPEG")
    files["truncated.jpg"] = good_jpeg.getvalue()[: len(good_jpeg.getvalue()) // 2]
    files["corrupt.jpg"] = b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10
    files["text.png"] = b"hello, I am a text file"
    files["empty.png"] = b""
    items = []
    for name, content in files.items():
        path = root / name
        if name == "anim.gif":
            frames = [Image.new("RGB", (30, 30), (255, 0, 0)), Image.new("RGB", (30, 30), (0, 0, 255))]
            frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            assert content is not None
            content.save(path)
        items.append((name, str(path)))
    items.append(("missing.jpg", str(root / "does_not_exist.jpg")))
    items.append(("a_directory", str(root)))
    bad = {"truncated.jpg", "corrupt.jpg", "text.png", "empty.png", "missing.jpg", "a_directory"}
    return items, bad


# -------------------------------------------------------------------------------------------- decoding


def test_to_rgb_handles_every_mode() -> None:
    grey16 = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert grey16.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(to_rgb(grey16))[0, :, 0], [0, 128, 255])
    int32 = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))
    np.testing.assert_array_equal(np.asarray(to_rgb(int32))[0, :, 0], [0, 100, 255])
    transparent = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([10, 20, 30] * 256)
    assert to_rgb(pal).getpixel((1, 1)) == (10, 20, 30)
    rgb = Image.new("RGB", (1, 1))
    assert to_rgb(rgb) is rgb
    for mode in ("L", "LA", "1", "CMYK", "YCbCr", "I", "F", "RGBA", "P"):
        assert to_rgb(Image.new(mode, (3, 2))).mode == "RGB"


def test_load_rgb_takes_the_first_gif_frame_and_exif_orientation(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    red = load_rgb(tmp_path / "a.gif").getpixel((4, 4))
    assert red[0] > 200 and red[2] < 50
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    Image.new("RGB", (40, 20), (0, 255, 0)).save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_draft_decoding_shrinks_big_jpegs_but_never_below_the_input_size(tmp_path: Path) -> None:
    big = _photo(3, (1600, 1200))
    big.save(tmp_path / "big.jpg", quality=90)
    big.save(tmp_path / "big.png")
    assert load_rgb(tmp_path / "big.jpg").size == (1600, 1200)
    assert load_rgb(tmp_path / "big.jpg", draft_size=224).size == (400, 300)  # 1/4 scale; 1/8 would be < 224
    assert load_rgb(tmp_path / "big.png", draft_size=224).size == (1600, 1200)  # only JPEG has DCT scaling
    small = _photo(4, (300, 500))
    small.save(tmp_path / "small.jpg", quality=90)
    assert load_rgb(tmp_path / "small.jpg", draft_size=224).size == (300, 500)


# ------------------------------------------------------------------------------------------ extraction


def test_every_odd_file_is_embedded_or_reported(
    tmp_path: Path, mobilenet: Encoder, odd_files: tuple[list[tuple[str, str]], set[str]]
) -> None:
    items, bad = odd_files
    store = EmbeddingStore(tmp_path / "store")
    report = extract_embeddings(mobilenet, items, store, batch_size=4, num_workers=1, progress=False)
    good = [i for i, _ in items if i not in bad]
    assert isinstance(report, ExtractionReport)
    assert {i for i, _ in report.failures} == bad and report.n_failed == len(bad)
    assert all(reason for _, reason in report.failures)
    assert "truncated" in dict(report.failures)["truncated.jpg"].lower()
    assert report.n_done == len(good) and report.n_skipped == 0
    assert set(store.ids()) == set(good) and store.encoder == "mobilenetv2" and store.dim == 1280
    feats = np.asarray(store.features())
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert report.seconds > 0 and report.images_per_second > 0
    # a second run skips what is stored and retries (and again reports) the bad files
    again = extract_embeddings(mobilenet, items, store, batch_size=4, num_workers=0, progress=False)
    assert again.n_done == 0 and again.n_skipped == len(good) and {i for i, _ in again.failures} == bad


def test_worker_processes_give_the_same_features_as_in_process(tmp_path: Path, tiny: Encoder) -> None:
    items = _write_pool(tmp_path / "imgs", 10)
    a = EmbeddingStore(tmp_path / "a")
    b = EmbeddingStore(tmp_path / "b")
    extract_embeddings(tiny, items, a, batch_size=3, num_workers=0, progress=False)
    extract_embeddings(tiny, items, b, batch_size=3, num_workers=1, progress=False)
    assert a.ids() == b.ids() == [i for i, _ in items]
    np.testing.assert_array_equal(np.asarray(a.features()), np.asarray(b.features()))
    direct = tiny.embed_pil([load_rgb(p) for _, p in items]).numpy()
    np.testing.assert_allclose(np.asarray(a.features()), direct, atol=1e-6)


def test_resume_after_interruption_processes_only_what_is_missing(tmp_path: Path, tiny: Encoder) -> None:
    items = _write_pool(tmp_path / "imgs", 11)
    store = EmbeddingStore(tmp_path / "store")
    seen: list[tuple[int, int]] = []

    def stop_after_two(done: int, todo: int) -> None:
        seen.append((done, todo))
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        extract_embeddings(tiny, items, store, batch_size=4, num_workers=1, progress=False,
                           on_batch=stop_after_two)
    assert seen == [(4, 11), (8, 11)]
    assert EmbeddingStore(tmp_path / "store").ids() == [i for i, _ in items[:8]]
    calls: list[tuple[int, int]] = []
    report = extract_embeddings(tiny, items, store, batch_size=4, num_workers=0, progress=False,
                                on_batch=lambda d, t: calls.append((d, t)))
    assert report.n_done == 3 and report.n_skipped == 8 and calls == [(3, 3)]
    clean = EmbeddingStore(tmp_path / "clean")
    extract_embeddings(tiny, items, clean, batch_size=5, num_workers=0, progress=False)
    np.testing.assert_allclose(store.vectors(clean.ids()), np.asarray(clean.features()), atol=1e-6)


@pytest.mark.slow  # a fresh interpreter importing torch: ~5-15 s on the shared CPU
def test_resume_after_the_process_is_killed(tmp_path: Path) -> None:
    items = _write_pool(tmp_path / "imgs", 9)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from trainer.encoders import create_encoder
        from trainer.extraction import extract_embeddings
        from trainer.store import EmbeddingStore
        items = {items!r}
        def die(done, todo):
            if done >= 4:
                os._exit(9)  # no cleanup, no finally: like SIGKILL after the second batch
        extract_embeddings(create_encoder("mobilenetv2", precision="fp32", image_size=64), items,
                           EmbeddingStore({str(tmp_path / "store")!r}), batch_size=2, num_workers=1,
                           progress=False, on_batch=die)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 9, proc.stderr[-2000:]
    store = EmbeddingStore(tmp_path / "store")
    assert store.ids() == [i for i, _ in items[:4]]
    mobilenet = create_encoder("mobilenetv2", precision="fp32", image_size=64)
    report = extract_embeddings(mobilenet, items, store, batch_size=2, num_workers=0, progress=False)
    assert report.n_skipped == 4 and report.n_done == 5 and store.ids() == [i for i, _ in items]
    expected = mobilenet.embed_pil([load_rgb(p) for _, p in items]).numpy()
    np.testing.assert_allclose(np.asarray(store.features()), expected, atol=1e-5)


def test_progress_logs_lines_when_not_a_terminal(
    tmp_path: Path, tiny: Encoder, caplog: pytest.LogCaptureFixture
) -> None:
    items = _write_pool(tmp_path / "imgs", 4)
    with caplog.at_level(logging.INFO, logger="trainer.extraction"):
        extract_embeddings(tiny, items, EmbeddingStore(tmp_path / "s"), batch_size=2, num_workers=0)
    messages = [r.getMessage() for r in caplog.records]
    assert any("4/4 images" in m for m in messages), messages


def test_store_of_another_encoder_is_refused(tmp_path: Path, tiny: Encoder) -> None:
    store = EmbeddingStore(tmp_path / "s")
    store.append(["x"], np.ones((1, 1280), dtype=np.float32) / np.sqrt(1280), encoder="mobilenetv2")
    with pytest.raises(StoreMismatchError, match="encoder"):
        extract_embeddings(tiny, _write_pool(tmp_path / "imgs", 1), store, progress=False)
    other = EmbeddingStore(tmp_path / "s2")
    other.append(["x"], np.ones((1, 7), dtype=np.float32) / np.sqrt(7), encoder=tiny.name)
    with pytest.raises(StoreMismatchError, match="dim"):
        extract_embeddings(tiny, _write_pool(tmp_path / "imgs", 1), other, progress=False)


def test_bad_arguments_are_rejected(tmp_path: Path, tiny: Encoder) -> None:
    store = EmbeddingStore(tmp_path / "s")
    items = _write_pool(tmp_path / "imgs", 2)
    with pytest.raises(ValueError, match="batch_size"):
        extract_embeddings(tiny, items, store, batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        extract_embeddings(tiny, items, store, num_workers=-1)
    with pytest.raises(ValueError, match="items: duplicate image id 'id000'"):
        extract_embeddings(tiny, [items[0], items[0]], store)
    with pytest.raises(ValueError, match=r"items\[0\]"):
        extract_embeddings(tiny, [("only-one",)], store)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"items\[1\]: image id"):
        extract_embeddings(tiny, [items[0], (5, items[1][1])], store)  # type: ignore[list-item]
    assert len(store) == 0
    empty = extract_embeddings(tiny, [], store)
    assert empty.n_done == 0 and empty.failures == []


def test_auto_num_workers() -> None:
    assert auto_num_workers(1) == 0
    assert 1 <= auto_num_workers(100) <= 8
    assert auto_num_workers(2) <= 2


def test_non_finite_features_are_reported_not_stored(tmp_path: Path, tiny: Encoder,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    items = _write_pool(tmp_path / "imgs", 3)
    real = tiny.embed

    def poisoned(batch: torch.Tensor) -> torch.Tensor:
        out = real(batch)
        out[1] = float("nan")
        return out

    monkeypatch.setattr(tiny, "embed", poisoned)
    store = EmbeddingStore(tmp_path / "s")
    report = extract_embeddings(tiny, items, store, batch_size=3, num_workers=0, progress=False)
    assert report.failures == [("id001", "non-finite features")]
    assert store.ids() == ["id000", "id002"]


def test_a_failing_store_write_stops_the_run_with_earlier_batches_kept(
    tmp_path: Path, tiny: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _write_pool(tmp_path / "imgs", 9)
    store = EmbeddingStore(tmp_path / "s")
    real = store.append
    calls: list[int] = []

    def flaky(ids: list[str], feats: np.ndarray, *, encoder: str | None = None) -> None:
        calls.append(len(ids))
        if len(calls) == 2:
            raise OSError("No space left on device")
        real(ids, feats, encoder=encoder)

    monkeypatch.setattr(store, "append", flaky)
    with pytest.raises(OSError, match="No space left"):
        extract_embeddings(tiny, items, store, batch_size=3, num_workers=0, progress=False)
    assert EmbeddingStore(tmp_path / "s").ids() == [i for i, _ in items[:3]]
