"""Attribute captions for the real sets: what they say, their features, and that they reach a cycle."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from trainer.simulate import main
from trainer.simulate.captions import CAPTION_DIM, caption_for, embed_captions, icon_contexts, with_captions
from trainer.simulate.datasets import make_synthetic, validate_dataset
from trainer.simulate.runner import SimulationConfig, run_simulation


@pytest.mark.parametrize(
    ("set_name", "identity", "caption"),
    [
        ("glyphs-plain", "U0041", "latin capital letter"),
        ("glyphs-mixed", "U00E9", "latin small letter, acute"),
        ("glyphs-plain", "U03B1", "greek small letter"),
        ("glyphs-plain", "U0031", "digit"),
        ("glyphs-plain", "U2190", "arrow"),
        ("glyphs-plain", "U2200", "math symbol"),
        ("glyphs-plain", "U0021", "punctuation"),
    ],
)
def test_captions_describe_attributes_not_the_individual(set_name: str, identity: str, caption: str) -> None:
    assert caption_for(set_name, identity) == caption


def test_icon_captions_are_the_context_and_a_shared_first_word() -> None:
    shared = frozenset({"folder"})
    assert caption_for("icons", "folder-music", context="places", shared_words=shared) == "places, folder"
    assert caption_for("icons", "gimp", context="apps", shared_words=shared) == "apps"


def test_caption_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="identity_name"):
        caption_for("glyphs-plain", "A")
    with pytest.raises(ValueError, match="set_name"):
        caption_for("synthetic", "id0001")
    with pytest.raises(ValueError, match="context"):
        caption_for("icons", "folder-music")


def test_caption_features_share_what_captions_share() -> None:
    f = embed_captions(["latin small letter", "latin small letter", "latin capital letter", "arrow", ""])
    assert f.shape == (5, CAPTION_DIM) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f[:4], axis=1), 1.0, atol=1e-6)
    assert not f[4].any()  # no caption: a zero row
    np.testing.assert_array_equal(f[0], f[1])
    assert f[0] @ f[2] > 0.5 > abs(float(f[0] @ f[3]))  # two shared words of three vs none


def _icon_set() -> object:
    rng = np.random.default_rng(0)
    names = ["folder-music", "folder-videos", "media-playback-start", "media-record", "edit-copy", "edit-cut"]
    labels = np.repeat(np.arange(len(names)), 4)
    x = rng.normal(size=(labels.size, 8)).astype(np.float32)
    return validate_dataset(x, np.asarray([names[i] for i in labels]), name="icons")


def _themes(root: Path) -> Path:
    """Two unpacked themes; the majority of files decides an icon's context."""
    files = {
        "Tango/32x32/places/folder-music.png": "", "Tango/32x32/places/folder-videos.png": "",
        "Moka/48x48/places/folder-music.svg": "", "Moka/48x48/devices/folder-videos.svg": "",
        "Tango/32x32/actions/media-playback-start.png": "", "Tango/32x32/devices/media-record.png": "",
        "Tango/32x32/actions/edit-copy.png": "", "Tango/32x32/actions/edit-cut.png": "",
        "Moka/48x48/actions/edit-cut.svg": "", "Moka/48x48/status/edit-cut-2.svg": "",
    }
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "Tango/32x32/actions/edit-paste.png").symlink_to(root / "Tango/32x32/actions/edit-copy.png")
    return root


def test_icon_contexts_read_the_themes(tmp_path: Path) -> None:
    contexts = icon_contexts(_themes(tmp_path))
    assert contexts["folder-music"] == "places" and contexts["media-record"] == "devices"
    assert "edit-paste" not in contexts  # a symlink is an alias, not a drawing


def test_with_captions_gives_every_view_its_identity_caption(tmp_path: Path) -> None:
    ds = with_captions(_icon_set(), icons_root=_themes(tmp_path))
    assert ds.captions is not None and ds.text_features is not None
    assert len(ds.captions) == ds.n and ds.text_features.shape == (ds.n, CAPTION_DIM)
    by_name = {ds.identity_names[ds.labels[row]]: ds.captions[row] for row in range(ds.n)}
    # no first word is shared by three icons here, so captions are the contexts alone
    assert by_name == {"folder-music": "places", "folder-videos": "places", "media-playback-start": "actions",
                       "media-record": "devices", "edit-copy": "actions", "edit-cut": "actions"}
    for row in range(ds.n):  # every view carries its identity's caption
        assert ds.captions[row] == by_name[ds.identity_names[ds.labels[row]]]
    assert ds.meta["distinct_captions"] == 3
    assert ds.summary()["text_dim"] == CAPTION_DIM


def test_text_reaches_every_cycle_of_a_simulation(tmp_path: Path) -> None:
    ds = make_synthetic(n_identities=24, dim=16, identity_dim=8, nuisance_dim=4, min_images=4, max_images=6,
                        random_state=0)
    texts = embed_captions([f"group {label % 5}" for label in ds.labels])
    config = SimulationConfig(strategies=("uncertainty",), seeds=(0,), n_cycles=1, budget=10, skyline=False,
                              train_params={"epochs": 1, "hidden_dim": 16, "batch_size": 32})
    plain = run_simulation(ds, config, work_dir=tmp_path)
    with_text = run_simulation(dataclasses.replace(ds, text_features=texts), config, work_dir=tmp_path)
    assert [r["text_dim"] for r in plain["strategies"]["uncertainty"]["per_seed"][0]] == [0, 0]
    assert [r["text_dim"] for r in with_text["strategies"]["uncertainty"]["per_seed"][0]] == [CAPTION_DIM] * 2
    assert with_text["dataset"]["text_dim"] == CAPTION_DIM


def test_cli_text_needs_a_set_with_captions(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["--dataset", "synthetic", "--text", "--cycles", "1", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "set_name" in capsys.readouterr().err


def _results(maps: list[float], f1s: list[float], served: list[str]) -> dict:
    """A results.json reduced to what benchmarks/simulate_text.py reads: one strategy, one seed."""
    per_seed = [[{"cycle": c, "served": s, "text_dim": 0} for c, s in enumerate(served)]]
    curve = [{"mAP": {"mean": m, "std": 0.0}, "pairwise_f1": {"mean": f, "std": 0.01},
              "pairs_annotated": {"mean": 10.0 * c, "std": 0.0}}
             for c, (m, f) in enumerate(zip(maps, f1s, strict=True))]
    return {"strategies": {"hybrid": {"curve": curve, "per_seed": per_seed}}}


def test_text_comparison_reads_the_last_cycle_of_both_runs() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "simulate_text.py"
    spec = importlib.util.spec_from_file_location("simulate_text", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plain = _results([0.5, 0.6], [0.4, 0.5], ["frozen", "candidate"])
    text = _results([0.5, 0.7], [0.4, 0.45], ["frozen", "frozen"])
    [row] = module.compare(plain, text, "sampler and training")
    assert row["map_delta"] == pytest.approx(0.1) and row["f1_delta"] == pytest.approx(-0.05)
    assert (row["candidates_served_without"], row["candidates_served_with"]) == (1, 0)
    assert row["answers"] == 10.0 and row["uses"] == "sampler and training"
