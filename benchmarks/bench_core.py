"""Core pipeline benchmark: kNN, k-reciprocal Jaccard, DBSCAN, FINCH (ours vs finch-clust), NP3.

Synthetic pool with identity structure (identities of varied sizes, a shared "camera" bias, 10% noise
images). Every stage runs in its own subprocess so that its peak resident memory (``ru_maxrss``, which
sees faiss/BLAS/numpy C allocations, unlike tracemalloc) is its own; inputs and outputs travel through
``.npy``/``.npz`` files in a scratch folder. Figures are wall-clock on whatever else the machine is
running: the 1-minute load average before and after each stage is recorded next to it.

    python benchmarks/bench_core.py --sizes 10000 50000 100000 --dim 512 \\
        --out benchmarks/results/core.json [--skip-finch-clust]

Writes the JSON, a markdown table (core.md) and a plot (core.png) next to ``--out``.
finch-clust runs in its exact cosine mode (``ann_threshold > n``), which builds dense n×n matrices:
it is skipped (and said so) where that cannot fit in the memory available.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = (
    "knn", "knn_approx", "jaccard", "dbscan", "finch", "finch_knn", "finch_clust", "finch_clust_rank", "np3"
)


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def available_bytes() -> int:
    """Memory available to a new process (MemAvailable), falling back to free physical pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# ----------------------------------------------------------------------------------------------- data
def make_pool(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised features and true identities (noise images are singleton identities)."""
    rng = np.random.default_rng(seed)
    n_noise = n // 10
    sizes: list[int] = []
    while sum(sizes) < n - n_noise:
        sizes.append(int(min(80, 1 + rng.geometric(1 / 9))))  # 1..80 images, mean ~9
    sizes[-1] -= sum(sizes) - (n - n_noise)
    n_ids = len(sizes)
    truth = np.concatenate([np.repeat(np.arange(n_ids), sizes), n_ids + np.arange(n_noise)])
    centres = rng.normal(size=(n_ids + n_noise, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.8, 1.5, size=n_ids + n_noise).astype(np.float32)  # per-identity noise ratio
    noise = rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    cameras = rng.normal(size=(8, dim)).astype(np.float32) / np.sqrt(dim)
    x = centres[truth] + spread[truth, None] * noise + 0.6 * cameras[rng.integers(0, 8, size=n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return np.ascontiguousarray(x[perm], dtype=np.float32), truth[perm]


def consistent_constraints(truth: np.ndarray, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """m random constraints consistent with the truth: half must-links, half cannot-links."""
    rng = np.random.default_rng(seed)
    order = np.argsort(truth, kind="stable")
    _, start, count = np.unique(truth[order], return_index=True, return_counts=True)
    multi = np.flatnonzero(count >= 2)
    pick = multi[rng.choice(multi.size, size=m // 2, p=count[multi] / count[multi].sum())]
    a = (rng.random(pick.size) * count[pick]).astype(np.int64)
    b = (a + 1 + (rng.random(pick.size) * (count[pick] - 1)).astype(np.int64)) % count[pick]
    ml = np.stack([order[start[pick] + a], order[start[pick] + b]], axis=1)
    cl: list[np.ndarray] = []
    while sum(len(c) for c in cl) < m - m // 2:
        i, j = rng.integers(0, truth.size, size=(2, m))
        cl.append(np.stack([i, j], axis=1)[truth[i] != truth[j]])
    return ml, np.concatenate(cl)[: m - m // 2]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


# --------------------------------------------------------------------------------------------- stages
def run_stage(stage: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Body of one subprocess: load inputs, time the stage, save outputs, return figures."""
    from strategies.clustering import FINCH, DBSCANClusterer
    from strategies.defaults import KNN_K
    from strategies.jaccard import jaccard_distance
    from strategies.knn import KnnGraph, approximate_recall, build_knn

    x = np.load(work / "features.npy")
    truth = np.load(work / "truth.npy")
    n = x.shape[0]
    extra: dict[str, Any] = {}

    def load_knn() -> KnnGraph:
        z = np.load(work / "knn.npz")
        return KnnGraph(z["indices"], z["similarities"])

    inputs: dict[str, Any] = {}
    if stage in ("jaccard", "finch_knn", "finch_clust_rank"):
        inputs["knn"] = load_knn()
    if stage == "dbscan":
        import scipy.sparse as sp

        inputs["dist"] = sp.load_npz(work / "jaccard.npz")
    if stage == "np3":
        inputs["labels"] = np.load(work / "dbscan.npy")
        inputs["ml"], inputs["cl"] = consistent_constraints(truth, args.constraints, args.seed)
    if stage in ("finch_clust", "finch_clust_rank"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from finch import FINCH as finch_clust
    rss_before = rss_bytes()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()

    if stage == "knn":
        g = build_knn(x, KNN_K, exact_max=args.exact_max, n_threads=args.threads)
        seconds = time.perf_counter() - t0
        np.savez(work / "knn.npz", indices=g.indices, similarities=g.similarities)
        exact = n <= args.exact_max
        extra["mode"] = "exact IndexFlatIP" if exact else "HNSW"
        if not exact:
            extra["recall@30"] = round(approximate_recall(x, g, n_queries=1000, n_threads=args.threads), 4)
    elif stage == "knn_approx":
        g = build_knn(x, KNN_K, exact_max=0, approximate=args.approx_kind, n_threads=args.threads)
        seconds = time.perf_counter() - t0
        extra["mode"] = f"{args.approx_kind.upper()} (forced)"
        extra["recall@30"] = round(approximate_recall(x, g, n_queries=1000, n_threads=args.threads), 4)
    elif stage == "jaccard":
        dist = jaccard_distance(x, knn=inputs["knn"])
        seconds = time.perf_counter() - t0
        import scipy.sparse as sp

        sp.save_npz(work / "jaccard.npz", dist, compressed=False)
        extra["nnz"] = int(dist.nnz)
        extra["stored_zeros"] = int(dist.nnz - np.count_nonzero(dist.data))
    elif stage == "dbscan":
        labels = DBSCANClusterer().fit_predict(inputs["dist"])
        seconds = time.perf_counter() - t0
        np.save(work / "dbscan.npy", labels)
        from sklearn.metrics import adjusted_rand_score

        extra["clusters"] = int(labels.max() + 1)
        extra["outliers"] = int((labels == -1).sum())
        singleton = np.where(labels == -1, labels.max() + 1 + np.arange(n), labels)
        extra["ARI_vs_truth"] = round(float(adjusted_rand_score(truth, singleton)), 4)
    elif stage in ("finch", "finch_knn"):
        result = FINCH(n_threads=args.threads).fit(x, knn=inputs.get("knn"))
        seconds = time.perf_counter() - t0
        np.save(work / f"{stage}.npy", np.stack(result.partitions, axis=1))
        extra["n_clusters"] = result.n_clusters
        extra["mode"] = "exact" if n <= args.exact_max else "HNSW candidates"
        if stage == "finch_knn" and (work / "finch.npy").exists():
            ours = np.load(work / "finch.npy")
            extra["same_as_own_search"] = bool(
                ours.shape == (n, len(result.partitions))
                and all(same_partition(ours[:, i], p) for i, p in enumerate(result.partitions))
            )
    elif stage == "finch_clust":
        # ensure_early_exit=False: the flag is a no-op in finch-clust 0.2.3 (tests/test_clustering.py
        # checks it), but with it on the reference also allocates two more dense n×n matrices.
        c, counts, _ = finch_clust(x, distance="cosine", ann_threshold=n + 1, ensure_early_exit=False)
        seconds = time.perf_counter() - t0
        c = np.asarray(c).reshape(n, -1)
        ours = np.load(work / "finch.npy")
        extra["n_clusters"] = [int(v) for v in counts]
        extra["identical_to_ours"] = bool(
            ours.shape == c.shape and all(same_partition(ours[:, i], c[:, i]) for i in range(c.shape[1]))
        )
    elif stage == "finch_clust_rank":
        # finch-clust handed the level-0 first neighbours (its `initial_rank`), as finch_knn is handed the
        # kNN graph: this skips its dense n×n level-0 matrix and compares the two on the remaining levels
        first = inputs["knn"].indices[:, 1]
        c, counts, _ = finch_clust(x, initial_rank=first, distance="cosine", ann_threshold=n + 1,
                                   ensure_early_exit=False)
        seconds = time.perf_counter() - t0
        c = np.asarray(c).reshape(n, -1)
        ours = np.load(work / "finch_knn.npy")
        extra["n_clusters"] = [int(v) for v in counts]
        extra["identical_to_finch_knn"] = bool(
            ours.shape == c.shape and all(same_partition(ours[:, i], c[:, i]) for i in range(c.shape[1]))
        )
    elif stage == "np3":
        from strategies.np3 import NP3

        result = NP3().refine(inputs["labels"], x, (inputs["ml"], inputs["cl"]))
        seconds = time.perf_counter() - t0
        lab = result.labels
        ml, cl = inputs["ml"], inputs["cl"]
        ml_ok = (lab[ml[:, 0]] == lab[ml[:, 1]]) & (lab[ml[:, 0]] >= 0)
        cl_ok = (lab[cl[:, 0]] != lab[cl[:, 1]]) | (lab[cl[:, 0]] == -1)
        extra["constraints"] = f"{len(ml)} ML + {len(cl)} CL"
        extra["all_satisfied"] = bool(ml_ok.all() and cl_ok.all())
        extra["n_changed"] = int(result.n_changed)
    else:
        raise ValueError(f"unknown stage {stage!r}")

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {
        "stage": stage,
        "n": n,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak / 2**20, 1),
        "peak_over_inputs_mb": round(max(0, peak - rss_before) / 2**20, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        **extra,
    }


def spawn(stage: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--stage", stage, "--workdir", str(work), "--constraints",
           str(args.constraints), "--seed", str(args.seed), "--exact-max", str(args.exact_max),
           "--approx-kind", args.approx_kind]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        if proc.returncode < 0:
            why.append(f"killed by signal {-proc.returncode} ({signal.Signals(-proc.returncode).name})")
        return {"stage": stage, "error": why or [f"exit status {proc.returncode}"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------- reports
def machine_line() -> str:
    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line)
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} CPUs (nproc), {mem:.0f} GiB RAM, {platform.platform()}"


def fmt(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"| {row.get('n', '')} | {row['stage']} | error | | | {' '.join(row['error'])} |"
    if "skipped" in row:
        return f"| {row['n']} | {row['stage']} | skipped | | | {row['skipped']} |"
    skip = {"stage", "n", "seconds", "peak_rss_mb", "peak_over_inputs_mb", "load_before", "load_after"}
    notes = "; ".join(f"{k}={v}" for k, v in row.items() if k not in skip)
    return (f"| {row['n']} | {row['stage']} | {row['seconds']:.2f} | {row['peak_rss_mb']:.0f} | "
            f"{row['peak_over_inputs_mb']:.0f} | load {row['load_before']}->{row['load_after']}; {notes} |")


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Speed-ups against finch-clust and the NP3 target, from whatever rows exist."""
    got = {(r.get("n"), r["stage"]): r for r in rows if "seconds" in r}
    lines = []
    for n in sorted({r.get("n", 0) for r in rows}):
        for ours, ref, what in (("finch", "finch_clust", "own 1-NN search vs exact finch-clust"),
                                ("finch_knn", "finch_clust", "reusing the kNN graph vs exact finch-clust"),
                                ("finch_knn", "finch_clust_rank", "both handed the first neighbours")):
            if (n, ours) in got and (n, ref) in got:
                a, b = got[n, ours], got[n, ref]
                same = b.get("identical_to_ours", b.get("identical_to_finch_knn"))
                speed = b["seconds"] / a["seconds"]
                lines.append(
                    f"n={n}: FINCH {speed:.1f}x faster ({what}: {a['seconds']:.2f} s vs "
                    f"{b['seconds']:.2f} s; peak RSS {a['peak_rss_mb']:.0f} vs {b['peak_rss_mb']:.0f} MB); "
                    f"identical partitions: {same}"
                )
        if (n, "np3") in got:
            r = got[n, "np3"]
            lines.append(f"n={n}: NP3 with {r.get('constraints')} took {r['seconds']:.2f} s "
                         f"(target < 1 s at 100k); all constraints satisfied: {r.get('all_satisfied')}")
    return lines


def write_reports(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> str:
    lines = [
        "| n | stage | seconds | peak RSS MB | peak over inputs MB | notes |",
        "|---|---|---|---|---|---|",
        *[fmt(r) for r in rows],
    ]
    table = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    md = out.with_suffix(".md")
    commands = "\n".join(f"    {c}" for c in meta["commands"])
    md.write_text(
        "# Core benchmark\n\n"
        f"Commands:\n\n{commands}\n\nMachine: {meta['machine']}\n\n"
        f"Load: 1-minute load average {meta['load_start']} at start, {meta['load_end']} at end of the last "
        "command (shared machine; per-stage load in the notes).\n\n" + table + "\n\n"
        + "\n".join(f"- {line}" for line in summary(rows)) + "\n"
    )
    return table


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "seconds" in r]
    sizes = sorted({r["n"] for r in ok})
    stages = [s for s in STAGES if any(r["stage"] == s for r in ok)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(1, len(stages))
    for k, stage in enumerate(stages):
        mine = {r["n"]: r for r in ok if r["stage"] == stage}
        secs = [mine[n]["seconds"] if n in mine else np.nan for n in sizes]
        mem = [mine[n]["peak_rss_mb"] if n in mine else np.nan for n in sizes]
        pos = np.arange(len(sizes)) + k * width
        axes[0].bar(pos, secs, width, label=stage)
        axes[1].bar(pos, mem, width, label=stage)
    for ax, title in zip(axes, ("wall-clock seconds (log)", "peak RSS MB (log)"), strict=True):
        ax.set_xticks(np.arange(len(sizes)) + 0.4 - width / 2, [f"n={n:,}" for n in sizes])
        ax.set_yscale("log")
        ax.set_title(title)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle("reid-al core stages (shared 2-core machine; see core.md for load)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "core.json")
    parser.add_argument("--skip-finch-clust", action="store_true", help="skip the finch-clust reference")
    parser.add_argument("--approx-max-n", type=int, default=10_000,
                        help="also time a forced approximate kNN (with recall) up to this size")
    parser.add_argument("--approx-kind", choices=("hnsw", "ivf"), default="hnsw",
                        help="index of the knn_approx stage")
    parser.add_argument("--constraints", type=int, default=5000, help="NP3 constraints (half ML, half CL)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="faiss threads (default: faiss's own)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="stages to run (later stages read earlier stages' outputs)")
    parser.add_argument("--append", action="store_true",
                        help="merge into an existing --out JSON (same n and stage are replaced)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    from strategies.defaults import EXACT_KNN_MAX

    parser.add_argument("--exact-max", type=int, default=EXACT_KNN_MAX, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.stage:  # child process
        print(json.dumps(run_stage(args.stage, args.workdir, args)))
        return 0

    rows: list[dict[str, Any]] = []
    commands: list[str] = []
    if args.append and args.out.exists():
        previous = json.loads(args.out.read_text())
        rows = previous["results"]
        commands = previous["meta"].get("commands", [previous["meta"].get("command", "")])
    load_start = round(os.getloadavg()[0], 2)
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"bench_core_{n}_"))
        try:
            x, truth = make_pool(n, args.dim, args.seed)
            np.save(work / "features.npy", x)
            np.save(work / "truth.npy", truth)
            del x, truth
            skip_approx = n > args.approx_max_n
            stages = [s for s in args.stages if not (s == "knn_approx" and skip_approx)]
            for stage in stages:
                row = guard(stage, n, args) or spawn(stage, work, args)
                row.setdefault("n", n)
                rows = [r for r in rows if (r.get("n"), r["stage"]) != (n, stage)] + [row]
                print(fmt(row), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    rows.sort(key=lambda r: (r.get("n", 0), STAGES.index(r["stage"])))
    commands.append("python benchmarks/bench_core.py " + " ".join(sys.argv[1:] if argv is None else argv))
    meta = {
        "commands": commands,
        "machine": machine_line(),
        "dim": args.dim,
        "load_start": load_start,
        "load_end": round(os.getloadavg()[0], 2),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    table = write_reports(rows, meta, args.out)
    plot(rows, args.out.with_suffix(".png"))
    print(f"\n{meta['machine']}\n\n{table}")
    return 0


def guard(stage: str, n: int, args: argparse.Namespace) -> dict[str, Any] | None:
    """A 'skipped' row when a stage cannot or should not run at this size, else None."""
    if stage in ("finch_clust", "finch_clust_rank") and args.skip_finch_clust:
        return {"stage": stage, "n": n, "skipped": "--skip-finch-clust"}
    if stage in ("finch_clust", "finch_clust_rank"):
        # exact mode holds one dense float32 n×n at level 0; with initial_rank given, one float64 m×m at
        # level 1 (m ~ n/3.5 first-neighbour clusters on this data), twice over while it is computed
        need = 4 * n * n * 1.3 + 2**30 if stage == "finch_clust" else 2 * 8 * (n / 3) ** 2 + 2**30
        free = available_bytes()
        if need > 0.8 * free:
            why = f"needs ~{need / 2**30:.0f} GiB of dense matrices, {free / 2**30:.0f} GiB available"
            return {"stage": stage, "n": n, "skipped": why}
    return None


if __name__ == "__main__":
    sys.exit(main())
