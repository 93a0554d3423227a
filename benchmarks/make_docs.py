"""Refresh the generated part of docs/benchmarks.md: one row per benchmark result, linking its write-up,
data and plot under benchmarks/results/ and giving the command that reproduces it.

Each benchmark writes `benchmarks/results/<name>.md` (and `.json`, `.png`) itself; the command is read
from that write-up, so the table always matches what the scripts last wrote. The hand-written summary
and reading above the BEGIN/END markers are left alone. A test runs `--check`.

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

# (result under benchmarks/results/, what it measures), in reading order: core algorithms -> samplers ->
# trainer -> service -> active learning. A result is a write-up (.md) or, without one, its JSON.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("core.md", "kNN, Jaccard, DBSCAN, FINCH and NP3 at 10k, 50k and 100k points"),
    ("core_exact100k.md", "exact kNN and the clustering pipeline at 100k points"),
    ("core_finch50k.md", "FINCH against finch-clust at 50k points, three runs"),
    ("np3_timing.json", "NP3 refinement at 100k points and 5k constraints, three constraint shapes"),
    ("samplers.md", "every pair sampler's selection time and peak memory at 10k-100k"),
    ("embedding.md", "embedding pipeline against bare forward, quiet machine"),
    ("embedding_vit_512.md", "the same for ViT-B-32 at 512 images"),
    ("embedding_load11.md", "the same on a loaded machine"),
    ("training.md", "adapter training time per cycle at 10k and 100k images"),
    ("training_threads1.md", "adapter training at 2k images, one torch thread"),
    ("training_threads_default.md", "adapter training at 2k images, torch's default threads"),
    ("webhook.md", "webhook latency at 200 req/s and /predict for 100 tasks, quiet machine"),
    ("webhook_check.md", "the same with 12 slowloris connections open during the load"),
    ("cycle.md", "one whole production cycle at 20k-400k images on real-structured embeddings"),
    ("gpu_cpu_fallback.md", "the GPU benchmark's CPU fallback: embedding, kNN, a fine-tuning epoch"),
    ("simulate_real.md", "active learning on the real image sets: every strategy, 3 seeds, the checks"),
    ("simulate/glyphs-plain-long-hybrid/results.md", "hybrid for 13 cycles (1.02 answers per image), 1 seed"),
    ("simulate/glyphs-plain-long-match-first/results.md", "match-first for 13 cycles, one seed"),
    ("simulate/glyphs-plain-hybrid-match-0.25/results.md",
     "hybrid asking a quarter of each batch match-first instead of half, glyphs-plain, 3 seeds"),
    ("simulate/glyphs-mixed-hybrid-match-0.25/results.md", "the same on glyphs-mixed"),
    ("simulate/icons-hybrid-match-0.25/results.md", "the same on icons"),
    ("simulate/glyphs-plain-unsure/results.md", "hybrid, an annotator unsure 5% of the time, 3 seeds"),
    ("simulate/glyphs-plain-noisy/results.md", "the same annotator also wrong 10% of the time, 3 seeds"),
    ("simulate/glyphs-plain-unsure-seeds345/results.md", "the careful annotator, seeds 3-5"),
    ("simulate/glyphs-plain-noisy-seeds345/results.md", "the noisy annotator, seeds 3-5"),
    ("simulate/glyphs-plain-noisy-no-second-opinions/results.md",
     "the noisy annotator without second opinions, 3 seeds"),
    ("simulate/glyphs-mixed-noisy/results.md", "the noisy annotator on glyphs-mixed, 3 seeds"),
    ("simulate/glyphs-plain-noisy-link-past-cl/results.md",
     "the noisy annotator, identities always linking past a cannot-link, 3 seeds"),
    ("simulate/glyphs-plain-noisy-seeds345-link-past-cl/results.md", "the same, seeds 3-5"),
    ("simulate/glyphs-mixed-noisy-link-past-cl/results.md", "the same on glyphs-mixed"),
    ("simulate/glyphs-plain-no-link-past-cl/results.md",
     "glyphs-plain, every strategy, no identity link past a cannot-link, 3 seeds"),
    ("simulate/glyphs-mixed-no-link-past-cl/results.md", "the same on glyphs-mixed"),
    ("simulate/icons-no-link-past-cl/results.md", "the same on icons"),
    ("simulate/glyphs-plain-unsure-no-link-past-cl/results.md",
     "the same for the annotator unsure 5% of the time"),
    ("simulate/glyphs-plain-noisy-no-link-past-cl/results.md",
     "the same for the annotator also wrong 10% of the time"),
    ("simulate/icons-aas-uncertainty-cross-validate/results.md",
     "icons, AAS and uncertainty, the gate cross-validating while its first fold has too few matches"),
    ("simulate/glyphs-mixed-hybrid-cross-validate/results.md", "the same for hybrid on glyphs-mixed"),
    ("gate_probe_glyphs-plain.md", "how often the gate's held-out scores order models as the test set does"),
    ("gate_probe_glyphs-mixed.md", "the same on glyphs-mixed"),
    ("gate_probe_glyphs-plain_oracle.md", "hybrid served by an oracle judge (best test mAP), 3 seeds"),
    ("gate_probe_glyphs-mixed_oracle.md", "the same on glyphs-mixed"),
    ("gate_probe_glyphs-plain_min_negatives3.md", "hybrid, the gate's AUC from 3 held-out 'different' pairs"),
    ("gate_probe_glyphs-mixed_min_negatives3.md", "the same on glyphs-mixed"),
    ("gate_probe_icons.md", "the gate's decisions on icons: AAS, uncertainty and hybrid, 3 seeds"),
    ("gate_probe_icons_oracle.md", "the same served by the oracle judge"),
    ("simulate_text.md", "the real sets with and without attribute captions, 3 seeds"),
    ("simulate/glyphs-plain-text/results.md", "glyphs-plain with captions: uncertainty and hybrid, 3 seeds"),
    ("simulate/glyphs-plain-text-sampler-only/results.md", "the same, captions seen by the samplers only"),
    ("simulate/glyphs-mixed-text/results.md", "glyphs-mixed with captions: uncertainty and hybrid, 3 seeds"),
    ("simulate/icons-text/results.md", "icons with captions: uncertainty and hybrid, 3 seeds"),
    ("simulate.md", "active learning on synthetic data and ORL faces (the earlier loop: no gate)"),
)

# Plots shown for a result besides the one named like it (e.g. core.md -> core.png).
EXTRA_PLOTS: dict[str, tuple[str, ...]] = {
    "simulate_real.md": (
        "simulate/glyphs-plain/curves.png",
        "simulate/glyphs-mixed/curves.png",
        "simulate/icons/curves.png",
    ),
    "simulate.md": ("simulate/synthetic/curves.png", "simulate/orl/curves.png"),
}
# Commands of results without a write-up (their script prints them in its docstring).
COMMANDS: dict[str, tuple[str, ...]] = {
    "np3_timing.json": ("python benchmarks/np3_timing.py",),
}

_COMMAND = re.compile(r"((?:\.venv/bin/)?python benchmarks/\S+\.py[^`\n]*|reid-al simulate --[^`\n#]*)")
_SHOWN = 3  # commands per row; a write-up with more lists them all


def _link(name: str) -> str:
    return f"[{name}](../benchmarks/results/{name})"


def commands(name: str) -> list[str]:
    """The commands a write-up says it was made with, in order, each once."""
    if name in COMMANDS:
        return list(COMMANDS[name])
    found = [m.group(1).strip() for m in _COMMAND.finditer((RESULTS / name).read_text())]
    return list(dict.fromkeys(found))


def row(name: str, what: str) -> str:
    if not (RESULTS / name).exists():
        raise SystemExit(f"benchmarks/results/{name} is missing: run its benchmark first")
    stem = Path(name).with_suffix("")
    files = [_link(name)]
    for related in (f"{stem}.json", f"{stem}.png", *EXTRA_PLOTS.get(name, ())):
        if related != name and (RESULTS / related).exists():
            files.append(_link(related))
    found = commands(name)
    shown = [f"`{c}`" for c in found[:_SHOWN]]
    if len(found) > _SHOWN:
        shown.append(f"(+{len(found) - _SHOWN} more in the write-up)")
    return f"| {what} | {', '.join(files)} | {'<br>'.join(shown)} |"


def generated_part() -> str:
    lines = [
        "## Results and how to reproduce them",
        "",
        "Every figure above comes from one of these results. Each write-up states its machine, load and",
        "full tables; run its command from the repository root to measure again.",
        "",
        "| what it measures | files | command |",
        "|---|---|---|",
        *(row(name, what) for name, what in SECTIONS),
    ]
    return "\n".join(lines)


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
    print(f"wrote {DOC.relative_to(ROOT)} ({len(SECTIONS)} results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
