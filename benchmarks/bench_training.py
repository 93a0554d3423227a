"""Adapter training time per cycle (trainer/adapter.py) at 10k and 100k images, 512-d synthetic features.

What one retraining cycle pays for the adapter: ``train_adapter`` with the default ``TrainConfig``
(all four loss terms, the SpCL-style fixed iteration cap per epoch) on frozen features, then
``apply_adapter`` over the whole pool (the re-embedding). The pool is synthetic with the structure a
Re-ID pool has: identities of ~10 images, a per-camera offset vector, noise; pseudo-labels are the
identities with 10% of the rows turned into outliers (-1); 250 must-link and 250 cannot-link human
pairs. Clustering is not timed here (see bench_core.py).

Timings are wall-clock on whatever else the machine runs: the 1-minute load average before and after
each run is recorded next to it. ``--threads`` sets torch's CPU threads for the run (default 1: on a
CPU shared with other workers, one thread per worker is the fast setting; 0 = torch's default).

    python benchmarks/bench_training.py --sizes 10000 100000 --out benchmarks/results/training.json

Writes the JSON, a markdown table (training.md) and a plot (training.png) next to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from strategies.metrics import retrieval_metrics  # noqa: E402
from trainer.adapter import TrainConfig, apply_adapter, train_adapter  # noqa: E402
from trainer.runtime import resolve_device  # noqa: E402


def camera_offsets(dim: int, seed: int, n_cameras: int = 6) -> np.ndarray:
    offsets = np.random.default_rng(seed + 100).normal(size=(n_cameras, dim)).astype(np.float32)
    return offsets / np.linalg.norm(offsets, axis=1, keepdims=True)


def make_pool(
    n: int, dim: int, seed: int, per_id: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L2-normalised features, identities and cameras: identity centre + camera offset + noise.

    The camera offsets depend only on ``seed``, so a held-out pool (another ``seed`` offset for the
    identities) shares the cameras of the training pool."""
    offsets = camera_offsets(dim, seed)
    rng = np.random.default_rng(seed + n)
    n_ids = max(1, n // per_id)
    ids = rng.integers(0, n_ids, size=n)
    cams = rng.integers(0, offsets.shape[0], size=n)
    centres = rng.normal(size=(n_ids, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    x = centres[ids] + 2.0 * offsets[cams] + 1.5 * noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32), ids, cams


def human_pairs(ids: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` must-links (same identity) and ``n_pairs`` cannot-links (different identities)."""
    rng = np.random.default_rng(seed + 1)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    first = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    counts = np.diff(np.r_[first, ids.size])
    multi = first[counts >= 2]
    pick = rng.choice(multi.size, size=min(n_pairs, multi.size), replace=False)
    ml = np.stack([order[multi[pick]], order[multi[pick] + 1]], axis=1)
    cl = rng.integers(0, ids.size, size=(4 * n_pairs, 2))
    cl = cl[(ids[cl[:, 0]] != ids[cl[:, 1]])][:n_pairs]
    return ml.astype(np.int64), cl.astype(np.int64)


def load() -> float:
    return float(os.getloadavg()[0])


def run_size(n: int, dim: int, threads: int, seed: int, config: TrainConfig) -> dict[str, Any]:
    x, ids, cams = make_pool(n, dim, seed)
    labels = ids.copy()
    labels[np.random.default_rng(seed + 2).random(n) < 0.1] = -1
    ml, cl = human_pairs(ids, 250, seed)
    load_before = load()
    started = time.perf_counter()
    cpu_started = time.process_time()
    result = train_adapter(x, labels, ml, cl, config, cameras=cams)
    train_wall = time.perf_counter() - started
    train_cpu = time.process_time() - cpu_started
    before_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    emb = apply_adapter(result.adapter_state, x, device=config.device)
    reembed = time.perf_counter() - t
    torch.set_num_threads(before_threads)
    # sanity of what was trained: retrieval on 1,000 held-out images of new identities, same cameras
    hx, hids, hcams = make_pool(1000, dim, seed)
    q, g = hcams == 0, hcams != 0
    frozen_map = retrieval_metrics(hx[q], hx[g], hids[q], hids[g], hcams[q], hcams[g]).mAP
    hemb = apply_adapter(result.adapter_state, hx, device=config.device)
    adapted_map = retrieval_metrics(hemb[q], hemb[g], hids[q], hids[g], hcams[q], hcams[g]).mAP
    row = {
        "n": n,
        "dim": dim,
        "n_clusters": int(np.unique(labels[labels >= 0]).size),
        "n_outliers": int((labels < 0).sum()),
        "n_ml": int(ml.shape[0]),
        "n_cl": int(cl.shape[0]),
        "epochs": len(result.losses_per_epoch),
        "steps": result.steps,
        "train_s": round(result.seconds, 3),
        "train_wall_s": round(train_wall, 3),
        "train_cpu_s": round(train_cpu, 3),
        "ms_per_step": round(1000 * result.seconds / max(1, result.steps), 2),
        "reembed_s": round(reembed, 3),
        "cycle_adapter_s": round(result.seconds + reembed, 3),
        "loss_first": round(result.losses_per_epoch[0], 4),
        "loss_last": round(result.losses_per_epoch[-1], 4),
        "losses_per_epoch": [round(v, 4) for v in result.losses_per_epoch],
        "terms_first": {k: round(v, 4) for k, v in result.terms_per_epoch[0].items()},
        "terms_last": {k: round(v, 4) for k, v in result.terms_per_epoch[-1].items()},
        "device": result.device,
        "load_before": load_before,
        "load_after": load(),
        "embedding_dim": int(emb.shape[1]),
        "held_out_mAP_frozen": round(float(frozen_map), 4),
        "held_out_mAP_adapted": round(float(adapted_map), 4),
    }
    print(
        f"n={n:>7}: {row['steps']} steps in {row['train_s']:.1f}s ({row['ms_per_step']:.0f} ms/step), "
        f"re-embed {row['reembed_s']:.2f}s, loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}, "
        f"held-out mAP {frozen_map:.3f} -> {adapted_map:.3f}, "
        f"load {load_before:.1f}->{row['load_after']:.1f}",
        flush=True,
    )
    return row


def write_markdown(path: Path, payload: dict[str, Any]) -> None:
    m, c = payload["machine"], payload["config"]
    lines = [
        "# Adapter training time per cycle",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPU cores (shared with other jobs), torch {m['torch']}, "
        f"device {m['device']}, torch threads {m['threads']}. Load average (1 min) before/after each run "
        "is in the table: figures are wall-clock under that load.",
        "",
        f"Default TrainConfig: epochs={c['epochs']}, batch_size={c['batch_size']}, "
        f"max_steps_per_epoch={c['max_steps_per_epoch']}, terms={c['terms']}, "
        f"adapter={c['adapter']} (hidden {c['hidden_dim']}).",
        "",
        "| images | clusters | steps | train s | ms/step | re-embed s | adapter s / cycle "
        "| loss first→last | held-out mAP frozen→adapted | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in payload["results"]:
        lines.append(
            f"| {r['n']:,} | {r['n_clusters']:,} | {r['steps']} | {r['train_s']:.1f} "
            f"| {r['ms_per_step']:.0f} | {r['reembed_s']:.2f} | {r['cycle_adapter_s']:.1f} "
            f"| {r['loss_first']:.3f}→{r['loss_last']:.3f} "
            f"| {r['held_out_mAP_frozen']:.3f}→{r['held_out_mAP_adapted']:.3f} "
            f"| {r['load_before']:.1f}→{r['load_after']:.1f} |"
        )
    lines += [
        "",
        "The step count is capped per epoch (SpCL-style fixed iterations), so training time grows with the",
        "pool through the cluster-contrastive memory (one centroid per cluster in every step's softmax,",
        "re-extracted over the whole pool at every epoch) and the re-embedding pass; see training.json",
        "for per-epoch and per-term losses and CPU time. Held-out mAP:",
        "1,000 images of new identities under the same cameras, query camera 0 vs the other cameras",
        "(Market protocol, strategies.metrics), frozen features vs the adapter trained in that row.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_plot(path: Path, payload: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["results"]
    labels = [f"{r['n']:,}" for r in rows]
    train = [r["train_s"] for r in rows]
    reembed = [r["reembed_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    pos = np.arange(len(rows))
    ax.bar(pos, train, label="train_adapter")
    ax.bar(pos, reembed, bottom=train, label="apply_adapter (re-embed)")
    for p, r in zip(pos, rows, strict=True):
        ax.text(p, r["cycle_adapter_s"], f"{r['cycle_adapter_s']:.0f}s\n{r['steps']} steps", ha="center",
                va="bottom", fontsize=8)
    ax.set_ylim(0, 1.2 * max(r["cycle_adapter_s"] for r in rows))
    ax.set_xticks(pos, labels)
    ax.set_xlabel("images (512-d)")
    ax.set_ylabel("seconds per cycle")
    ax.set_title(f"Adapter training per cycle ({payload['machine']['device']}, "
                 f"{payload['machine']['threads']} thread(s), shared CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training.json")
    args = parser.parse_args(argv)
    if any(n < 2 for n in args.sizes):
        parser.error("--sizes: every size must be >= 2")
    if args.threads < 0:
        parser.error("--threads must be >= 0")

    config = TrainConfig(device=args.device, num_threads=args.threads or None, seed=args.seed)
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    results = [run_size(n, args.dim, args.threads, args.seed, config) for n in args.sizes]
    command = " ".join(["python benchmarks/bench_training.py", *(sys.argv[1:] if argv is None else argv)])
    payload = {
        "command": command,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "device": str(device),
            "threads": threads,
        },
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    write_markdown(args.out.with_suffix(".md"), payload)
    write_plot(args.out.with_suffix(".png"), payload)
    print(f"wrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
