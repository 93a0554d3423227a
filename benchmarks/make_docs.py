"""Refresh the generated part of docs/benchmarks.md from the benchmark scripts' own write-ups.

Each benchmark writes `benchmarks/results/<name>.md` next to its JSON and PNG; this script copies them
between the BEGIN/END markers of docs/benchmarks.md (headings demoted one level, relative links
re-pointed), so the document always shows what the scripts last measured. The hand-written summary
above the markers is left alone.

    python benchmarks/make_docs.py [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- BEGIN GENERATED: python benchmarks/make_docs.py -->"
END = "<!-- END GENERATED -->"

# (fragment, why it is here) in reading order: core algorithms -> samplers -> trainer -> service -> AL.
SECTIONS: tuple[str, ...] = (
    "core.md",
    "core_exact100k.md",
    "core_finch50k.md",
    "samplers.md",
    "embedding.md",
    "embedding_vit_512.md",
    "embedding_load11.md",
    "training.md",
    "webhook.md",
    "simulate.md",
)

# Plots shown under a section besides the one named like its fragment (e.g. core.md -> core.png).
EXTRA_PLOTS: dict[str, tuple[str, ...]] = {
    "simulate.md": ("simulate/synthetic/curves.png", "simulate/orl/curves.png"),
}

_LINK = re.compile(r"(!?\[[^\]]*\]\()(?!https?://|/|#|\.\./)([^)\s]+)\)")


def _relink(text: str, fragment: Path) -> str:
    """Links in a fragment are relative to benchmarks/results/: make them relative to docs/."""
    base = fragment.parent.relative_to(ROOT).as_posix()
    return _LINK.sub(lambda m: f"{m.group(1)}../{base}/{m.group(2)})", text)


def _demote(text: str) -> str:
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        out.append("#" + line if (not fenced and line.startswith("#")) else line)
    return "\n".join(out)


def generated_part() -> str:
    parts = []
    for name in SECTIONS:
        fragment = RESULTS / name
        if not fragment.exists():
            raise SystemExit(f"benchmarks/results/{name} is missing: run its benchmark first")
        body = _relink(_demote(fragment.read_text().strip()), fragment)
        plots = [fragment.with_suffix(".png").name, *EXTRA_PLOTS.get(name, ())]
        for plot in plots:
            if (RESULTS / plot).exists() and plot not in body:
                body += f"\n\n![{plot}](../benchmarks/results/{plot})"
        parts.append(f"<!-- from benchmarks/results/{name} -->\n{body}")
    return "\n\n".join(parts)


def render(doc: str) -> str:
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC.relative_to(ROOT)} lacks the markers {BEGIN!r} ... {END!r}")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{generated_part()}\n\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the document is out of date")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    new = render(current)
    if args.check:
        if new != current:
            print(f"{DOC.relative_to(ROOT)} is out of date: run python benchmarks/make_docs.py")
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC.relative_to(ROOT)} ({len(SECTIONS)} sections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
