"""One whole production cycle per pool size, on embeddings with the structure of real ones.

    python benchmarks/bench_cycle.py --sizes 20000 50000 --out benchmarks/results/cycle.json

Each size runs in its own process (so its peak RSS is its own): ``run_cycle`` exactly as the worker
runs it (review, identities, adapter training, the validation gate, calibration, sampling, saving a
model version) with a few hundred human answers, then the push's preparation (P(same) of every
proposed pair). Reported per size: seconds per stage, peak RSS, and the identity-neighbour recall of
the kNN graph the cycle uses: of each image's true same-identity images that could fit in its k
neighbours, the share the graph holds, beside the same figure for exact search (``--recall-sample``
queries).

Why not random vectors: on synthetic vectors whose 11th-30th neighbours are near-random every
approximate index looks bad. Here identities come from real ones: the offline MobileNetV2 features of
a real set (``--source``, default glyphs-plain, built from Debian packages on first use). A new
identity is a random mix of two real identity centres, and its views are that centre plus the
view-to-centre residuals of real images (another real identity's, shuffled), so distances between
and within identities keep the real set's scale and shape; 2-6 views per identity as in the real sets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"


def realistic(n: int, source: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit rows in identities of 2-6 views, built from real features (module docstring)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(labels)
    centres = np.stack([source[labels == i].mean(axis=0) for i in ids])
    residuals = [source[labels == i] - centres[k] for k, i in enumerate(ids)]
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(2, 7)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] < 1:
        sizes.pop()
        sizes[-1] += n - sum(sizes)
    out = np.empty((n, source.shape[1]), dtype=np.float32)
    out_labels = np.empty(n, dtype=np.int64)
    row = 0
    for identity, size in enumerate(sizes):
        a, b = rng.choice(len(ids), size=2, replace=False)
        w = rng.uniform(0.2, 0.8)
        centre = w * centres[a] + (1 - w) * centres[b]
        res = residuals[int(rng.integers(len(ids)))]
        picks = res[rng.integers(len(res), size=size)] * rng.uniform(0.8, 1.2, size=(size, 1))
        out[row : row + size] = centre + picks
        out_labels[row : row + size] = identity
        row += size
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, out_labels


def answers(labels: np.ndarray, knn_indices: np.ndarray, n_answers: int, seed: int) -> Any:
    """Human answers as a cycle sees them: kNN pairs answered by the ground truth."""
    from strategies.constraints import ConstraintGraph, ConstraintKind

    rng = np.random.default_rng(seed)
    graph = ConstraintGraph()
    rows = rng.choice(labels.size, size=min(n_answers, labels.size), replace=False)
    for k, i in enumerate(rows):
        j = int(knn_indices[i, 1 + int(rng.integers(min(5, knn_indices.shape[1] - 1)))])
        kind = ConstraintKind.MUST_LINK if labels[i] == labels[j] else ConstraintKind.CANNOT_LINK
        if i != j:
            graph.add(str(k), int(min(i, j)), int(max(i, j)), kind)
    return graph


def identity_recall(indices: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> float:
    """Share of each query's same-identity images (up to k - 1 of them) that its neighbour list holds;
    ``indices``: a kNN graph over every row (column 0: the row itself)."""
    return _recall_rows(indices[queries], labels, queries)


def run_size(n: int, source_name: str, seed: int, n_answers: int, recall_sample: int) -> dict[str, Any]:
    import tempfile

    import faiss

    from strategies.knn import build_knn
    from trainer.cycle import CycleConfig, run_cycle
    from trainer.registry import ModelRegistry
    from trainer.simulate.datasets import load_dataset

    t0 = time.perf_counter()
    real = load_dataset(source_name)
    x, labels = realistic(n, real.features, real.labels, seed)
    generated_s = time.perf_counter() - t0
    config = CycleConfig(strategy="hybrid")
    t1 = time.perf_counter()
    knn = build_knn(x, config.knn_k)  # the cycle's own graph (exact up to EXACT_KNN_MAX, else approximate)
    knn_s = time.perf_counter() - t1
    graph = answers(labels, knn.indices, n_answers, seed)
    queries = np.random.default_rng(seed).choice(n, size=min(recall_sample, n), replace=False)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, exact_idx = exact.search(x[queries], config.knn_k)
    del exact  # a pool-sized copy of the features: not part of the cycle's memory
    recall_exact = _recall_rows(np.asarray(exact_idx), labels, queries)
    recall_graph = identity_recall(knn.indices, labels, queries)
    with tempfile.TemporaryDirectory(prefix="bench-cycle-") as tmp:
        t2 = time.perf_counter()
        result = run_cycle(x, graph, config, registry=ModelRegistry(Path(tmp), "1"),
                           log=lambda message: print(f"  {message}", file=sys.stderr, flush=True))
        cycle_s = time.perf_counter() - t2
    from ml_backend.push import p_same_of

    t3 = time.perf_counter()
    proposals = result.proposals
    p_same_of(result.embeddings, [p.i for p in proposals], [p.j for p in proposals], result.calibrator)
    push_s = time.perf_counter() - t3
    return {
        "n": n,
        "dim": int(x.shape[1]),
        "identities": int(labels.max()) + 1,
        "answers": len(graph),
        "generate_s": round(generated_s, 2),
        "knn_s": round(knn_s, 2),
        "cycle_s": round(cycle_s, 2),
        "push_prepare_s": round(push_s, 3),
        "stages_s": {k: round(float(v), 2) for k, v in result.timings.items()},
        "served": result.gate.served if result.gate is not None else None,
        "train_steps": result.train_result.steps if result.train_result is not None else 0,
        "train_clusters": result.train_result.clusters if result.train_result is not None else 0,
        "proposals": len(proposals),
        "identity_neighbour_recall": {"graph": round(recall_graph, 4), "exact": round(recall_exact, 4),
                                      "queries": int(queries.size), "k": int(config.knn_k)},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def _recall_rows(rows: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> float:
    """identity_recall for neighbour lists given only for the query rows (``rows[r]`` belongs to
    ``queries[r]``; the query itself, wherever it stands, is not counted)."""
    sizes = np.bincount(labels)
    k = rows.shape[1] - 1
    found = wanted = 0
    for r, q in enumerate(queries):
        mates = min(int(sizes[labels[q]]) - 1, k)
        if mates <= 0:
            continue
        others = rows[r][rows[r] != q][:k]
        found += min(int((labels[others] == labels[q]).sum()), mates)
        wanted += mates
    return found / wanted if wanted else float("nan")


def write_markdown(path: Path, payload: dict[str, Any]) -> None:
    rows = payload["sizes"]
    stages = sorted({s for r in rows for s in r["stages_s"]}, key=lambda s: list(rows[0]["stages_s"]).index(s)
                    if s in rows[0]["stages_s"] else 99)
    lines = [
        "# One production cycle per pool size",
        "",
        f"`{payload['command']}` on {payload['machine']} (1-min load average {payload['load_before']:.2f} "
        f"before, {payload['load_after']:.2f} after). Embeddings: {payload['source']} features, identities "
        "re-mixed from real ones (benchmarks/bench_cycle.py says how).",
        "",
        "| images | identities | answers | kNN graph s | cycle s | " + " | ".join(stages)
        + " | peak RSS GB | identity-neighbour recall (graph / exact) |",
        "|---" * (7 + len(stages)) + "|",
    ]
    for r in rows:
        rec = r["identity_neighbour_recall"]
        lines.append(
            f"| {r['n']} | {r['identities']} | {r['answers']} | {r['knn_s']} | {r['cycle_s']} | "
            + " | ".join(str(r["stages_s"].get(s, "-")) for s in stages)
            + f" | {r['peak_rss_gb']} | {rec['graph']} / {rec['exact']} |"
        )
    lines += ["", "![cycle](" + path.with_suffix(".png").name + ")", ""]
    path.write_text("\n".join(lines))


def write_plot(path: Path, payload: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["sizes"]
    stages = [s for s in rows[0]["stages_s"] if s != "total"]
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(rows))
    for stage in stages:
        values = np.array([r["stages_s"].get(stage, 0.0) for r in rows])
        ax.bar([str(r["n"]) for r in rows], values, bottom=bottom, label=stage)
        bottom += values
    ax.set_xlabel("pool images")
    ax.set_ylabel("seconds")
    ax.set_title("one production cycle, by stage")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 50000])
    parser.add_argument("--source", default="glyphs-plain", help="real set whose features are re-mixed")
    parser.add_argument("--answers", type=int, default=300, help="human answers the cycle starts from")
    parser.add_argument("--recall-sample", type=int, default=2000, help="queries for the recall figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "cycle.json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one size, JSON out
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_size(args.one, args.source, args.seed, args.answers, args.recall_sample)))
        return 0
    from _machine import cpu_model

    load_before = os.getloadavg()[0]
    rows = []
    for n in args.sizes:
        print(f"cycle at {n} images ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--source", args.source,
                               "--answers", str(args.answers), "--recall-sample", str(args.recall_sample),
                               "--seed", str(args.seed)], stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:  # the child's log and traceback went to stderr as it ran
            return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    payload = {
        "command": "python benchmarks/bench_cycle.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs ({cpu_model()})",
        "source": args.source,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "sizes": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(args.out.with_suffix(".md"), payload)
    write_plot(args.out.with_suffix(".png"), payload)
    print(f"wrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
