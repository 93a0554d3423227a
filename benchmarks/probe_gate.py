"""How often does the validation gate's held-out score pick the model that is better on the test
identities? A measurement of the gate, not a product change.

The simulator knows what the product cannot: each model's retrieval mAP on identities that were never
in the pool. This script runs the simulator unchanged and, at every gate decision, records for the
candidate, the frozen encoder and the model in service: that test mAP, the gate's score and its parts
(``map``: held-out images ranked against the pool; ``auc``: held-out "same" against "different"
pairs), two variants (``map_verified``: ranked against verified images only; ``map_fair``: the pool
ranking on the held-out identities that no question proposed by either contestant built), and then
how often each score orders a pair of models the way their test mAP does.

``--oracle`` replaces the gate's decision by the model with the best test mAP (ties: the model in
service): an upper bound for any judge of held-out answers, run to see what a fair judge would be worth.

    python benchmarks/probe_gate.py --dataset glyphs-plain --strategies hybrid,match_first --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trainer.cycle as cycle_module  # noqa: E402
from benchmarks._machine import cpu_model  # noqa: E402
from trainer import gate as gate_module  # noqa: E402
from trainer.adapter import apply_adapter  # noqa: E402
from trainer.simulate import SimulationConfig, load_dataset, runner  # noqa: E402
from trainer.simulate.runner import Simulation  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SCORES = ("score", "map", "auc", "map_verified", "map_fair", "match_precision")
MATCHES = 31  # likely matches per model for match_precision: half of a glyphs-plain cycle's answers
TIE = 0.003  # test mAP differences below this are not counted as an order


class Probe:
    """What the gate cannot see: the adapters behind its embeddings, who proposed each pair, the test set."""

    def __init__(self, oracle: bool = False) -> None:
        self.rows: list[dict[str, Any]] = []
        self.oracle = oracle
        self.reset("")

    def reset(self, run: str) -> None:
        self.run, self.model, self.proposer = run, "frozen", {}
        self.candidate: dict[str, Any] | None = None
        self.in_service: dict[str, Any] | None = None
        self.dataset: Any = None
        self.split: Any = None

    def test_map(self, state: dict[str, Any] | None) -> float:
        full = apply_adapter(state, self.dataset.features)
        labels = np.zeros(self.split.pool.size, dtype=np.int64)
        return float(runner.evaluate(full, labels, self.dataset, self.split)["mAP"])

    def match_precision(self, x: np.ndarray, holdout: gate_module.Holdout) -> float:
        """How many of a model's most likely unresolved matches are true (the simulator's ground truth):
        what judging each model by the confirmed share of its own proposals would measure."""
        labels = np.asarray(self.dataset.labels)[self.split.pool]
        comp = holdout.components
        cannot = np.concatenate([holdout.train_cannot_link.reshape(-1, 2), holdout.negatives.reshape(-1, 2)])
        apart = {(min(comp[a], comp[b]), max(comp[a], comp[b])) for a, b in cannot.tolist()}
        pairs = _likely_matches(np.asarray(x), comp, apart, MATCHES)
        return float(np.mean([labels[i] == labels[j] for i, j in pairs])) if pairs else math.nan

    def fair(self, holdout: gate_module.Holdout, models: set[str]) -> gate_module.Holdout:
        """The held-out identities that no pair proposed by one of ``models`` helped build."""
        comp = holdout.components
        built = {int(comp[i]) for (i, j), m in self.proposer.items()
                 if m in models and holdout.images[i] and comp[i] == comp[j]}
        bad = np.isin(comp, sorted(built))
        pos = holdout.positives
        if pos.size:
            pos = pos[~bad[pos[:, 0]]]
        return dataclasses.replace(holdout, scored=holdout.scored & ~bad, positives=pos)


def _likely_matches(x: np.ndarray, comp: np.ndarray, apart: set[tuple[int, int]],
                    k: int) -> list[tuple[int, int]]:
    """A model's ``k`` most likely unresolved matches, one per pair of must-link components: what it
    would propose as likely matches (match-first) from its own embedding."""
    sims = x @ x.T
    sims[comp[:, None] == comp[None, :]] = -np.inf
    order = np.argsort(-sims, axis=None, kind="stable")
    out: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for flat in order:
        i, j = divmod(int(flat), x.shape[0])
        if i >= j:
            continue
        key = (min(comp[i], comp[j]), max(comp[i], comp[j]))
        if key in seen or key in apart:
            continue
        seen.add(key)
        out.append((i, j))
        if len(out) == k:
            break
    return out


def _install(probe: Probe) -> None:
    run_cycle, decide = cycle_module.run_cycle, gate_module.ValidationGate.decide
    train, in_service, evaluate = cycle_module.train_adapter, cycle_module._in_service, runner.evaluate

    def traced_train(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = train(*args, **kwargs)
        probe.candidate = result.adapter_state
        return result

    def traced_in_service(registry, d):  # type: ignore[no-untyped-def]
        service = in_service(registry, d)
        probe.in_service = service.adapter_state
        return service

    def traced_evaluate(emb, labels, dataset, split):  # type: ignore[no-untyped-def]
        probe.dataset, probe.split = dataset, split
        return evaluate(emb, labels, dataset, split)

    def traced_cycle(features, constraints, config=None, **kw):  # type: ignore[no-untyped-def]
        result = run_cycle(features, constraints, config, **kw)
        if result.metrics["served"] == "candidate":
            probe.model = str(result.version)
        elif result.metrics["served"] == "frozen":
            probe.model = "frozen"
        for item in [*result.reviews, *result.proposals]:
            pair = (min(int(item.i), int(item.j)), max(int(item.i), int(item.j)))
            probe.proposer.setdefault(pair, probe.model)
        return result

    def traced_decide(self, holdout, embeddings, incumbent):  # type: ignore[no-untyped-def]
        decision = decide(self, holdout, embeddings, incumbent)
        if "candidate" not in embeddings or not self.can_validate(holdout) or probe.dataset is None:
            return decision
        states = {"candidate": probe.candidate, "frozen": None}
        if "previous" in embeddings:
            states["previous"] = probe.in_service
        row: dict[str, Any] = {"run": probe.run, "incumbent": incumbent, "served": decision.served,
                               "positives": int(holdout.positives.shape[0]),
                               "negatives": int(holdout.negatives.shape[0])}
        fair = probe.fair(holdout, {"frozen", probe.model})
        for name, state in states.items():
            x = embeddings[name]
            scores = self.score(x, holdout)
            row[name] = {"test_map": probe.test_map(state), "score": scores["score"], "map": scores["map"],
                         "auc": scores.get("auc", math.nan),
                         "map_verified": gate_module._verified_map(x, holdout, max_gallery=0),
                         "map_fair": gate_module._verified_map(x, fair),
                         "match_precision": probe.match_precision(x, holdout)}
        probe.rows.append(row)
        if probe.oracle:
            best = max(states, key=lambda m: (row[m]["test_map"], m == incumbent))
            row["oracle"] = best
            why = f"oracle judge: {best} has the best test mAP"
            return dataclasses.replace(decision, served=best, reason=why)
        return decision

    cycle_module.run_cycle, cycle_module.train_adapter = traced_cycle, traced_train
    cycle_module._in_service = traced_in_service
    runner.evaluate = traced_evaluate
    gate_module.ValidationGate.decide = traced_decide


def agreement(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per score: of the model pairs (candidate against frozen, candidate against the model in service)
    whose test mAP differs by TIE or more, how many the score orders the same way."""
    out = {s: {"agree": 0, "pairs": 0} for s in SCORES}
    for row in rows:
        for other in ("frozen", "previous"):
            if other not in row:
                continue
            truth = row["candidate"]["test_map"] - row[other]["test_map"]
            if abs(truth) < TIE:
                continue
            for s in SCORES:
                said = row["candidate"][s] - row[other][s]
                if math.isfinite(said):
                    out[s]["pairs"] += 1
                    out[s]["agree"] += int((said > 0) == (truth > 0))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="glyphs-plain")
    ap.add_argument("--strategies", default="hybrid")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--oracle", action="store_true", help="serve the model with the best test mAP")
    ap.add_argument("--gate", action="append", default=[], metavar="FIELD=VALUE",
                    help="a ValidationGate parameter for the run, repeatable (e.g. min_negatives=5)")
    ap.add_argument("--noise-rate", type=float, default=0.0, help="share of wrong answers (as in simulate)")
    ap.add_argument("--unsure-rate", type=float, default=0.0, help="share of unsure answers (as in simulate)")
    ap.add_argument("--out", type=Path, default=None, help="default: results/gate_probe_<dataset>[_oracle]")
    args = ap.parse_args(argv)
    suffix = "_oracle" if args.oracle else "".join(f"_{item.replace('=', '')}" for item in args.gate)
    out_path = args.out or RESULTS / f"gate_probe_{args.dataset}{suffix}"
    probe = Probe(oracle=args.oracle)
    _install(probe)
    dataset = load_dataset(args.dataset)
    t0 = time.perf_counter()
    runs: dict[str, list[dict[str, float]]] = {}
    for strategy in args.strategies.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            probe.reset(f"{strategy} seed {seed}")
            config = SimulationConfig(strategies=(strategy,), seeds=(seed,), skyline=False,
                                      noise_rate=args.noise_rate, unsure_rate=args.unsure_rate,
                                      cycle_params={f"gate.{k}": int(v) if v.isdigit() else v for k, v in
                                                    (item.split("=", 1) for item in args.gate)})
            with tempfile.TemporaryDirectory() as work:
                curve = Simulation(config, work_dir=work).run(dataset)["strategies"][strategy]["curve"]
            runs[probe.run] = [{"mAP": c["mAP"]["mean"], "pool_f1": c["pairwise_f1"]["mean"]} for c in curve]
            print(f"{probe.run}: {sum(r['run'] == probe.run for r in probe.rows)} decisions", flush=True)
    agree = agreement(probe.rows)
    given = argv if argv is not None else sys.argv[1:]
    result = {
        "dataset": args.dataset, "oracle": args.oracle, "runs": runs, "decisions": probe.rows,
        "agreement": agree,
        "wall_s": time.perf_counter() - t0,
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, 1-minute load {os.getloadavg()[0]:.1f} "
                   "at the end",
        "command": "python benchmarks/probe_gate.py " + " ".join(given),
    }
    out_path.with_suffix(".json").write_text(json.dumps(result, indent=1))
    text = render(result)
    out_path.with_suffix(".md").write_text(text)
    print(text)
    return 0


def render(result: dict[str, Any]) -> str:
    """The write-up of one probe (``result`` as saved in its JSON)."""
    title = f"Does the gate's held-out score order models as the test identities do? ({result['dataset']})"
    lines = [f"# {title}", "", f"Command: `{result['command']}`", "", f"Machine: {result['machine']}", "",
             "| score | agrees with test mAP |", "|---|---|"]
    lines += [f"| {s} | {a['agree']} of {a['pairs']} |" for s, a in result["agreement"].items()]
    lines += ["", "| run | held-out mAP per cycle | pool F1 per cycle |", "|---|---|---|"]
    for run, curve in result["runs"].items():
        lines.append(f"| {run} | " + ", ".join(f"{c['mAP']:.3f}" for c in curve) + " | "
                     + ", ".join(f"{c['pool_f1']:.3f}" for c in curve) + " |")
    served = "served by the oracle (the gate's choice)" if result["oracle"] else "served"
    lines += ["", f"| run | incumbent → {served} | held-out same / different | test mAP: candidate, frozen, "
              "in service | gate score: candidate, frozen, in service |", "|---|---|---|---|---|"]
    for r in result["decisions"]:
        models = [m for m in ("candidate", "frozen", "previous") if m in r]
        test = ", ".join(f"{r[m]['test_map']:.3f}" for m in models)
        said = ", ".join(f"{r[m]['score']:.3f}" for m in models)
        choice = f"{r['oracle']} ({r['served']})" if "oracle" in r else r["served"]
        lines.append(f"| {r['run']} | {r['incumbent']} → {choice} | "
                     f"{r['positives']} / {r['negatives']} | {test} | {said} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
