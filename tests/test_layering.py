"""The dependency rules of docs/architecture.md, enforced: ml_backend -> trainer -> strategies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "strategies": {"flask", "redis", "rq", "torch", "torchvision", "open_clip", "trainer", "ml_backend"},
    "trainer": {"flask", "werkzeug", "gunicorn", "ml_backend"},
}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_forbidden(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    offenders = {name: bad for name, bad in offenders.items() if bad}
    assert offenders == {}, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {offenders}"


def test_nothing_outside_ml_backend_imports_it() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("strategies", "trainer")
        for path in (ROOT / package).rglob("*.py")
        if "ml_backend" in _imported_roots(path)
    ]
    assert offenders == []


def test_importing_strategies_loads_no_torch_or_flask() -> None:
    # Transitive check: the static one above misses an import hidden behind another package.
    code = (
        "import sys, importlib, pkgutil, strategies, strategies.samplers\n"
        "for m in pkgutil.walk_packages(strategies.__path__, 'strategies.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted({'torch', 'flask', 'redis', 'rq'} & set(sys.modules))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_ruleset_catches_a_violation(tmp_path: Path) -> None:
    # Guard against a checker that can never fail.
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom flask import Flask\n")
    assert _imported_roots(bad) & FORBIDDEN["strategies"] == {"torch", "flask"}


def _module_imports() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (every import, TYPE_CHECKING and local ones too)."""
    modules = {}
    for package in ("strategies", "trainer", "ml_backend"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            # a package importing its own submodules (re-exports in __init__) is not a cycle
            edges[name] |= {t for t in targets if t in modules and t != name and not t.startswith(name + ".")}
    return edges


def test_no_two_modules_import_each_other() -> None:
    edges = _module_imports()
    cycles = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_a_long_module_says_why_at_its_top() -> None:
    """docs/architecture.md: a product module over about 500 lines states its reason on its first line."""
    texts = {path: path.read_text() for package in ("strategies", "trainer", "ml_backend")
             for path in sorted((ROOT / package).rglob("*.py"))}
    long_without_reason = [
        str(path.relative_to(ROOT)) for path, text in texts.items()
        if len(text.splitlines()) > 500 and not text.startswith("# Long on purpose: ")
    ]
    assert long_without_reason == []
