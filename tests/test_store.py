"""EmbeddingStore: append-only memmapped rows, manifest commit point, recovery, identity checks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from trainer.files import write_json_atomic
from trainer.store import (
    FEATURES_FILE,
    IDS_FILE,
    MANIFEST_FILE,
    EmbeddingStore,
    StoreMismatchError,
)

REPO = Path(__file__).resolve().parents[1]


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_append_and_read_back(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path / "s")
    assert len(store) == 0 and store.ids() == [] and store.features().shape == (0, 0)
    a, b = _unit(3, 8, 0), _unit(2, 8, 1)
    store.append(["a0", "a1", "a2"], a, encoder="enc")
    store.append(["b0", "b1"], b)
    assert len(store) == 5 and store.ids() == ["a0", "a1", "a2", "b0", "b1"]
    assert store.encoder == "enc" and store.dim == 8
    assert store.row("b0") == 3 and "a1" in store and "zz" not in store
    np.testing.assert_array_equal(store.rows(["b1", "a0"]), [4, 0])
    assert store.rows(["b1"]).dtype == np.int64
    feats = store.features()
    assert isinstance(feats, np.memmap) and not feats.flags.writeable and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, np.vstack([a, b]))
    np.testing.assert_array_equal(store.vectors(["b0", "a2"]), np.vstack([b[0], a[2]]))
    assert store.missing(["a0", "new1", "b1", "new2", "new1"]) == ["new1", "new2"]
    manifest = json.loads((tmp_path / "s" / MANIFEST_FILE).read_text())
    assert manifest["encoder"] == "enc" and manifest["dim"] == 8 and manifest["n_rows"] == 5


def test_reopen_sees_the_same_rows(tmp_path: Path) -> None:
    feats = _unit(4, 5, 2)
    ids = ["x/1.jpg", "x/2.jpg", "ünïcode ✓", "line\nbreak \"quoted\""]
    EmbeddingStore(tmp_path).append(ids, feats, encoder="e")
    again = EmbeddingStore(tmp_path, encoder="e", dim=5)
    assert again.ids() == ids and again.row("line\nbreak \"quoted\"") == 3
    np.testing.assert_array_equal(again.features(), feats)


def test_other_handle_sees_appends_after_refresh(tmp_path: Path) -> None:
    writer = EmbeddingStore(tmp_path)
    reader = EmbeddingStore(tmp_path)
    writer.append(["a"], _unit(1, 3, 0), encoder="e")
    assert len(reader) == 0
    reader.refresh()
    assert reader.ids() == ["a"] and reader.dim == 3
    reader.append(["b"], _unit(1, 3, 1))  # a second writer continues after the first one's rows
    writer.refresh()
    assert writer.ids() == ["a", "b"]


def test_rows_and_row_name_the_missing_ids(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path)
    store.append(["a"], _unit(1, 3, 0))
    with pytest.raises(KeyError, match="'nope'"):
        store.row("nope")
    with pytest.raises(KeyError, match="1 image id"):
        store.rows(["a", "ghost"])


def test_bad_appends_are_rejected_and_change_nothing(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path)
    store.append(["a", "b"], _unit(2, 4, 0), encoder="e")
    before = (tmp_path / FEATURES_FILE).read_bytes()
    with pytest.raises(ValueError, match="already stored"):
        store.append(["c", "a"], _unit(2, 4, 1))
    with pytest.raises(ValueError, match="duplicates"):
        store.append(["c", "c"], _unit(2, 4, 1))
    with pytest.raises(ValueError, match=r"shape \(1, dim\)"):
        store.append(["c"], _unit(2, 4, 1))
    with pytest.raises(ValueError, match="3 columns"):
        store.append(["c"], _unit(1, 3, 1))
    nan = _unit(1, 4, 1)
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.append(["c"], nan)
    with pytest.raises(TypeError, match="image_ids"):
        store.append([3], _unit(1, 4, 1))  # type: ignore[list-item]
    with pytest.raises(TypeError, match="float"):
        store.append(["c"], np.ones((1, 4), dtype=np.int64))
    with pytest.raises(StoreMismatchError, match="encoder"):
        store.append(["c"], _unit(1, 4, 1), encoder="other")
    assert len(store) == 2 and (tmp_path / FEATURES_FILE).read_bytes() == before
    assert len(EmbeddingStore(tmp_path)) == 2
    store.append([], np.zeros((0, 4), dtype=np.float32))  # no-op
    assert len(store) == 2


def test_encoder_and_dim_mismatch_on_open(tmp_path: Path) -> None:
    EmbeddingStore(tmp_path).append(["a"], _unit(1, 4, 0), encoder="mobilenetv2")
    with pytest.raises(StoreMismatchError, match="encoder"):
        EmbeddingStore(tmp_path, encoder="open_clip:ViT-B-32:laion2b_s34b_b79k")
    with pytest.raises(StoreMismatchError, match="dim"):
        EmbeddingStore(tmp_path, dim=512)
    with pytest.raises(ValueError, match="dim must be a positive int"):
        EmbeddingStore(tmp_path, dim=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="root"):
        EmbeddingStore(tmp_path / "file")


def test_uncommitted_tail_is_invisible_and_truncated(tmp_path: Path) -> None:
    """A writer killed after writing rows/ids but before the manifest: readers never see that tail."""
    store = EmbeddingStore(tmp_path)
    first = _unit(2, 4, 0)
    store.append(["a", "b"], first, encoder="e")
    with open(tmp_path / FEATURES_FILE, "ab") as fh:
        fh.write(_unit(3, 4, 9).tobytes() + b"\x01\x02")  # half-written rows
    with open(tmp_path / IDS_FILE, "a") as fh:
        fh.write('"ghost1"\n"ghost2"\n"gho')
    reopened = EmbeddingStore(tmp_path)
    assert reopened.ids() == ["a", "b"]
    np.testing.assert_array_equal(reopened.features(), first)
    second = _unit(1, 4, 5)
    reopened.append(["c"], second)
    final = EmbeddingStore(tmp_path)
    assert final.ids() == ["a", "b", "c"]
    np.testing.assert_array_equal(final.features(), np.vstack([first, second]))
    assert (tmp_path / FEATURES_FILE).stat().st_size == 3 * 4 * 4
    assert len((tmp_path / IDS_FILE).read_text().splitlines()) == 3


def test_corrupt_manifest_is_a_clear_error(tmp_path: Path) -> None:
    EmbeddingStore(tmp_path).append(["a"], _unit(1, 2, 0))
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        EmbeddingStore(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="unsupported format"):
        EmbeddingStore(tmp_path)


def test_write_json_atomic_leaves_no_temp_files(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    write_json_atomic(tmp_path / "m.json", {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_two_processes_appending_concurrently(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from trainer.store import EmbeddingStore
        tag = sys.argv[1]
        store = EmbeddingStore({str(tmp_path)!r})
        for k in range(25):
            store.append([f"{{tag}}-{{k}}"], np.full((1, 6), float(k), dtype=np.float32), encoder="e")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, tag]) for tag in ("p", "q")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = EmbeddingStore(tmp_path)
    assert len(store) == 50 and len(set(store.ids())) == 50
    feats = store.features()
    for image_id in store.ids():
        k = float(image_id.split("-")[1])
        np.testing.assert_array_equal(feats[store.row(image_id)], np.full(6, k, dtype=np.float32))
