"""Embedding throughput: images/s of the frozen encoders, fp32 vs bf16, pipeline vs bare forward.

Why: extraction is the first (and on CPU the longest) step of every project, so we need to know
(a) how fast each encoder is on this machine, (b) whether bf16 pays off, and (c) whether the
DataLoader pipeline (JPEG decode in worker processes + store writes) keeps the model busy: the target
is pipeline >= 90% of the bare forward pass on pre-decoded tensors.

    .venv/bin/python benchmarks/bench_embedding.py                 # defaults: 256 images
    .venv/bin/python benchmarks/bench_embedding.py --n-images 64   # quick look

Writes benchmarks/results/embedding.json, embedding.md and embedding.png. open_clip runs with
random ViT-B-32 weights (same architecture and cost as the pretrained model; no download needed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._machine import cpu_model  # noqa: E402
from trainer.encoders import Encoder, create_encoder  # noqa: E402
from trainer.extraction import auto_num_workers, extract_embeddings  # noqa: E402
from trainer.images import load_rgb  # noqa: E402
from trainer.store import EmbeddingStore  # noqa: E402

ENCODER_NAMES = {"mobilenetv2": "mobilenetv2", "open_clip": "open_clip_random"}


def make_jpegs(root: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Person-crop-like JPEGs (portrait, 96..256 px wide), smooth content so they compress like photos."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(n):
        w = int(rng.integers(96, 257))
        h = int(w * rng.uniform(1.8, 2.6))
        small = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
        img = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 6, size=(h, w, 3))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
        path = root / f"{k:05d}.jpg"
        img.save(path, quality=90)
        items.append((f"img{k:05d}", str(path)))
    return items


def bare_forward(encoder: Encoder, tensors: torch.Tensor, batch_size: int) -> float:
    """images/s of encoder.embed on already-decoded, already-preprocessed tensors (one warm-up batch)."""
    encoder.embed(tensors[:batch_size])
    t0 = time.perf_counter()
    for start in range(0, len(tensors), batch_size):
        encoder.embed(tensors[start:start + batch_size])
    return len(tensors) / (time.perf_counter() - t0)


def pipeline(encoder: Encoder, items: list[tuple[str, str]], workdir: Path, batch_size: int,
             num_workers: int | None) -> tuple[float, int]:
    """images/s of extract_embeddings from JPEG files on disk into a fresh store (workers warmed)."""
    warm = EmbeddingStore(workdir / "warm")
    extract_embeddings(encoder, items[:batch_size], warm, batch_size=batch_size, num_workers=0,
                       progress=False)
    store_dir = workdir / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    report = extract_embeddings(encoder, items, EmbeddingStore(store_dir), batch_size=batch_size,
                                num_workers=num_workers, progress=False)
    if report.failures:
        raise RuntimeError(f"benchmark images failed to embed: {report.failures[:3]}")
    workers = auto_num_workers(-(-len(items) // batch_size)) if num_workers is None else num_workers
    return report.images_per_second, workers


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_embedding_") as tmp:
        items = make_jpegs(Path(tmp) / "jpegs", args.n_images)
        for kind in args.encoders:
            reference: torch.Tensor | None = None
            for precision in args.precisions:
                # min_cosine ~0 forces the requested precision: the agreement is measured below instead
                torch.manual_seed(0)  # identical (random) open_clip weights for fp32 and bf16
                enc = create_encoder(ENCODER_NAMES[kind], precision=precision, min_cosine=1e-9)
                tensors = torch.stack([enc.preprocess(load_rgb(p)) for _, p in items])
                feats = enc.embed(tensors[: min(64, len(tensors))])
                if precision == "fp32":
                    reference = feats
                cosine = float((feats * reference).sum(dim=1).mean()) if reference is not None else None
                bares, pipes = [], []
                for _ in range(args.repeats):  # interleaved, medians: the shared machine's load drifts
                    bares.append(bare_forward(enc, tensors, args.batch_size))
                    piped, workers = pipeline(enc, items, Path(tmp) / f"{kind}-{precision}", args.batch_size,
                                              args.num_workers)
                    pipes.append(piped)
                bare, piped = float(np.median(bares)), float(np.median(pipes))
                row = {
                    "encoder": kind, "encoder_name": enc.name, "precision": precision, "dim": enc.dim,
                    "dtype": str(enc.dtype).replace("torch.", ""), "device": str(enc.device),
                    "bare_img_per_s": round(bare, 2), "pipeline_img_per_s": round(piped, 2),
                    "pipeline_over_bare": round(piped / bare, 3), "num_workers": workers,
                    "mean_cosine_vs_fp32": None if cosine is None else round(cosine, 5),
                    "bare_runs": [round(b, 2) for b in bares], "pipeline_runs": [round(p, 2) for p in pipes],
                }
                results.append(row)
                print(json.dumps(row), flush=True)
                del enc, tensors
    info["loadavg_end"] = list(os.getloadavg())
    return {
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_embedding.py",
                                                      *sys.argv[1:]]),
        "n_images": args.n_images, "batch_size": args.batch_size, "repeats": args.repeats, "machine": info,
        "results": results,
        "target": "pipeline_over_bare >= 0.90",
    }


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m = report["machine"]
    lines = [
        "# Embedding throughput",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"CUDA: {m['cuda'] or 'none'}  ",
        f"Load average at start/end: {m['loadavg_start'][0]:.1f} / {m['loadavg_end'][0]:.1f} "
        "(the machine is shared: figures are lower bounds)  ",
        f"{report['n_images']} synthetic portrait JPEGs (96-256 px wide), batch {report['batch_size']}, "
        f"median of {report['repeats']} interleaved runs. "
        "open_clip = ViT-B-32 with random weights (same cost as pretrained).",
        "",
        "| encoder | precision | bare forward img/s | pipeline img/s | pipeline/bare | workers "
        "| target >= 90% | cos vs fp32 |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["results"]:
        cos = "" if r["mean_cosine_vs_fp32"] is None else f"{r['mean_cosine_vs_fp32']:.5f}"
        lines.append(f"| {r['encoder']} | {r['precision']} | {r['bare_img_per_s']:.1f} | "
                     f"{r['pipeline_img_per_s']:.1f} | {r['pipeline_over_bare']:.2f} | {r['num_workers']} "
                     f"| {'yes' if r['pipeline_over_bare'] >= 0.9 else 'no'} | {cos} |")
    lines += ["", "Pipeline = `extract_embeddings` from JPEG files (decode + preprocess in DataLoader "
              "workers, per-batch store commit); bare = `Encoder.embed` on pre-decoded tensors. "
              "`create_encoder(precision='auto')` keeps bf16 only where the probe cosine is >= 0.998.", ""]
    path.write_text("\n".join(lines))


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    labels = [f"{r['encoder']}\n{r['precision']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows)), 3.6))
    ax.bar(x - 0.2, [r["bare_img_per_s"] for r in rows], 0.4, label="bare forward (pre-decoded tensors)")
    bars = ax.bar(x + 0.2, [r["pipeline_img_per_s"] for r in rows], 0.4, label="pipeline (JPEG files)")
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(f"{r['pipeline_over_bare']:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_ylabel("images / s")
    m = report["machine"]
    ax.set_title(f"Embedding throughput: {m['cores']} shared CPU cores, {m['torch_threads']} torch "
                 f"thread(s), load {m['loadavg_start'][0]:.0f}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(json_path: Path) -> None:
    """Re-draw the markdown table and the plot from a saved JSON (no measurement)."""
    report = json.loads(json_path.read_text())
    write_markdown(report, json_path.with_suffix(".md"))
    write_plot(report, json_path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=None, help="default: auto")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved bare/pipeline runs (median)")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODER_NAMES), choices=list(ENCODER_NAMES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="embedding", help="output file stem")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; 1 is faster on a busy box)")
    parser.add_argument("--replot", type=Path, default=None, help="only redraw .md/.png from this JSON")
    args = parser.parse_args(argv)
    if args.replot is not None:
        replot(args.replot)
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.n_images < args.batch_size:
        parser.error("--n-images must be >= --batch-size")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if "fp32" in args.precisions:
        args.precisions = ["fp32"] + [p for p in args.precisions if p != "fp32"]
    report = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / args.name
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    write_markdown(report, stem.with_suffix(".md"))
    write_plot(report, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
