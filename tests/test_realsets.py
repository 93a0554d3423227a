"""Building the real sets: two simulations started side by side must not corrupt the shared cache."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from trainer.simulate import realsets


def _slow_glyphs(root: Path, out: Path, faces) -> int:
    """Stands in for rendering fonts: writes 20 identities slowly and counts each build."""
    with open(out.parent / "builds.log", "a") as fh:
        fh.write("build\n")
    for k in range(20):
        folder = out / f"U{k:04X}"
        folder.mkdir(parents=True, exist_ok=True)
        for view, _ in faces:
            (folder / f"{view}.png").write_bytes(b"png")
        time.sleep(0.01)
    return 20


def _build(cache: str) -> None:
    realsets._unpack = lambda *a, **k: None
    realsets._build_glyphs = _slow_glyphs
    realsets.build_real_set("glyphs-plain", Path(cache))


def test_side_by_side_builds_make_one_complete_set(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_build, args=(str(tmp_path),)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    root = realsets.real_set_root("glyphs-plain", tmp_path)
    assert (root / ".complete").read_text() == "20 identities\n"
    assert len([d for d in root.iterdir() if d.is_dir()]) == 20
    assert all(len(list(d.glob("*.png"))) == 4 for d in root.iterdir() if d.is_dir())
    assert (tmp_path / "realsets" / "builds.log").read_text().count("build") == 1
    assert not root.with_name("glyphs-plain.tmp").exists()


def test_unknown_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset: unknown real set"):
        realsets.build_real_set("emoji", tmp_path)
