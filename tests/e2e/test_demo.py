"""`./scripts/demo.sh`, as a newcomer runs it: Label Studio, the backend and a project with pair tasks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_demo_brings_up_a_connected_project_with_pair_tasks(tmp_path: Path) -> None:
    proc = subprocess.run([str(REPO / "scripts" / "demo.sh"), "--check", "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=1500, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Label Studio: http://127.0.0.1:" in out and "(login admin@example.com / " in out
    assert "pair tasks in the 'Most informative first' view" in out
    assert "$ " in out and " connect --project " in out and " ingest " in out  # the README's steps
    people = sorted(p.name for p in (tmp_path / "label-studio" / "files" / "orl").iterdir())
    assert len(people) == 40 and people[:2] == ["s1", "s10"]
