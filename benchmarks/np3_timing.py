"""Time NP3 refinement at pool scale (target: 100k points, 5k constraints in under 1 s).

Synthetic but shaped like the real use: L2-normalised features around ~n/50 identities, a noisy
clustering (merged identities, split identities, 10% outliers) and answers sampled where they are
informative (cannot-links inside predicted clusters, must-links across them). A second scenario uses
uniformly random constraints, which ML-merge nearly everything into one giant impure cluster: the
worst case for the purification step. A third gives 2% of the pairs a second, opposite answer
(contradictions), under each policy.

    python benchmarks/np3_timing.py [--n 100000] [--constraints 5000] [--dim 128] [--repeats 3]

Prints one line per scenario and writes benchmarks/results/np3_timing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strategies.constraints import ConstraintGraph, ConstraintKind
from strategies.np3 import NP3


def make_pool(n: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, true identities, and a noisy clustering of them."""
    n_ids = max(2, n // 50)
    truth = rng.integers(0, n_ids, n)
    centres = rng.normal(size=(n_ids, dim)).astype(np.float32)
    feats = centres[truth] + 0.8 * rng.normal(size=(n, dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    labels = np.where(truth % 5 == 1, truth - 1, truth)  # under-segmentation: 1 id in 5 merged
    split = (truth % 7 == 0) & (rng.random(n) < 0.5)  # over-segmentation
    labels[split] = n_ids + truth[split]
    labels[rng.random(n) < 0.1] = -1  # outliers
    return feats, truth, labels


def partner(
    rows: np.ndarray, target_ids: np.ndarray, truth: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A random member of each target identity."""
    order = np.argsort(truth, kind="stable")
    start = np.searchsorted(truth[order], target_ids, side="left")
    count = np.searchsorted(truth[order], target_ids, side="right") - start
    return order[start + (rng.random(rows.size) * np.maximum(count, 1)).astype(np.int64)]


def informative_constraints(
    truth: np.ndarray, labels: np.ndarray, m: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n = truth.size
    n_ids = int(truth.max()) + 1
    # must-links: same identity, preferably split apart by the clustering
    a = rng.integers(0, n, 4 * m)
    b = partner(a, truth[a], truth, rng)
    ok = (a != b) & (labels[a] != labels[b])
    ml = np.stack([a[ok], b[ok]], axis=1)[: m // 2]
    # cannot-links: different identities inside one predicted cluster (the merged ids 5k, 5k+1)
    a = rng.integers(0, n, 8 * m)
    a = a[(truth[a] % 5 == 0) & (truth[a] + 1 < n_ids)]
    b = partner(a, truth[a] + 1, truth, rng)
    cl = np.stack([a, b], axis=1)[: m - len(ml)]
    return ml, cl


def random_constraints(n: int, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pairs = rng.integers(0, n, (m, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return pairs[: len(pairs) // 2], pairs[len(pairs) // 2 :]


def noisy_graph(ml: np.ndarray, cl: np.ndarray, flip: float, rng: np.random.Generator) -> ConstraintGraph:
    """Constraints in a random arrival order; a fraction of pairs also gets a second annotator's
    opposite answer (an ML and a CL on one pair: a contradiction the policy has to resolve)."""
    rows = [(int(i), int(j), ConstraintKind.MUST_LINK) for i, j in ml]
    rows += [(int(i), int(j), ConstraintKind.CANNOT_LINK) for i, j in cl]
    graph = ConstraintGraph()
    for k in rng.permutation(len(rows)):
        i, j, kind = rows[k]
        graph.add(f"a{k}", i, j, kind)
        if rng.random() < flip:
            other = (
                ConstraintKind.CANNOT_LINK if kind is ConstraintKind.MUST_LINK else ConstraintKind.MUST_LINK
            )
            graph.add(f"b{k}", i, j, other)
    return graph


def time_refine(
    np3: NP3, labels, feats, constraints, repeats: int
) -> tuple[list[float], list[float], object]:
    """Wall-clock and CPU seconds per run: on a shared, loaded machine the CPU time is the fair figure."""
    wall, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = np3.refine(labels, feats, constraints)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--constraints", type=int, default=5_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "np3_timing.json")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    feats, truth, labels = make_pool(args.n, args.dim, rng)
    ml, cl = informative_constraints(truth, labels, args.constraints, rng)
    scenarios = [
        ("informative, tuple input, ml_wins", NP3(), (ml, cl)),
        (
            "uniform random (giant impure cluster), ml_wins",
            NP3(),
            random_constraints(args.n, args.constraints, rng),
        ),
    ]
    noisy = noisy_graph(ml, cl, 0.02, rng)
    for policy in ("ml_wins", "cl_wins", "latest_wins"):
        scenarios.append((f"informative, 2% disputed pairs, graph input, {policy}", NP3(policy), noisy))

    load_before = os.getloadavg()
    report = {
        "n": args.n,
        "dim": args.dim,
        "constraints_requested": args.constraints,
        "repeats": args.repeats,
        "load_average_1_5_15_before": load_before,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scenarios": [],
    }
    print(
        f"NP3 timing: n={args.n} dim={args.dim}; load average {load_before[0]:.2f} on {os.cpu_count()} cores"
    )
    for name, np3, constraints in scenarios:
        n_ml = len(constraints[0]) if isinstance(constraints, tuple) else len(constraints.must_links())
        n_cl = len(constraints[1]) if isinstance(constraints, tuple) else len(constraints.cannot_links())
        times, cpu, result = time_refine(np3, labels, feats, constraints, args.repeats)
        median, median_cpu = statistics.median(times), statistics.median(cpu)
        print(
            f"  {name:58s} ML={n_ml:5d} CL={n_cl:5d}  wall median {median:.3f}s "
            f"(runs {', '.join(f'{t:.3f}' for t in times)})  cpu median {median_cpu:.3f}s  "
            f"changed={result.n_changed} contradictions={len(result.contradictions)}"
        )
        report["scenarios"].append(
            {
                "name": name,
                "must_links": n_ml,
                "cannot_links": n_cl,
                "seconds": times,
                "median_seconds": median,
                "cpu_seconds": cpu,
                "median_cpu_seconds": median_cpu,
                "n_changed": result.n_changed,
                "contradictions": len(result.contradictions),
            }
        )
    report["load_average_1_5_15_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
