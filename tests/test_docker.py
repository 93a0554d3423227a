"""docker/: the compose file and the Dockerfile agree with the code, the pins and LABEL_STUDIO.md.

There is no Docker engine where the tests run, so the compose file is checked structurally (and with
`docker compose config` where the compose plugin exists); the Dockerfile's pins and COPY sources are
checked against the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml_backend.cli import COMMANDS
from ml_backend.settings import SETTINGS_HELP, Settings
from trainer.defaults import CYCLE_STRATEGY

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
# the version the e2e fixture installs (read, not imported: that module is a pytest plugin)
LABEL_STUDIO_VERSION = re.search(  # type: ignore[union-attr]
    r'LABEL_STUDIO_VERSION = "([^"]+)"', (ROOT / "tests" / "e2e" / "label_studio.py").read_text()
).group(1)
# LABEL_STUDIO.md: the settings a headless Label Studio needs for this backend
REQUIRED_LS_ENV = {
    "LABEL_STUDIO_USERNAME",
    "LABEL_STUDIO_PASSWORD",
    "LABEL_STUDIO_USER_TOKEN",
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN",
    "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK",
    "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED",
    "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
    "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS",
    "LABEL_STUDIO_LATEST_VERSION_CHECK",
    "LABEL_STUDIO_COLLECT_ANALYTICS",
    "SENTRY_DSN",
    "FRONTEND_SENTRY_DSN",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source, from short-syntax volumes."""
    out = {}
    for volume in service.get("volumes", []):
        spec = volume.removesuffix(":ro").removesuffix(":rw")
        source, target = spec.rsplit(":", 1)  # the source may hold ":" itself: ${IMAGES_DIR:-./images}
        out[target] = source
    return out


def test_compose_services_and_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "label-studio", "backend", "worker"}
    backend, worker = services["backend"], services["worker"]
    assert backend["build"] == worker["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (DOCKER / ".." / backend["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    assert backend["command"] == ["serve"] and worker["command"] == ["worker"]
    assert {backend["command"][0], worker["command"][0]} <= set(COMMANDS)
    assert backend["environment"]["REDIS_URL"] == worker["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert backend["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert set(compose["volumes"]) == {"models", "redis-data", "label-studio-data"}
    assert services["label-studio"]["image"] == f"heartexlabs/label-studio:{LABEL_STUDIO_VERSION}"


def test_backend_environment_uses_only_known_settings(compose: dict[str, Any]) -> None:
    known = {variable for variable, *_ in SETTINGS_HELP}
    for name in ("backend", "worker"):
        env = compose["services"][name]["environment"]
        assert set(env) <= known, set(env) - known
        assert env["MODEL_DIR"] == "/models"


def test_images_and_model_dir_mounted_at_the_same_paths(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ls_env = services["label-studio"]["environment"]
    root = services["backend"]["environment"]["REID_AL_DOCUMENT_ROOT"]
    assert ls_env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == root
    images = {_mounts(services[name])[root] for name in ("label-studio", "backend", "worker")}
    assert len(images) == 1  # one host folder, one container path, everywhere
    assert _mounts(services["backend"])["/models"] == _mounts(services["worker"])["/models"] == "models"


def test_label_studio_environment_follows_label_studio_md(compose: dict[str, Any]) -> None:
    ls_env = compose["services"]["label-studio"]["environment"]
    assert set(ls_env) >= REQUIRED_LS_ENV
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert ls_env["LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS"] == "false"
    # the backend's key IS Label Studio's fixed token
    token_var = re.match(r"\$\{(\w+)", ls_env["LABEL_STUDIO_USER_TOKEN"])
    key_var = re.match(r"\$\{(\w+)", compose["services"]["backend"]["environment"]["LABEL_STUDIO_API_KEY"])
    assert token_var and key_var and token_var.group(1) == key_var.group(1) == "LABEL_STUDIO_API_KEY"


def test_compose_restates_no_default_of_the_backend(compose: dict[str, Any]) -> None:
    """A REID_AL_* variable left unset in .env reaches the backend empty, which Settings reads as its
    own default (trainer/defaults.py): a default written here would drift from the code's."""
    example = dict(
        line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines() if "=" in line
    )
    defaults = Settings.from_env({})
    for name in ("backend", "worker"):
        for variable, value in compose["services"][name]["environment"].items():
            if not variable.startswith("REID_AL_") or "${" not in str(value):
                continue
            assert value == f"${{{variable}:-}}", f"{variable}: {value} restates a default"
            assert Settings.from_env({variable: ""}) == defaults, f"{variable}: empty is not the default"
            assert example.get(variable, "") == "", f".env.example sets {variable}={example[variable]}"
    assert defaults.strategy == CYCLE_STRATEGY  # what an unset REID_AL_STRATEGY runs


def test_env_example_sets_every_required_variable(compose: dict[str, Any]) -> None:
    text = (DOCKER / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = {
        line.split("=", 1)[0] for line in (DOCKER / ".env.example").read_text().splitlines() if "=" in line
    }
    assert required and required <= example


def test_dockerfile_pins_cpu_torch_like_the_constraints() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert re.search(r"ARG TORCH_VERSION=(\S+)", dockerfile).group(1) == pins["torch"]  # type: ignore[union-attr]
    assert re.search(r"ARG TORCHVISION_VERSION=(\S+)", dockerfile).group(1) == pins["torchvision"]  # type: ignore[union-attr]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    assert "-c requirements/constraints.txt" in dockerfile
    assert re.search(r'ENTRYPOINT \["reid-al"\]', dockerfile)


def test_dockerfile_copy_sources_exist() -> None:
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _target = line.split()[1:]
            for source in sources:
                if "*" in source:
                    continue  # optional (glob) source
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"


def test_docker_compose_config_when_the_plugin_exists(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` plugin on this machine (checked structurally above)")
    env_file = tmp_path / ".env"
    env_file.write_text("LABEL_STUDIO_API_KEY=" + "a" * 40 + "\nLABEL_STUDIO_PASSWORD=pw\n")
    proc = subprocess.run(
        [
            docker,
            "compose",
            "-f",
            str(DOCKER / "docker-compose.yml"),
            "--env-file",
            str(env_file),
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
