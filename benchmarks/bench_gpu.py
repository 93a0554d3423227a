"""GPU benchmark: embedding throughput, the kNN graph at 400k points and one fine-tuning epoch.

Why: the GPU deployment (docker/Dockerfile.gpu, docker/docker-compose.gpu.yml) is for pools too large
for CPU workers and for `reid-al finetune`. These three figures say what a GPU buys on exactly the code
paths a GPU worker runs: `extract_embeddings` (JPEG files -> the embedding store), `build_knn` (a faiss
GPU index when faiss has GPU support and sees a GPU) and `finetune_encoder` (CUDA, mixed precision).

Without a GPU it runs its CPU fallback at sizes that finish in seconds, so that the script itself is
exercised wherever the tests run (tests/test_gpu_deploy.py); that output is named gpu_cpu_fallback.*,
never gpu.*, so a CPU figure cannot pass for a GPU one.

    benchmarks/bench_gpu.sh                 # GPU: ViT-B-32, kNN at 400k; no GPU: the CPU fallback
    benchmarks/bench_gpu.sh --quick         # smaller sizes: well under a minute on 2 CPU cores
    benchmarks/bench_gpu.sh --device cpu    # the CPU fallback on a GPU machine

Writes benchmarks/results/gpu.json and gpu.md (CUDA) or gpu_cpu_fallback.json and .md (CPU), and
prints the figures. On CUDA the encoder is open_clip ViT-B-32 with random weights (the production
architecture and cost; no download needed); on the CPU the offline MobileNetV2.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# cuBLAS is deterministic only with a fixed workspace; fine-tuning asks for deterministic kernels.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from benchmarks._machine import cpu_model  # noqa: E402
from benchmarks.bench_embedding import bare_forward, make_jpegs, pipeline  # noqa: E402
from strategies.defaults import APPROXIMATE_INDEX, EXACT_KNN_MAX, KNN_K  # noqa: E402
from strategies.knn import approximate_recall, build_knn, gpu_available  # noqa: E402
from trainer.encoders import Encoder, create_encoder  # noqa: E402
from trainer.finetune import FinetuneConfig, finetune_encoder  # noqa: E402
from trainer.images import load_rgb  # noqa: E402
from trainer.runtime import resolve_device  # noqa: E402

# Sizes per (device type, --quick). The CUDA row is the benchmark; the CPU rows only prove the script
# runs (and give a CPU reference at the same code paths), so they are small.
SIZES: dict[tuple[str, bool], dict[str, int]] = {
    ("cuda", False): {"embed_images": 2048, "batch_size": 256, "knn_n": 400_000, "finetune_images": 512,
                      "recall_queries": 1000},
    ("cuda", True): {"embed_images": 512, "batch_size": 128, "knn_n": 100_000, "finetune_images": 128,
                     "recall_queries": 500},
    ("cpu", False): {"embed_images": 128, "batch_size": 32, "knn_n": 20_000, "finetune_images": 64,
                     "recall_queries": 500},
    ("cpu", True): {"embed_images": 32, "batch_size": 16, "knn_n": 2_000, "finetune_images": 24,
                    "recall_queries": 200},
}
# (encoder for embedding, encoder for fine-tuning, fine-tuning input side or None for the model's own)
ENCODERS: dict[tuple[str, bool], tuple[str, str, int | None]] = {
    ("cuda", False): ("open_clip_random", "open_clip_random", None),
    ("cuda", True): ("open_clip_random", "open_clip_random", None),
    ("cpu", False): ("mobilenetv2", "mobilenetv2", 224),
    ("cpu", True): ("mobilenetv2", "mobilenetv2", 64),
}
PER_IDENTITY = 8  # fine-tuning images per identity


def nvidia_smi() -> str | None:
    """The driver's view of the GPU (name, driver, memory), or None where nvidia-smi is absent."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine(device: torch.device) -> dict[str, Any]:
    """Where the figures come from: CPU, GPU, the torch and faiss builds, the load."""
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1) if props is not None else None,
        "nvidia_smi": nvidia_smi(),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss": faiss.__version__,
        "faiss_gpu_build": hasattr(faiss, "StandardGpuResources"),
        "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "loadavg_start": list(os.getloadavg()),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------- embedding


def bench_embedding(name: str, device: torch.device, n_images: int, batch_size: int, workdir: Path,
                    num_workers: int | None) -> dict[str, Any]:
    """images/s of the ingest pipeline (JPEG files -> store) and of the bare forward pass."""
    items = make_jpegs(workdir / "jpegs", n_images)
    torch.manual_seed(0)
    encoder = create_encoder(name, device=device)
    tensors = torch.stack([encoder.preprocess(load_rgb(p)) for _, p in items])
    bare = bare_forward(encoder, tensors, batch_size)
    piped, workers = pipeline(encoder, items, workdir / "embedding", batch_size, num_workers)
    row = {
        "encoder": encoder.name,
        "dim": encoder.dim,
        "precision": encoder.precision_note,
        "n_images": n_images,
        "batch_size": batch_size,
        "num_workers": workers,
        "bare_img_per_s": round(bare, 2),
        "pipeline_img_per_s": round(piped, 2),
        "pipeline_over_bare": round(piped / bare, 3),
    }
    print(f"embedding  {encoder.name} on {device} ({encoder.precision_note}): pipeline "
          f"{row['pipeline_img_per_s']:.1f} img/s, bare forward {row['bare_img_per_s']:.1f} img/s, "
          f"{workers} decode worker(s)", flush=True)
    return row


# ---------------------------------------------------------------------------------------------- kNN


def knn_features(n: int, dim: int, seed: int = 0, per_id: int = 4) -> np.ndarray:
    """L2-normalised float32 rows with identity structure (a few views around each centre)."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // per_id)
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_ids, size=n)]
    x += rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.8 / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def bench_knn(n: int, dim: int, k: int, recall_queries: int, exact: bool) -> dict[str, Any]:
    """Seconds of build_knn with the product's defaults (and, when asked, of exact search) at n points."""
    x = knn_features(n, dim)
    on_gpu = gpu_available()
    build_knn(x[: min(n, 2000)], k)  # warm-up: faiss GPU resources, OpenMP threads
    t0 = time.perf_counter()
    graph = build_knn(x, k)
    seconds = time.perf_counter() - t0
    if n <= EXACT_KNN_MAX or k + 2 >= n:
        index = "exact"
    else:  # faiss has no GPU HNSW: build_knn uses IVF there whatever the default
        index = f"approximate ({'ivf' if on_gpu else APPROXIMATE_INDEX})"
    recall = approximate_recall(x, graph, n_queries=recall_queries)
    row: dict[str, Any] = {
        "n": n, "dim": dim, "k": k, "faiss_gpu": on_gpu, "index": index,
        "seconds": round(seconds, 3), "recall_at_k": round(recall, 4), "recall_queries": recall_queries,
        "exact_seconds": None,
    }
    print(f"kNN        n={n:,} d={dim} k={k} on {'GPU' if on_gpu else 'CPU'} ({index}): "
          f"{row['seconds']:.2f} s, recall@k {recall:.4f}", flush=True)
    if exact and index != "exact":
        t0 = time.perf_counter()
        build_knn(x, k, exact_max=n)
        row["exact_seconds"] = round(time.perf_counter() - t0, 3)
        print(f"kNN        exact search at the same n: {row['exact_seconds']:.2f} s", flush=True)
    return row


# ---------------------------------------------------------------------------------------- fine-tune


def identity_images(root: Path, n: int, seed: int = 0) -> tuple[list[tuple[str, str]], np.ndarray]:
    """``n`` portrait JPEGs, PER_IDENTITY per identity: a colour layout per identity plus pixel noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items, labels = [], []
    for row in range(n):
        ident = row // PER_IDENTITY
        base = np.random.default_rng(seed + 1000 + ident).integers(0, 256, size=(4, 2, 3))
        layout = np.kron(base, np.ones((48, 48, 1), dtype=np.int64))  # 192 x 96 px
        pixels = np.clip(layout + rng.integers(-30, 31, size=layout.shape), 0, 255).astype(np.uint8)
        path = root / f"{row:05d}.jpg"
        Image.fromarray(pixels, "RGB").save(path, quality=90)
        items.append((f"img{row:05d}", str(path)))
        labels.append(ident)
    return items, np.asarray(labels, dtype=np.int64)


def human_pairs(labels: np.ndarray, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Must-links within identities and cannot-links across them, as annotators would give."""
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    ml, cl = [], []
    while len(ml) < n_pairs or len(cl) < n_pairs:
        i, j = (int(v) for v in rng.integers(0, n, size=2))
        if i == j:
            continue
        if labels[i] == labels[j] and len(ml) < n_pairs:
            ml.append((i, j))
        elif labels[i] != labels[j] and len(cl) < n_pairs:
            cl.append((i, j))
    return np.asarray(ml, dtype=np.int64), np.asarray(cl, dtype=np.int64)


def make_finetune_encoder(name: str, device: torch.device, image_size: int | None) -> Encoder:
    torch.manual_seed(0)
    overrides: dict[str, Any] = {"device": device, "precision": "fp32"}  # as `reid-al finetune` builds it
    if image_size is not None:
        overrides["image_size"] = image_size
    return create_encoder(name, **overrides)


def bench_finetune(name: str, device: torch.device, n_images: int, image_size: int | None,
                   workdir: Path, num_workers: int | None) -> dict[str, Any]:
    """Seconds of one `finetune_encoder` epoch (centroid pass + training steps) on generated identities."""
    items, labels = identity_images(workdir / "finetune", n_images)
    ml, cl = human_pairs(labels, max(4, n_images // 16))
    encoder = make_finetune_encoder(name, device, image_size)
    if num_workers is None:  # decode processes pay on a GPU; on a small CPU they only compete with it
        num_workers = FinetuneConfig().num_workers if device.type == "cuda" else 0
    workers = num_workers
    # one step on two identities first: kernel selection, autotuning and allocator warm-up stay out of
    # the timed epoch (on a CPU too, where the first backward pass costs several later ones)
    warm = 2 * PER_IDENTITY
    finetune_encoder(copy.deepcopy(encoder), items[:warm], labels[:warm], None, None,
                     FinetuneConfig(epochs=1, max_steps_per_epoch=1, device=str(device), num_workers=0))
    config = FinetuneConfig(epochs=1, device=str(device), num_workers=workers, seed=0)
    sync(device)
    t0 = time.perf_counter()
    result = finetune_encoder(encoder, items, labels, ml, cl, config)
    sync(device)
    wall = time.perf_counter() - t0
    row = {
        "encoder": encoder.name,
        "input_size": encoder.input_size,
        "n_images": n_images,
        "identities": int(np.unique(labels).size),
        "must_link": int(ml.shape[0]),
        "cannot_link": int(cl.shape[0]),
        "batch_size": config.batch_size,
        "pairs_per_batch": config.pairs_per_batch,
        "num_workers": workers,
        "steps": result.steps,
        "precision": result.precision,
        "amp": config.amp,
        "epoch_s": round(result.seconds, 3),
        "wall_s": round(wall, 3),
        "ms_per_step": round(1000 * result.seconds / max(1, result.steps), 1),
        "images_per_s": round(n_images / result.seconds, 2),
        "loss": round(result.losses_per_epoch[0], 4),
    }
    print(f"fine-tune  {encoder.name} on {result.device} ({result.precision}): one epoch of {n_images} "
          f"images in {row['epoch_s']:.2f} s ({result.steps} steps, {row['ms_per_step']:.0f} ms/step)",
          flush=True)
    return row


# ------------------------------------------------------------------------------------------- report


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m, e, k, f = report["machine"], report["embedding"], report["knn"], report["finetune"]
    title = "GPU benchmark" if not report["fallback"] else "GPU benchmark: CPU fallback (no GPU used)"
    faiss_build = "GPU build" if m["faiss_gpu_build"] else "CPU build"
    exact = f", exact search {k['exact_seconds']:.2f} s" if k["exact_seconds"] is not None else ""
    lines = [
        f"# {title}",
        "",
        f"Command: `{report['command']}` (runs `{report['python_command']}`)  ",
        f"Device: {m['device_name']} ({m['device']}); CPU {m['cpu']}, {m['cores']} cores  ",
        f"torch {m['torch']} (CUDA {m['torch_cuda'] or 'none'}), faiss {m['faiss']} ({faiss_build}, "
        f"{m['faiss_gpus']} GPU(s) visible)  ",
        f"Load average at start/end: {m['loadavg_start'][0]:.1f} / {m['loadavg_end'][0]:.1f}"
        + ("  " if not report["quick"] else " (--quick sizes)  "),
        "",
        "| measurement | what | figure |",
        "|---|---|---:|",
        f"| embedding | {e['encoder']}, {e['precision']}, {e['n_images']} JPEGs, batch {e['batch_size']}, "
        f"{e['num_workers']} decode worker(s): pipeline (bare forward) | {e['pipeline_img_per_s']:.1f} "
        f"({e['bare_img_per_s']:.1f}) img/s |",
        f"| kNN graph | n={k['n']:,}, d={k['dim']}, k={k['k']}, {k['index']} on "
        f"{'GPU' if k['faiss_gpu'] else 'CPU'}, recall@k {k['recall_at_k']:.4f}{exact} "
        f"| {k['seconds']:.2f} s |",
        f"| fine-tuning epoch | {f['encoder']} ({f['input_size']} px), {f['n_images']} images, "
        f"{f['steps']} steps of batch {f['batch_size']} + {f['pairs_per_batch']} pairs, {f['precision']} "
        f"| {f['epoch_s']:.2f} s |",
        "",
    ]
    if report["fallback"]:
        lines += ["No GPU was used: these are the CPU fallback's figures at reduced sizes, a check that the "
                  "script runs and a CPU reference, not GPU figures.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda or cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (the CPU fallback in seconds)")
    parser.add_argument("--embed-images", type=int, help="images embedded (default: per device)")
    parser.add_argument("--batch-size", type=int, help="embedding batch (default: per device)")
    parser.add_argument("--num-workers", type=int, default=None, help="decode processes (default: auto)")
    parser.add_argument("--knn-n", type=int, help="points in the kNN graph (default: 400000 on CUDA)")
    parser.add_argument("--knn-dim", type=int, default=512)
    parser.add_argument("--knn-k", type=int, default=KNN_K)
    parser.add_argument("--knn-exact", choices=("auto", "yes", "no"), default="auto",
                        help="also time exact search where the default is approximate (auto: on a faiss GPU)")
    parser.add_argument("--finetune-images", type=int, help="images in the fine-tuning epoch")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and faiss CPU threads (default: 1 on the CPU fallback, where one thread "
                             "beats several on a shared machine; the libraries' own on CUDA; 0: theirs)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default=None, help="output stem (default: gpu, or gpu_cpu_fallback)")
    args = parser.parse_args(argv)

    try:
        device = resolve_device(args.device)
    except ValueError as exc:  # --device cuda without a GPU, or a malformed device
        parser.error(str(exc))
    key = ("cuda" if device.type == "cuda" else "cpu", args.quick)
    sizes = dict(SIZES[key])
    for field in ("embed_images", "batch_size", "knn_n", "finetune_images"):
        if getattr(args, field) is not None:
            sizes[field] = getattr(args, field)
    if min(sizes["embed_images"], sizes["batch_size"], sizes["knn_n"]) < 1:
        parser.error("sizes must be >= 1")
    if sizes["finetune_images"] < 2 * PER_IDENTITY:  # cannot-link pairs need two identities
        parser.error(f"--finetune-images must be >= {2 * PER_IDENTITY}")
    if sizes["embed_images"] < sizes["batch_size"]:
        parser.error("--embed-images must be >= --batch-size")
    threads = args.threads if args.threads is not None else (0 if device.type == "cuda" else 1)
    if threads < 0:
        parser.error("--threads must be >= 0")
    if threads:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    embed_name, finetune_name, finetune_size = ENCODERS[key]
    fallback = device.type != "cuda"
    if fallback:
        print("no CUDA device in use: running the CPU fallback (figures are not GPU figures)", flush=True)
    elif not gpu_available():
        print("warning: faiss has no GPU support here (faiss-cpu installed?): the kNN graph runs on the CPU",
              flush=True)
    exact = args.knn_exact == "yes" or (args.knn_exact == "auto" and gpu_available())

    info = machine(device)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        work = Path(tmp)
        embedding = bench_embedding(embed_name, device, sizes["embed_images"], sizes["batch_size"], work,
                                    args.num_workers)
        knn = bench_knn(sizes["knn_n"], args.knn_dim, args.knn_k, sizes["recall_queries"], exact)
        finetune = bench_finetune(finetune_name, device, sizes["finetune_images"], finetune_size, work,
                                  args.num_workers)
    info["loadavg_end"] = list(os.getloadavg())

    argv_shown = sys.argv[1:] if argv is None else argv
    wrapper = os.environ.get("BENCH_GPU_WRAPPER")
    python_command = shlex.join(["python", "benchmarks/bench_gpu.py", *argv_shown])
    report = {
        "command": shlex.join([wrapper, *argv_shown]) if wrapper else python_command,
        "python_command": python_command,
        "device": device.type,
        "fallback": fallback,
        "quick": args.quick,
        "machine": info,
        "embedding": embedding,
        "knn": knn,
        "finetune": finetune,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / (args.name or ("gpu_cpu_fallback" if fallback else "gpu"))
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, stem.with_suffix(".md"))
    print(stem.with_suffix(".md").read_text())
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
