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


def test_generated_part_relinks_and_demotes() -> None:
    md = _make_docs()
    fragment = md.RESULTS / "x.md"
    source = "# Title\n```\n# not a heading\n```\n![p](x.png) [web](https://a.b/c)"
    text = md._relink(md._demote(source), fragment)
    assert text.splitlines()[0] == "## Title" and "# not a heading" in text.splitlines()
    assert "(../benchmarks/results/x.png)" in text and "(https://a.b/c)" in text


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(SystemExit, match="markers"):
        _make_docs().render("# no markers here\n")
