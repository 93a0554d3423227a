"""Simulator datasets: the synthetic generator's structure, and loaders rejecting malformed input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.simulate.datasets import (
    ORL_EXTENSIONS,
    SyntheticReID,
    embed_folder,
    load_dataset,
    load_image_folder,
    load_npz,
    make_synthetic,
    orl_root,
    save_npz,
    scan_identity_folder,
    validate_dataset,
)

SMALL = {"n_identities": 30, "dim": 32, "identity_dim": 12, "nuisance_dim": 8, "random_state": 3}


# ------------------------------------------------------------------------------------------ synthetic
def test_synthetic_is_seeded_and_normalised() -> None:
    a, b = make_synthetic(**SMALL), make_synthetic(**SMALL)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = make_synthetic(**{**SMALL, "random_state": 4})
    assert a.features.shape != c.features.shape or not np.array_equal(a.features, c.features)
    assert a.features.dtype == np.float32 and a.features.shape[1] == 32
    np.testing.assert_allclose(np.linalg.norm(a.features, axis=1), 1.0, atol=1e-5)
    assert a.n_identities == 30


def test_synthetic_structure_long_tail_cameras_tracklets() -> None:
    ds = SyntheticReID(
        n_identities=200, min_images=3, max_images=50, tail_exponent=1.2, random_state=0
    ).generate()
    counts = np.bincount(ds.labels)
    assert counts.min() >= 3 and counts.max() <= 50
    assert counts.max() >= 4 * np.median(counts)  # long tail: a few identities dominate
    assert ds.cameras is not None and ds.tracklets is not None
    for ident in range(50):
        assert np.unique(ds.cameras[ds.labels == ident]).size >= 2  # matchable across cameras
    for t in np.unique(ds.tracklets)[:100]:
        rows = ds.tracklets == t
        assert np.unique(ds.labels[rows]).size == 1 and np.unique(ds.cameras[rows]).size == 1


def test_synthetic_tracklet_frames_are_near_duplicates() -> None:
    ds = make_synthetic(**{**SMALL, "n_identities": 60, "occlusion_rate": 0.0})
    sims = ds.features @ ds.features.T
    same_track = (ds.tracklets[:, None] == ds.tracklets[None, :]) & ~np.eye(ds.n, dtype=bool)
    same_id_other_track = (ds.labels[:, None] == ds.labels[None, :]) & ~same_track & ~np.eye(ds.n, dtype=bool)
    different = ds.labels[:, None] != ds.labels[None, :]
    assert sims[same_track].mean() > sims[same_id_other_track].mean() > sims[different].mean() + 0.1


def test_synthetic_occlusion_and_camera_knobs_take_effect() -> None:
    clean = make_synthetic(**{**SMALL, "occlusion_rate": 0.0})
    occluded = make_synthetic(**{**SMALL, "occlusion_rate": 0.5})
    assert clean.meta["n_occluded"] == 0
    assert 0.35 * occluded.n < occluded.meta["n_occluded"] < 0.65 * occluded.n

    def camera_bias(ds: object) -> float:
        # how much more similar two different identities look when seen by the same camera
        f, y, c = ds.features, ds.labels, ds.cameras  # type: ignore[attr-defined]
        s = f @ f.T
        diff = y[:, None] != y[None, :]
        same_cam = c[:, None] == c[None, :]
        return float(s[diff & same_cam].mean() - s[diff & ~same_cam].mean())

    assert camera_bias(make_synthetic(**{**SMALL, "camera_shift": 1.0})) > 0.1
    assert abs(camera_bias(make_synthetic(**{**SMALL, "camera_shift": 0.0}))) < 0.05


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("n_identities", 1),
        ("min_images", 1),
        ("max_images", 2),
        ("identity_dim", 999),
        ("occlusion_rate", 1.5),
        ("camera_shift", -0.1),
        ("tracklet_length", 0.5),
        ("tail_exponent", 0.0),
        ("n_cameras", 0),
    ],
)
def test_synthetic_rejects_bad_knobs_naming_them(knob: str, value: float) -> None:
    with pytest.raises(ValueError, match=knob):
        make_synthetic(**{**SMALL, knob: value})


def test_make_synthetic_rejects_unknown_knob() -> None:
    with pytest.raises(TypeError, match="n_people"):
        make_synthetic(n_people=3)


# ------------------------------------------------------------------------------------------ npz
def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_npz_round_trip_keeps_every_field(tmp_path: Path) -> None:
    ds = make_synthetic(**SMALL)
    back = load_npz(save_npz(ds, tmp_path / "d.npz"))
    np.testing.assert_allclose(back.features, ds.features, atol=1e-6)
    np.testing.assert_array_equal(back.labels, ds.labels)
    np.testing.assert_array_equal(back.cameras, ds.cameras)
    np.testing.assert_array_equal(back.tracklets, ds.tracklets)
    assert back.names == ds.names and back.name == "d"


def test_npz_accepts_string_labels_and_normalises(tmp_path: Path) -> None:
    feats = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, 2.0]])
    ds = load_npz(
        _write_npz(tmp_path / "s.npz", features=feats, labels=np.array(["zebra", "ant", "zebra", "ant"]))
    )
    assert ds.identity_names == ["ant", "zebra"]
    np.testing.assert_array_equal(ds.labels, [1, 0, 1, 0])
    np.testing.assert_allclose(np.linalg.norm(ds.features, axis=1), 1.0, atol=1e-6)
    assert ds.cameras is None and ds.tracklets is None


def test_npz_missing_keys_named(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="labels"):
        load_npz(_write_npz(tmp_path / "m.npz", features=np.ones((4, 2))))
    with pytest.raises(KeyError, match="features"):
        load_npz(_write_npz(tmp_path / "m2.npz", labels=np.arange(4)))


@pytest.mark.parametrize("key", ["labels", "cameras", "tracklets", "names"])
def test_npz_length_mismatch_named(tmp_path: Path, key: str) -> None:
    rng = np.random.default_rng(0)
    arrays = {"features": rng.standard_normal((6, 3)), "labels": np.array([0, 0, 1, 1, 2, 2])}
    arrays[key] = np.array(["a", "b", "c"]) if key == "names" else np.arange(5)
    with pytest.raises(ValueError, match=f"{key}: length"):
        load_npz(_write_npz(tmp_path / "x.npz", **arrays))


def test_npz_rejects_one_image_per_identity(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one image per identity only"):
        load_npz(_write_npz(tmp_path / "o.npz", features=np.eye(4), labels=np.arange(4)))


def test_npz_rejects_bad_features(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="features: expected a 2-D"):
        load_npz(_write_npz(tmp_path / "a.npz", features=np.ones(4), labels=np.array([0, 0, 1, 1])))
    bad = np.ones((4, 2))
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_npz(_write_npz(tmp_path / "b.npz", features=bad, labels=np.array([0, 0, 1, 1])))
    with pytest.raises(ValueError, match="all-zero"):
        load_npz(_write_npz(tmp_path / "c.npz", features=np.zeros((4, 2)), labels=np.array([0, 0, 1, 1])))
    with pytest.raises(ValueError, match="at least 2 identities"):
        validate_dataset(np.eye(3), np.zeros(3))


def test_npz_not_a_file_or_not_npz(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="path"):
        load_npz(tmp_path / "nope.npz")
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_npz(garbage)


# ------------------------------------------------------------------------------------------ folders
def _make_folder(root: Path, layout: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for ident, count in layout.items():
        (root / ident).mkdir(parents=True)
        for k in range(count):
            arr = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / ident / f"{k}.png")
    (root / "README.txt").write_text("not an identity folder")
    return root


def _fake_embedder(items: list[tuple[str, Path]], store_dir: Path) -> np.ndarray:
    """Mean colour per image: a real function of the pixels, so the cache test can see stale data."""
    return np.vstack(
        [np.asarray(Image.open(p), dtype=np.float32).reshape(-1, 3).mean(0) + 1.0 for _, p in items]
    )


def test_scan_identity_folder_layout(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", {"b": 2, "a": 3, "c": 1})
    items = scan_identity_folder(root)
    assert [i for i, _ in items] == ["a", "a", "a", "b", "b", "c"]
    assert all(p.suffix == ".png" for _, p in items)


def test_folder_rejects_one_image_per_identity(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", {"a": 1, "b": 1, "c": 1})
    with pytest.raises(ValueError, match="one image per identity only"):
        scan_identity_folder(root)


def test_folder_rejects_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root"):
        scan_identity_folder(tmp_path / "missing")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(flat / "x.png")
    with pytest.raises(ValueError, match="no images found"):
        scan_identity_folder(flat)
    single = _make_folder(tmp_path / "single", {"only": 4})
    with pytest.raises(ValueError, match="at least 2 identity folders"):
        scan_identity_folder(single)


def test_folder_embeds_once_then_hits_cache(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", {"a": 3, "b": 2})
    calls: list[int] = []

    def embedder(items: list[tuple[str, Path]], store_dir: Path) -> np.ndarray:
        calls.append(len(items))
        return _fake_embedder(items, store_dir)

    ds = load_image_folder(root, encoder="fake", cache_dir=tmp_path / "cache", embedder=embedder)
    assert ds.n == 5 and ds.identity_names == ["a", "b"] and ds.names[0] == "a/0.png"
    assert ds.meta["cache_hit"] is False
    again = load_image_folder(root, encoder="fake", cache_dir=tmp_path / "cache", embedder=embedder)
    assert again.meta["cache_hit"] is True and calls == [5]
    np.testing.assert_array_equal(ds.features, again.features)
    # another encoder or another file list is another cache entry
    load_image_folder(root, encoder="fake2", cache_dir=tmp_path / "cache", embedder=embedder)
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(root / "b" / "9.png")
    grown = load_image_folder(root, encoder="fake", cache_dir=tmp_path / "cache", embedder=embedder)
    assert grown.n == 6 and calls == [5, 5, 6]


def test_embed_folder_rejects_wrong_row_count(tmp_path: Path) -> None:
    items = scan_identity_folder(_make_folder(tmp_path / "imgs", {"a": 2, "b": 2}))
    with pytest.raises(RuntimeError, match="3 rows for 4 images"):
        embed_folder(items, encoder="bad", cache_dir=tmp_path / "c", embedder=lambda it, d: np.ones((3, 2)))


def test_orl_ships_400_faces_of_40_people() -> None:
    items = scan_identity_folder(orl_root(), extensions=ORL_EXTENSIONS)
    assert len(items) == 400
    assert len({ident for ident, _ in items}) == 40


def test_load_dataset_dispatch_and_errors(tmp_path: Path) -> None:
    ds = load_dataset("synthetic", synthetic_params=SMALL)
    assert ds.name == "synthetic"
    path = save_npz(ds, tmp_path / "d.npz")
    assert load_dataset("npz", path=path).n == ds.n
    with pytest.raises(ValueError, match="path"):
        load_dataset("npz")
    with pytest.raises(ValueError, match="unknown kind"):
        load_dataset("imagenet")


@pytest.mark.slow
def test_folder_with_real_mobilenetv2(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    ds = load_image_folder(root, encoder="mobilenetv2", cache_dir=tmp_path / "cache")
    assert ds.features.shape == (4, 1280)
    np.testing.assert_allclose(np.linalg.norm(ds.features, axis=1), 1.0, atol=1e-4)
