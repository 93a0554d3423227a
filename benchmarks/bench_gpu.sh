#!/usr/bin/env bash
# GPU benchmark: embedding throughput, the kNN graph at 400k points and one fine-tuning epoch, written
# to benchmarks/results/gpu.json (+ .md). Without a GPU it runs its CPU fallback at small sizes and
# writes gpu_cpu_fallback.json instead. The work is in bench_gpu.py (`--help` lists the options).
#
#   benchmarks/bench_gpu.sh             # on a GPU machine (or in the GPU image)
#   benchmarks/bench_gpu.sh --quick     # the CPU fallback, well under a minute on 2 cores
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="python3"  # the Docker images install reid-al into the system interpreter
fi
cd "$ROOT"
# cuBLAS is deterministic only with a fixed workspace; fine-tuning asks for deterministic kernels.
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
export BENCH_GPU_WRAPPER="benchmarks/bench_gpu.sh"
exec "$PY" benchmarks/bench_gpu.py "$@"
