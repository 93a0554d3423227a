"""The GPU deployment: docker-compose.gpu.yml, Dockerfile.gpu and the GPU benchmark's CPU fallback.

There is no Docker engine (nor GPU) where the tests run: the override and the Dockerfile are checked
structurally against the base compose file, the pins and the code; the benchmark runs its CPU fallback
for real, so a broken script fails here rather than on the rare machine that has a GPU.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml_backend.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
GPU_DOCKERFILE = DOCKER / "Dockerfile.gpu"


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.gpu.yml").read_text())


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return dict(
        line.split("==", 1)
        for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge for what these files use: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: _merge(base[k], v) if k in base else v for k, v in override.items()} | {
            k: v for k, v in base.items() if k not in override}
    return override


def _arg(dockerfile: str, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile, re.MULTILINE)
    assert match, f"Dockerfile.gpu has no ARG {name}=..."
    return match.group(1)


# ------------------------------------------------------------------------------ docker-compose.gpu.yml


def test_override_builds_only_the_worker_from_the_gpu_dockerfile(base: dict, gpu: dict) -> None:
    assert set(gpu["services"]) == {"worker"}  # the backend, Label Studio and Redis stay as they are
    worker = _merge(base["services"]["worker"], gpu["services"]["worker"])
    assert worker["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.gpu"}
    assert (DOCKER / ".." / worker["build"]["dockerfile"]).resolve() == GPU_DOCKERFILE
    assert worker["command"] == ["worker"] and worker["command"][0] in COMMANDS
    # its own tag: with the base's reid-al:latest the GPU build would replace the backend's CPU image
    assert worker["image"] != base["services"]["backend"]["image"]


def test_override_reserves_one_nvidia_gpu_per_worker(gpu: dict) -> None:
    devices = gpu["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    # an int literal: compose rejects an interpolated count other than "all"
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_override_keeps_the_workers_environment_and_mounts(base: dict, gpu: dict) -> None:
    override = gpu["services"]["worker"]
    assert "environment" not in override and "volumes" not in override
    worker = _merge(base["services"]["worker"], override)
    assert worker["environment"] == base["services"]["backend"]["environment"]
    assert worker["volumes"] == base["services"]["backend"]["volumes"]
    assert worker["depends_on"] == base["services"]["worker"]["depends_on"]
    assert override["shm_size"]  # DataLoader workers need more than Docker's 64 MB /dev/shm


def test_override_says_how_to_run_it() -> None:
    header = [line for line in (DOCKER / "docker-compose.gpu.yml").read_text().splitlines()
              if line.startswith("#")]
    run = next(line for line in header if "up -d" in line)
    assert run.index("-f docker/docker-compose.yml") < run.index("-f docker/docker-compose.gpu.yml")
    assert any("finetune" in line for line in header)


# ------------------------------------------------------------------------------------ Dockerfile.gpu


def test_gpu_dockerfile_pins_cuda_torch_and_faiss_gpu(pins: dict[str, str]) -> None:
    dockerfile = GPU_DOCKERFILE.read_text()
    assert _arg(dockerfile, "TORCH_VERSION") == pins["torch"] == "2.13.0"
    assert _arg(dockerfile, "TORCHVISION_VERSION") == pins["torchvision"]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu12\d+", _arg(dockerfile, "TORCH_INDEX_URL"))
    assert 'pip install --index-url "${TORCH_INDEX_URL}"' in dockerfile
    # faiss's GPU build at the version the CPU build is pinned to, checked for GPU support at build time
    assert _arg(dockerfile, "FAISS_GPU_REQUIREMENT") == f"faiss-gpu=={pins['faiss-cpu']}"
    assert '"${FAISS_GPU_REQUIREMENT}"' in dockerfile and "StandardGpuResources" in dockerfile
    assert "-c requirements/constraints.txt" in dockerfile
    assert re.search(r'ENTRYPOINT \["reid-al"\]', dockerfile) and 'CMD ["worker"]' in dockerfile


def test_gpu_dockerfile_installs_every_dependency_but_faiss_cpu() -> None:
    """The image runs the Dockerfile's own filter over pyproject.toml: run it here on the real file."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11, as in the image
    dockerfile = GPU_DOCKERFILE.read_text()
    match = re.search(r'python -c "(import tomllib;[^"]+)" > /tmp/requirements\.txt', dockerfile)
    assert match, "Dockerfile.gpu no longer derives its requirements from pyproject.toml"
    out = subprocess.run([sys.executable, "-c", match.group(1)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("faiss-cpu") for d in declared)
    assert out == [d for d in declared if not d.startswith("faiss-cpu")]
    assert "torch==2.13.0" in out  # satisfied by the CUDA build installed first


def test_gpu_dockerfile_copy_sources_exist_and_carry_the_benchmark() -> None:
    copied: set[str] = set()
    for line in GPU_DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _target = line.split()[1:]
            for source in sources:
                if "*" not in source:
                    assert (ROOT / source).exists(), f"Dockerfile.gpu copies {source}, which does not exist"
                    copied.add(source)
    bench = (ROOT / "benchmarks" / "bench_gpu.py").read_text()
    imported = re.findall(r"^from benchmarks\.(\w+) import", bench, re.MULTILINE)
    needed = {f"benchmarks/{module}.py" for module in imported}
    assert needed and needed | {"benchmarks/bench_gpu.py", "benchmarks/bench_gpu.sh"} <= copied
    assert {"ml_backend", "trainer", "strategies"} <= copied


def test_docs_explain_the_gpu_variant() -> None:
    docker_readme = (DOCKER / "README.md").read_text()
    for name in ("docker-compose.gpu.yml", "Dockerfile.gpu", "faiss-gpu", "benchmarks/bench_gpu.sh",
                 "gpu_cpu_fallback.json"):
        assert name in docker_readme, name
    readme = (ROOT / "README.md").read_text()
    assert "docker/docker-compose.gpu.yml" in readme and "bench_gpu.sh" in readme


# ---------------------------------------------------------------------------------- bench_gpu.sh


@pytest.mark.slow
def test_bench_gpu_cpu_fallback_runs_and_writes_its_figures(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "bench_gpu.sh"), "--quick", "--device", "cpu",
         "--out-dir", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (tmp_path / "gpu.json").exists()  # a CPU figure never lands where GPU figures go
    report = json.loads((tmp_path / "gpu_cpu_fallback.json").read_text())
    assert report["device"] == "cpu" and report["fallback"] is True and report["quick"] is True
    assert report["command"].startswith("benchmarks/bench_gpu.sh --quick")
    machine = report["machine"]
    assert machine["device"] == "cpu" and machine["torch"] and machine["faiss"]
    assert len(machine["loadavg_start"]) == 3 and len(machine["loadavg_end"]) == 3

    embedding = report["embedding"]
    assert embedding["pipeline_img_per_s"] > 0 and embedding["bare_img_per_s"] > 0
    assert embedding["encoder"] == "mobilenetv2" and embedding["n_images"] == 32

    knn = report["knn"]
    assert knn["seconds"] > 0 and knn["n"] == 2000 and knn["k"] == 30 and knn["faiss_gpu"] is False
    assert knn["index"] == "exact" and knn["recall_at_k"] == 1.0  # exact search at this size

    finetune = report["finetune"]
    assert finetune["epoch_s"] > 0 and finetune["steps"] >= 1 and finetune["precision"] == "fp32"
    assert math.isfinite(finetune["loss"]) and finetune["n_images"] == 24

    markdown = (tmp_path / "gpu_cpu_fallback.md").read_text()
    assert "CPU fallback" in markdown and "No GPU was used" in markdown
    assert "kNN graph" in proc.stdout and "fine-tune" in proc.stdout



def _compose_v2() -> list[str] | None:
    """`docker compose` (the plugin), else a standalone Compose v2 `docker-compose`, else None."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        version = subprocess.run([standalone, "version"], capture_output=True, text=True).stdout
        if "version v2" in version:
            return [standalone]
    return None


def test_compose_v2_merges_the_override_when_present(tmp_path: Path) -> None:
    compose = _compose_v2()
    if compose is None:
        pytest.skip("no Compose v2 on this machine (checked structurally above)")
    env_file = tmp_path / ".env"
    env_file.write_text("LABEL_STUDIO_API_KEY=" + "a" * 40 + "\nLABEL_STUDIO_PASSWORD=pw\n")
    proc = subprocess.run(
        [*compose, "-f", str(DOCKER / "docker-compose.yml"), "-f", str(DOCKER / "docker-compose.gpu.yml"),
         "--env-file", str(env_file), "config", "--format", "json"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    worker, backend = services["worker"], services["backend"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert backend["build"]["dockerfile"] == "docker/Dockerfile" and backend["image"] != worker["image"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["environment"] == backend["environment"] and "deploy" not in backend
