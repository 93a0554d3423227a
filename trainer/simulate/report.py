"""Aggregate per-seed cycle records into results.json, the papers' summary numbers, and PNG curves."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Per-cycle fields aggregated as mean/std over seeds (everything numeric a cycle record carries).
CURVE_FIELDS = (
    "pairs_annotated",
    "pairs_annotated_pct",
    "answers_per_image",
    "pairs_constrained",
    "identities_touched",
    "pairs_by_transitivity",
    "pairs_by_transitivity_new",
    "answers_same",
    "answers_unsure",
    "answers_wrong",
    "contradictions",
    "reviews_answered",
    "reviews_open",
    "contradictions_open",
    "merges_held",
    "shortfall",
    "mAP",
    "rank1",
    "rank5",
    "rank10",
    "mINP",
    "pairwise_precision",
    "pairwise_recall",
    "pairwise_f1",
    "ari",
    "open_set_auc",
    "n_clusters",
    "identities",
    "identities_verified",
    "images_verified",
    "serving_adapter",
    "wall_s",
)
PLOT_METRICS = (
    ("mAP", "held-out mAP"),
    ("rank1", "held-out Rank-1"),
    ("pairwise_f1", "pool identities: pairwise F1"),
    ("pairwise_precision", "pool identities: pairwise precision"),
    ("pairwise_recall", "pool identities: pairwise recall"),
    ("images_verified", "pool images verified by answers"),
)
SKYLINE_FRACTION = 0.95
F1_TARGETS = (0.8, 0.9)  # pool identity F1 a team wants: answers per pool image to reach each


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    arr = np.asarray(
        [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float
    )
    if arr.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0))}


def aggregate_runs(runs: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """runs[seed][cycle] -> per cycle {"cycle", field: {"mean", "std"}} (seeds may stop early)."""
    if not runs:
        raise ValueError("runs: need at least one seed's records")
    n_cycles = max(len(r) for r in runs)
    out: list[dict[str, Any]] = []
    for c in range(n_cycles):
        recs = [r[c] for r in runs if len(r) > c]
        row: dict[str, Any] = {"cycle": c, "n_seeds": len(recs)}
        for f in CURVE_FIELDS:
            vals = [rec[f] for rec in recs if f in rec]
            if vals:
                row[f] = _mean_std(vals)
        out.append(row)
    return out


def aggregate_reference(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean/std of the baseline or skyline evaluations over seeds."""
    keys = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float))})
    return {k: _mean_std([r[k] for r in records if k in r]) for k in keys}


def _mean(row: dict[str, Any], field: str) -> float | None:
    cell = row.get(field)
    return None if cell is None else cell.get("mean")


def pairs_to_reach(
    curve: Sequence[dict[str, Any]], per_seed: Sequence[Sequence[dict[str, Any]]], target_map: float | None
) -> dict[str, Any]:
    """Pairs (and identities) needed to reach `target_map` — on the mean curve and seed by seed.

    The mean-curve answer is the first cycle whose mean mAP >= target, with the pairs count linearly
    interpolated between that cycle and the previous one (reported both ways: `cycle`, `pairs_at_cycle`,
    `pairs_interpolated`). Per seed: the first cycle reaching it, and how many seeds ever did.
    """
    result: dict[str, Any] = {
        "target_mAP": target_map,
        "reached": False,
        "cycle": None,
        "pairs_at_cycle": None,
        "pairs_interpolated": None,
        "identities_at_cycle": None,
        "seeds_reached": 0,
        "n_seeds": len(per_seed),
        "pairs_per_seed": [],
    }
    if target_map is None:
        return result
    crossing = _first_crossing(curve, "pairs_annotated", "mAP", target_map)
    if crossing is not None:
        row, interp = crossing
        result.update(
            reached=True,
            cycle=row["cycle"],
            pairs_at_cycle=_mean(row, "pairs_annotated"),
            pairs_interpolated=interp,
            identities_at_cycle=_mean(row, "identities_touched"),
        )
    for seed_rows in per_seed:
        hit = next((r for r in seed_rows if r.get("mAP") is not None and r["mAP"] >= target_map), None)
        result["pairs_per_seed"].append(None if hit is None else hit["pairs_annotated"])
    result["seeds_reached"] = sum(v is not None for v in result["pairs_per_seed"])
    return result


def answers_to_f1(curve: Sequence[dict[str, Any]], target: float) -> float | None:
    """Answers per pool image at which the mean pool identity F1 first reaches ``target`` (linearly
    interpolated between the two cycles around it); None if it never does."""
    crossing = _first_crossing(curve, "answers_per_image", "pairwise_f1", target)
    return None if crossing is None else crossing[1]


def _first_crossing(curve: Sequence[dict[str, Any]], x_field: str, y_field: str,
                    target: float) -> tuple[dict[str, Any], float] | None:
    """The first row whose mean ``y_field`` reaches ``target``, and the mean ``x_field`` there, linearly
    interpolated from the row before when ``y`` rose to it; None if no row does."""
    prev_x, prev_y = None, None
    for row in curve:
        x, y = _mean(row, x_field), _mean(row, y_field)
        if x is None or y is None:
            continue
        if y >= target:
            if prev_x is None or prev_y is None or y <= prev_y:
                return row, float(x)
            return row, float(prev_x + (target - prev_y) / (y - prev_y) * (x - prev_x))
        prev_x, prev_y = x, y
    return None


def value_at_pairs(curve: Sequence[dict[str, Any]], pairs: float | None, field: str = "mAP") -> float | None:
    """Mean `field` linearly interpolated at `pairs` annotated pairs along the mean curve.

    Beyond the curve's last point the last value is returned (the strategy spent less: it cannot do
    better by spending nothing more); before the first point, the first value.
    """
    if pairs is None:
        return None
    # cycle order; pairs never decrease along it. Where a cycle added no pair (x repeats), the later
    # cycle's value wins: it is what the strategy has after spending that many pairs.
    pts: dict[float, float] = {}
    for row in curve:
        x, y = _mean(row, "pairs_annotated"), _mean(row, field)
        if x is not None and y is not None:
            pts[float(x)] = float(y)
    if not pts:
        return None
    xs = sorted(pts)
    if float(pairs) >= xs[-1]:
        return pts[xs[-1]]
    return float(np.interp(float(pairs), np.asarray(xs), np.asarray([pts[x] for x in xs])))


def summarise(
    strategies: dict[str, dict[str, Any]], skyline: dict[str, Any] | None, reference_strategy: str = "aas"
) -> dict[str, Any]:
    """The two papers' summary numbers.

    - seed 000: pairs (and identities touched) needed to reach 95% of the skyline mAP, per strategy;
    - seed 001: the mAP each strategy has at the number of pairs AAS actually used (AAS may spend less
      than its budget: it takes all of its candidate set when that is smaller).
    """
    sky_map = None if skyline is None else skyline.get("mAP", {}).get("mean")
    target = None if sky_map is None else SKYLINE_FRACTION * sky_map
    summary: dict[str, Any] = {
        "skyline_mAP": sky_map,
        "target_fraction": SKYLINE_FRACTION,
        "target_mAP": target,
        "reach_target": {},
        "reference_strategy": None,
        "reference_pairs": None,
        "reference_pairs_pct": None,
        "mAP_at_reference_pairs": {},
        "answers_per_image_to_f1": {},
    }
    for name, block in strategies.items():
        summary["reach_target"][name] = pairs_to_reach(block["curve"], block["per_seed"], target)
        summary["answers_per_image_to_f1"][name] = {
            str(t): answers_to_f1(block["curve"], t) for t in F1_TARGETS
        }
    ref = reference_strategy if reference_strategy in strategies else None
    if ref is not None:
        last = strategies[ref]["curve"][-1]
        summary.update(
            reference_strategy=ref,
            reference_pairs=_mean(last, "pairs_annotated"),
            reference_pairs_pct=_mean(last, "pairs_annotated_pct"),
        )
        for name, block in strategies.items():
            summary["mAP_at_reference_pairs"][name] = value_at_pairs(
                block["curve"], summary["reference_pairs"]
            )
    return summary


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    """Atomic write (temp + rename): a crash never leaves a half results.json behind."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=_json_default, allow_nan=False))
    os.replace(tmp, p)
    return p


def plot_curves(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """One PNG grid of every curve (mean ± std band over seeds), baseline and skyline as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    baseline = results.get("baseline") or {}
    skyline = results.get("skyline") or {}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (field, title) in zip(axes.ravel(), PLOT_METRICS, strict=False):
        for name, block in results["strategies"].items():
            curve = block["curve"]
            xs = np.asarray([_mean(r, "pairs_annotated") or 0.0 for r in curve])
            style, label = "-", name
            if len(curve) > 1 and not xs.any():  # the no-label control: drawn per cycle, at the budget's x
                xs = np.asarray([r["cycle"] * results["config"]["budget_per_cycle"] for r in curve], float)
                style, label = "--", f"{name} (0 pairs; x = cycle × budget)"
            ys = np.asarray(
                [np.nan if _mean(r, field) is None else _mean(r, field) for r in curve], dtype=float
            )
            sd = np.asarray([(r.get(field) or {}).get("std") or 0.0 for r in curve], dtype=float)
            (line,) = ax.plot(xs, ys, marker="o", ms=3, ls=style, label=label)
            ax.fill_between(xs, ys - sd, ys + sd, color=line.get_color(), alpha=0.2, linewidth=0)
        for ref, style, label in (
            (baseline, "--", "baseline (frozen)"),
            (skyline, ":", "skyline (all labels)"),
        ):
            val = (ref.get(field) or {}).get("mean") if isinstance(ref.get(field), dict) else None
            if val is not None:
                ax.axhline(val, color="grey" if style == "--" else "black", ls=style, lw=1, label=label)
        if field == "mAP" and results.get("summary", {}).get("target_mAP") is not None:
            ax.axhline(results["summary"]["target_mAP"], color="red", ls="-.", lw=0.8, label="95% of skyline")
        ax.set_title(title)
        ax.set_xlabel("pairs annotated (cumulative)")
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=7, loc="best")
    ds = results.get("dataset", {}).get("name", "")
    fig.suptitle(f"reid-al simulate — {ds}: mean ± std over {len(results['config']['seeds'])} seed(s)")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _cell(row: dict[str, Any], field: str, spec: str = ".3f", with_std: bool = False) -> str:
    cell = row.get(field) or {}
    mean, std = cell.get("mean"), cell.get("std")
    if mean is None:
        return "—"
    text = format(mean, spec)
    return f"{text} ± {format(std, spec)}" if with_std and std is not None else text


def _served(block: dict[str, Any], cycle: int) -> str:
    """Which model each seed served after ``cycle`` (the validation gate's decision), e.g. "2/3 adapter"."""
    seeds = [rows[cycle] for rows in block.get("per_seed", []) if len(rows) > cycle]
    if not seeds or "serving_adapter" not in seeds[0]:
        return "—"
    return f"{sum(int(r['serving_adapter']) for r in seeds)}/{len(seeds)} adapter"


def markdown_summary(results: dict[str, Any]) -> str:
    """Markdown tables of a results dict (what results.md holds and the benchmark write-up quotes)."""
    cfg, ds, split = results["config"], results["dataset"], results["split"]
    base, sky, s = results.get("baseline") or {}, results.get("skyline") or {}, results["summary"]
    lines = [
        f"Dataset `{ds['name']}`: {ds['n_images']} images, {ds['n_identities']} identities, d={ds['dim']}; "
        f"pool {split['n_pool']} images, test {split['n_test']} ({split['n_queries']} queries, "
        f"exclusion group: {split['exclusion_group']}).",
        f"Budget {cfg['budget_per_cycle']} pairs/cycle ({cfg['budget_per_cycle_pct']:.4f}% of "
        f"{cfg['all_pool_pairs']} pool pairs) × {cfg['n_cycles']} cycles; seeds {cfg['seeds']}; "
        f"oracle noise {cfg['noise_rate']}, unsure {cfg['unsure_rate']}; "
        f"wall {results.get('wall_s', 0):.0f} s.",
        "",
        "| reference | held-out mAP | Rank-1 | mINP | open-set AUC | pool F1 | pool precision "
        "| pool recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ref in (("baseline (frozen, no labels)", base), ("skyline (all pool labels)", sky)):
        if ref:
            lines.append(
                f"| {name} | "
                + " | ".join(
                    _cell(ref, f, with_std=True)
                    for f in (
                        "mAP", "rank1", "mINP", "open_set_auc",
                        "pairwise_f1", "pairwise_precision", "pairwise_recall",
                    )
                )
                + " |"
            )
    lines += [
        "",
        "| strategy | cycle | answers (cum.) | per pool image | same answers | by transitivity | "
        "model served | held-out mAP | Rank-1 | open-set AUC | pool F1 | pool precision | pool recall | "
        "images verified |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, block in results["strategies"].items():
        for row in block["curve"]:
            lines.append(
                f"| {name} | {row['cycle']} | {_cell(row, 'pairs_annotated', '.0f')} | "
                f"{_cell(row, 'answers_per_image', '.2f')} | {_cell(row, 'answers_same', '.1f')} | "
                f"{_cell(row, 'pairs_by_transitivity', '.0f')} | {_served(block, row['cycle'])} | "
                f"{_cell(row, 'mAP', with_std=True)} | {_cell(row, 'rank1')} | "
                f"{_cell(row, 'open_set_auc')} | {_cell(row, 'pairwise_f1', with_std=True)} | "
                f"{_cell(row, 'pairwise_precision')} | "
                f"{_cell(row, 'pairwise_recall')} | {_cell(row, 'images_verified', '.0f')} |"
            )
    lines += [
        "",
        "| strategy | answers per pool image to pool F1 0.8 | to 0.9 |",
        "|---|---|---|",
    ]
    for name in results["strategies"]:
        reach = s.get("answers_per_image_to_f1", {}).get(name, {})
        cells = ["not reached" if (c := reach.get(str(t))) is None else format(c, ".2f") for t in F1_TARGETS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    target = s.get("target_mAP")
    lines += [
        "",
        f"95% of skyline mAP = {'—' if target is None else format(target, '.3f')}; "
        f"AAS used {'—' if s.get('reference_pairs') is None else format(s['reference_pairs'], '.0f')} pairs "
        f"({'—' if s.get('reference_pairs_pct') is None else format(s['reference_pairs_pct'], '.4f')}%).",
        "",
        "| strategy | pairs to 95% of skyline (interp.) | identities then | seeds reaching it "
        "| mAP at AAS's pairs |",
        "|---|---|---|---|---|",
    ]
    for name in results["strategies"]:
        r = s["reach_target"].get(name, {})
        pairs = r.get("pairs_interpolated")
        ids = r.get("identities_at_cycle")
        at_ref = s["mAP_at_reference_pairs"].get(name)
        lines.append(
            f"| {name} | {'not reached' if pairs is None else format(pairs, '.0f')} | "
            f"{'—' if ids is None else format(ids, '.1f')} | "
            f"{r.get('seeds_reached', 0)}/{r.get('n_seeds', 0)} | "
            f"{'—' if at_ref is None else format(at_ref, '.3f')} |"
        )
    return "\n".join(lines) + "\n"
