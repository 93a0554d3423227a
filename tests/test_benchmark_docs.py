"""docs/benchmarks.md shows what the benchmark scripts last wrote (benchmarks/make_docs.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "benchmarks" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_doc_is_up_to_date() -> None:
    assert _make_docs().main(["--check"]) == 0, "run: python benchmarks/make_docs.py"


def test_a_row_links_the_result_files_and_quotes_the_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md = _make_docs()
    monkeypatch.setattr(md, "RESULTS", tmp_path)
    command = "python benchmarks/bench_x.py --n 3"
    (tmp_path / "x.md").write_text(f"# X\nCommand: `{command}`\n\n    {command}\n")  # the same one twice
    (tmp_path / "x.json").write_text("{}")
    row = md.row("x.md", "what x measures")
    files = "[x.md](../benchmarks/results/x.md), [x.json](../benchmarks/results/x.json)"
    assert row == f"| what x measures | {files} | `{command}` |"
    with pytest.raises(SystemExit, match="missing"):
        md.row("y.md", "absent")


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(SystemExit, match="markers"):
        _make_docs().render("# no markers here\n")
