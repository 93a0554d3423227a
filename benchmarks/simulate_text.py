"""The real sets with and without attribute captions, side by side: what text changes.

Reads `benchmarks/results/simulate/<set>/results.json` (no text) and
`benchmarks/results/simulate/<set>-text/results.json` (the same seeds with `reid-al simulate --text`)
and writes `benchmarks/results/simulate_text.{md,json,png}`: per set and strategy run with text,
held-out mAP and pool identity F1 after the last cycle (mean ± std over seeds) without and with text,
the difference, and how often the gate served a trained candidate. Where a
`<set>-text-sampler-only` run exists (`--train 'text_terms=[]'`: the samplers see the captions,
training does not), its rows separate what the sampler and what training make of the text.

    reid-al simulate --dataset glyphs-plain --text --strategies uncertainty,hybrid --no-skyline \\
        --out benchmarks/results/simulate/glyphs-plain-text
    python benchmarks/simulate_text.py [--sets glyphs-plain glyphs-mixed icons]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _last(block: dict[str, Any], field: str) -> tuple[float, float]:
    cell = block["curve"][-1][field]
    return float(cell["mean"]), float(cell["std"] or 0.0)


def _served(block: dict[str, Any]) -> int:
    """Cycles, over all seeds, whose served model was a newly trained candidate."""
    return sum(rec["served"] == "candidate" for seed in block["per_seed"] for rec in seed)


VARIANTS = (("-text", "sampler and training"), ("-text-sampler-only", "sampler only"))


def compare(plain: dict[str, Any], text: dict[str, Any], uses: str) -> list[dict[str, Any]]:
    rows = []
    for strategy, block in text["strategies"].items():
        if strategy not in plain["strategies"]:
            continue
        base = plain["strategies"][strategy]
        seeds = len(block["per_seed"])
        row: dict[str, Any] = {"strategy": strategy, "uses": uses, "seeds": seeds,
                               "text_dim": block["per_seed"][0][-1].get("text_dim", 0),
                               "answers": _last(block, "pairs_annotated")[0]}
        for field, name in (("mAP", "map"), ("pairwise_f1", "f1")):
            without, with_ = _last(base, field), _last(block, field)
            row[f"{name}_without"], row[f"{name}_without_std"] = without
            row[f"{name}_with"], row[f"{name}_with_std"] = with_
            row[f"{name}_delta"] = with_[0] - without[0]
        row["candidates_served_without"] = _served(base)
        row["candidates_served_with"] = _served(block)
        rows.append(row)
    return rows


def markdown(sets: list[dict[str, Any]], load: float) -> str:
    lines = [
        "# Attribute captions: the real sets with and without text",
        "",
        "`python benchmarks/simulate_text.py` (1-min load average when written: "
        f"{load:.2f}). Each set's text runs: `reid-al simulate --dataset <set> --text` with the seeds and "
        "protocol of its runs without text (commands in each results.md). Captions describe what many "
        "identities share (trainer/simulate/captions.py); held-out mAP and pool F1 after the last cycle, "
        "mean ± std over seeds.",
        "",
    ]
    for entry in sets:
        lines += [
            f"## {entry['set']}",
            "",
            f"{entry['distinct_captions']} distinct captions for {entry['identities']} identities.",
            "",
            "| strategy | text used by | answers | held-out mAP without | with text | Δ | pool F1 without | "
            "with text | Δ | candidates served (without / with) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in entry["rows"]:
            def cell(name: str, r: dict[str, Any] = r) -> str:
                return f"{r[name]:.3f} ± {r[name + '_std']:.3f}"

            lines.append(
                f"| {r['strategy']} | {r['uses']} | {r['answers']:.0f} | {cell('map_without')} | "
                f"{cell('map_with')} | {r['map_delta']:+.3f} | {cell('f1_without')} | {cell('f1_with')} | "
                f"{r['f1_delta']:+.3f} | {r['candidates_served_without']} / {r['candidates_served_with']} |"
            )
        lines.append("")
    lines += ["![with and without text](simulate_text.png)", ""]
    return "\n".join(lines)


def plot(sets: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    short = {"sampler and training": "text: all", "sampler only": "text: sampler"}
    labels = [f"{e['set']}\n{r['strategy']}\n{short.get(r['uses'], r['uses'])}"
              for e in sets for r in e["rows"]]
    x = np.arange(len(labels))
    for ax, name, title in ((axes[0], "map", "held-out mAP"), (axes[1], "f1", "pool identity F1")):
        without = [r[f"{name}_without"] for e in sets for r in e["rows"]]
        with_ = [r[f"{name}_with"] for e in sets for r in e["rows"]]
        ax.bar(x - 0.2, without, 0.4, label="without text")
        ax.bar(x + 0.2, with_, 0.4, label="with captions")
        ax.set_xticks(x, labels, fontsize=6.5)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["glyphs-plain", "glyphs-mixed", "icons"])
    args = parser.parse_args(argv)
    sets = []
    for name in args.sets:
        plain_path = RESULTS / "simulate" / name / "results.json"
        text_path = RESULTS / "simulate" / f"{name}-text" / "results.json"
        if not (plain_path.exists() and text_path.exists()):
            print(f"missing {plain_path} or {text_path}", file=sys.stderr)
            return 2
        plain, text = json.loads(plain_path.read_text()), json.loads(text_path.read_text())
        rows = []
        for suffix, uses in VARIANTS:
            path = RESULTS / "simulate" / f"{name}{suffix}" / "results.json"
            if path.exists():
                rows += compare(plain, json.loads(path.read_text()), uses)
        sets.append({"set": name, "identities": text["dataset"]["n_identities"],
                     "distinct_captions": text["dataset"].get("distinct_captions"), "rows": rows})
    load = os.getloadavg()[0]
    out = RESULTS / "simulate_text.json"
    out.write_text(json.dumps({"command": "python benchmarks/simulate_text.py", "load": load, "sets": sets},
                              indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(sets, load))
    plot(sets, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
