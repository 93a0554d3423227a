"""Summarise the simulator's runs on the real image sets against what users need.

Reads `benchmarks/results/simulate/<set>/results.json` (written by `reid-al simulate --dataset <set>
--out benchmarks/results/simulate/<set>`) and writes `benchmarks/results/simulate_real.{md,json}`:
per set and strategy, held-out mAP and pool identity F1 after the last cycle (mean ± std over seeds),
the worst held-out mAP of any cycle and seed against the frozen encoder, answers per pool image to reach
pool F1 0.8 and 0.9, and the checks a release is judged by:

* held-out mAP at every cycle, every strategy, every seed >= frozen - 0.5 points;
* where labels can help (skyline >= frozen + 10 points), the best strategy ends >= frozen + 5;
* AAS and uncertainty beat random at equal answers on pool F1 and held-out mAP;
* the best strategy needs fewer answers than match-first to reach pool F1 0.8.

    python benchmarks/simulate_real.py [--sets glyphs-plain glyphs-mixed icons]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETS = ("glyphs-plain", "glyphs-mixed", "icons")
TOLERANCE = 0.005  # held-out mAP a cycle may lose against the frozen encoder


def _mean(row: dict[str, Any], field: str) -> float | None:
    cell = row.get(field) or {}
    return cell.get("mean") if isinstance(cell, dict) else None


def _std(row: dict[str, Any], field: str) -> float | None:
    cell = row.get(field) or {}
    return cell.get("std") if isinstance(cell, dict) else None


def _at(curve: list[dict[str, Any]], answers: float, field: str) -> float | None:
    """Mean ``field`` of the last cycle with at most ``answers`` answers (the value a user has then)."""
    value = None
    for row in curve:
        x = _mean(row, "pairs_annotated")
        if x is not None and x <= answers + 1e-9:
            value = _mean(row, field)
    return value


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    base = results["baseline"]
    frozen = base["mAP"]["mean"]
    sky = (results.get("skyline") or {}).get("mAP", {}).get("mean")
    out: dict[str, Any] = {
        "dataset": results["dataset"]["name"],
        "n_pool": results["split"]["n_pool"],
        "budget_per_cycle": results["config"]["budget_per_cycle"],
        "n_cycles": results["config"]["n_cycles"],
        "seeds": results["config"]["seeds"],
        "frozen_mAP": frozen,
        "frozen_pool_f1": base["pairwise_f1"]["mean"],
        "skyline_mAP": sky,
        "command": results.get("command"),
        "code_version": results.get("code_version"),
        "wall_s": results.get("wall_s"),
        "strategies": {},
    }
    for name, block in results["strategies"].items():
        last = block["curve"][-1]
        worst = min(rec["mAP"] for seed in block["per_seed"] for rec in seed)
        reach = results["summary"].get("answers_per_image_to_f1", {}).get(name, {})
        out["strategies"][name] = {
            "answers": _mean(last, "pairs_annotated"),
            "answers_per_image": _mean(last, "answers_per_image"),
            "mAP": _mean(last, "mAP"),
            "mAP_std": _std(last, "mAP"),
            "pool_f1": _mean(last, "pairwise_f1"),
            "pool_f1_std": _std(last, "pairwise_f1"),
            "pool_precision": _mean(last, "pairwise_precision"),
            "pool_recall": _mean(last, "pairwise_recall"),
            "open_set_auc": _mean(last, "open_set_auc"),
            "worst_mAP_any_cycle": worst,
            "answers_per_image_to_f1_0.8": reach.get("0.8"),
            "answers_per_image_to_f1_0.9": reach.get("0.9"),
        }
    s = out["strategies"]
    checks: dict[str, Any] = {}
    labelled = [n for n in s if n != "none"]
    checks["never_below_frozen"] = all(s[n]["worst_mAP_any_cycle"] >= frozen - TOLERANCE for n in s)
    if sky is not None and sky >= frozen + 0.10:
        best = max(labelled, key=lambda n: s[n]["mAP"])
        checks["best_ends_5_points_above_frozen"] = {"best": best, "ok": s[best]["mAP"] >= frozen + 0.05}
    if "random" in s:
        for name in ("aas", "uncertainty"):
            if name in s:
                answers = min(s[name]["answers"], s["random"]["answers"])
                curves = {n: results["strategies"][n]["curve"] for n in (name, "random")}
                ok = all(
                    (_at(curves[name], answers, f) or 0.0) > (_at(curves["random"], answers, f) or 0.0)
                    for f in ("pairwise_f1", "mAP")
                )
                checks[f"{name}_beats_random"] = ok
    if "match_first" in s:
        reach = {n: s[n]["answers_per_image_to_f1_0.8"] for n in labelled}
        reached = {n: v for n, v in reach.items() if v is not None}
        best = min(reached, key=reached.get) if reached else None
        checks["fewest_answers_to_f1_0.8"] = {"best": best, "answers_per_image": reached}
    out["checks"] = checks
    return out


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(summaries: list[dict[str, Any]], load: str | None = None) -> str:
    lines = [
        "# Active learning on real image sets",
        "",
        "Written by `python benchmarks/simulate_real.py` from the simulator's runs; each set's command is",
        "given below its table, its full per-cycle tables and curves are in",
        "`benchmarks/results/simulate/<set>/` (results.md, curves.png).",
        "",
    ]
    for sm in summaries:
        lines += [
            f"## {sm['dataset']}",
            "",
            f"Pool {sm['n_pool']} images; {sm['budget_per_cycle']} pairs per cycle (0.02% of the pool's "
            f"pairs) × {sm['n_cycles']} cycles; seeds {sm['seeds']}. Frozen encoder: held-out mAP "
            f"{_fmt(sm['frozen_mAP'])}, pool F1 {_fmt(sm['frozen_pool_f1'])}; skyline (every pool label) "
            f"mAP {_fmt(sm['skyline_mAP'])}.",
            "",
            "| strategy | answers | per image | held-out mAP | worst cycle mAP | pool F1 | precision "
            "| recall | open-set AUC | answers/image to F1 0.8 | to 0.9 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in sm["strategies"].items():
            lines.append(
                f"| {name} | {_fmt(r['answers'], '.0f')} | {_fmt(r['answers_per_image'], '.2f')} | "
                f"{_fmt(r['mAP'])} ± {_fmt(r['mAP_std'])} | {_fmt(r['worst_mAP_any_cycle'])} | "
                f"{_fmt(r['pool_f1'])} ± {_fmt(r['pool_f1_std'])} | {_fmt(r['pool_precision'])} | "
                f"{_fmt(r['pool_recall'])} | {_fmt(r['open_set_auc'])} | "
                f"{_fmt(r['answers_per_image_to_f1_0.8'], '.2f')} | "
                f"{_fmt(r['answers_per_image_to_f1_0.9'], '.2f')} |"
            )
        wall = f"{sm['wall_s'] / 60:.0f} min" if sm.get("wall_s") else "—"
        lines += [
            "",
            f"Checks: `{json.dumps(sm['checks'])}`",
            "",
            f"`{sm['command']}` (code {sm.get('code_version') or '—'}; wall {wall}"
            + (f", {load}" if load else "")
            + ")",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--load", help="the machine's load while the runs ran, written beside the wall times")
    args = parser.parse_args(argv)
    summaries = []
    for name in args.sets:
        path = RESULTS / "simulate" / name / "results.json"
        if not path.is_file():
            print(f"missing {path}: run reid-al simulate --dataset {name} --out {path.parent}",
                  file=sys.stderr)
            return 2
        summaries.append(summarise(json.loads(path.read_text())))
    (RESULTS / "simulate_real.json").write_text(json.dumps(summaries, indent=2) + "\n")
    text = markdown(summaries, args.load)
    (RESULTS / "simulate_real.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
