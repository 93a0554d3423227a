"""Service settings, read once from the environment into one frozen object.

Why one object: every process (web server, RQ worker, CLI) must agree on MODEL_DIR, Redis and the
encoder, and a typo in an environment variable should fail at start-up with the variable's name,
not deep inside a job. The names follow Label Studio's ML-backend conventions (see DESIGN.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# --- service defaults (architecture.md: service defaults live here, nowhere else) ---------------------
DEFAULT_MODEL_DIR = "./model_dir"
DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 9090
DEFAULT_WORKERS = 1
DEFAULT_THREADS = 8
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_ENCODER = "open_clip:ViT-B-32:laion2b_s34b_b79k"
DEFAULT_STRATEGY = "aas"
DEFAULT_BUDGET = 50  # pairs pushed per cycle
DEFAULT_RETRAIN_EVERY = 20  # new constraints that trigger an automatic cycle
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # a 100-task /predict body with long URLs is ~100 kB
DEFAULT_PREDICT_EMBED_MAX = 16  # images embedded on the fly per /predict call
DEFAULT_PREDICT_EMBED_SECONDS = 20.0  # Label Studio's /predict timeout is 100 s
DEFAULT_QUEUE_NAME = "reid-al"
DEFAULT_JOB_TIMEOUT = 3600  # seconds a cycle job may run (also the per-project lock TTL)
DEFAULT_LABEL_STUDIO_URL = "http://localhost:8080"
DEFAULT_TORCH_THREADS = 0  # 0 = torch's own default; 1 is several times faster when workers share a CPU

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the environment variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


@dataclass(frozen=True)
class Settings:
    """All service settings. Build with `Settings.from_env()`; each field documents its variable."""

    label_studio_url: str = DEFAULT_LABEL_STUDIO_URL
    label_studio_api_key: str = ""
    model_dir: Path = Path(DEFAULT_MODEL_DIR)
    basic_auth_user: str = ""
    basic_auth_pass: str = ""
    redis_url: str = ""
    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS
    log_level: str = DEFAULT_LOG_LEVEL
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    encoder: str = DEFAULT_ENCODER
    encoder_checkpoint: str = ""
    strategy: str = DEFAULT_STRATEGY
    budget: int = DEFAULT_BUDGET
    retrain_every: int = DEFAULT_RETRAIN_EVERY
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    predict_embed_max: int = DEFAULT_PREDICT_EMBED_MAX
    predict_embed_seconds: float = DEFAULT_PREDICT_EMBED_SECONDS
    document_root: str = ""
    queue_name: str = DEFAULT_QUEUE_NAME
    job_timeout: int = DEFAULT_JOB_TIMEOUT
    torch_threads: int = DEFAULT_TORCH_THREADS

    def __post_init__(self) -> None:
        _check_int("PORT", self.port, 1, 65535)
        _check_int("WORKERS", self.workers, 1)
        _check_int("THREADS", self.threads, 1)
        _check_int("REID_AL_BUDGET", self.budget, 1)
        _check_int("REID_AL_RETRAIN_EVERY", self.retrain_every, 1)
        _check_int("REID_AL_MAX_BODY_BYTES", self.max_body_bytes, 1024)
        _check_int("REID_AL_PREDICT_EMBED_MAX", self.predict_embed_max, 0)
        _check_int("REID_AL_JOB_TIMEOUT", self.job_timeout, 10)
        _check_int("REID_AL_TORCH_THREADS", self.torch_threads, 0)
        if not self.predict_embed_seconds >= 0:
            raise SettingsError("REID_AL_PREDICT_EMBED_SECONDS",
                                f"must be >= 0, got {self.predict_embed_seconds}")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError("LOG_LEVEL",
                                f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("BASIC_AUTH_USER", "BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if not self.encoder:
            raise SettingsError("REID_AL_ENCODER", "must not be empty")
        if not self.strategy:
            raise SettingsError("REID_AL_STRATEGY", "must not be empty")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("REDIS_URL",
                                f"must start with redis://, rediss:// or unix://, got {self.redis_url!r}")
        if not self.queue_name:
            raise SettingsError("REID_AL_QUEUE", "must not be empty")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user)

    @property
    def embedded_redis(self) -> bool:
        """No REDIS_URL: `reid-al serve` runs its own redis-server under MODEL_DIR."""
        return not self.redis_url

    def project_dir(self, project: str) -> Path:
        return self.model_dir / str(project)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every variable in `SETTINGS_HELP` from `env` (default os.environ); unset -> default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        by_field = {f.name: f for f in fields(cls)}
        for variable, field_name, _default, _help in SETTINGS_HELP:
            raw = env.get(variable)
            if raw is None or (raw == "" and field_name not in _EMPTY_ALLOWED):
                continue
            values[field_name] = _convert(variable, by_field[field_name].type, raw.strip())
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The inverse of from_env, so `reid-al serve` can hand its settings to child processes."""
        out: dict[str, str] = {}
        for variable, field_name, _default, _help in SETTINGS_HELP:
            out[variable] = str(getattr(self, field_name))
        return out


_EMPTY_ALLOWED = {"redis_url", "label_studio_api_key", "basic_auth_user", "basic_auth_pass",
                  "encoder_checkpoint", "document_root"}

# (environment variable, field, default shown in --help, what it does)
SETTINGS_HELP: tuple[tuple[str, str, str, str], ...] = (
    ("LABEL_STUDIO_URL", "label_studio_url", DEFAULT_LABEL_STUDIO_URL,
     "Label Studio base URL the worker pushes tasks and predictions to"),
    ("LABEL_STUDIO_API_KEY", "label_studio_api_key", "", "Label Studio API token (Authorization: Token ...)"),
    ("MODEL_DIR", "model_dir", DEFAULT_MODEL_DIR,
     "per-project pools, features, model versions and the embedded Redis data"),
    ("BASIC_AUTH_USER", "basic_auth_user", "", "basic-auth user required on every route but /health"),
    ("BASIC_AUTH_PASS", "basic_auth_pass", "", "basic-auth password (set together with BASIC_AUTH_USER)"),
    ("REDIS_URL", "redis_url", "", "external Redis (production); empty = embedded redis-server + worker"),
    ("WORKERS", "workers", str(DEFAULT_WORKERS),
     "gunicorn worker processes"),
    ("THREADS", "threads", str(DEFAULT_THREADS), "gunicorn threads per worker"),
    ("LOG_LEVEL", "log_level", DEFAULT_LOG_LEVEL, "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ("PORT", "port", str(DEFAULT_PORT), "HTTP port of the backend"),
    ("HOST", "host", DEFAULT_HOST, "HTTP bind address of the backend"),
    ("REID_AL_ENCODER", "encoder", DEFAULT_ENCODER,
     "frozen encoder spec (open_clip:<model>:<tag> or mobilenetv2)"),
    ("REID_AL_ENCODER_CHECKPOINT", "encoder_checkpoint", "", "local checkpoint file for the encoder"),
    ("REID_AL_STRATEGY", "strategy", DEFAULT_STRATEGY,
     "pair sampler: aas, uncertainty, random, coreset, margin"),
    ("REID_AL_BUDGET", "budget", str(DEFAULT_BUDGET), "pairs pushed to Label Studio per cycle"),
    ("REID_AL_RETRAIN_EVERY", "retrain_every", str(DEFAULT_RETRAIN_EVERY),
     "new constraints that trigger an automatic cycle"),
    ("REID_AL_MAX_BODY_BYTES", "max_body_bytes", str(DEFAULT_MAX_BODY_BYTES),
     "largest accepted request body"),
    ("REID_AL_PREDICT_EMBED_MAX", "predict_embed_max", str(DEFAULT_PREDICT_EMBED_MAX),
     "images /predict may embed on the fly per call"),
    ("REID_AL_PREDICT_EMBED_SECONDS", "predict_embed_seconds", str(DEFAULT_PREDICT_EMBED_SECONDS),
     "time /predict may spend embedding on the fly per call"),
    ("REID_AL_DOCUMENT_ROOT", "document_root", "",
     "directory that Label Studio's /data/local-files/?d= URLs are relative to"),
    ("REID_AL_QUEUE", "queue_name", DEFAULT_QUEUE_NAME, "RQ queue name"),
    ("REID_AL_JOB_TIMEOUT", "job_timeout", str(DEFAULT_JOB_TIMEOUT),
     "seconds a cycle may run (also the per-project lock lifetime)"),
    ("REID_AL_TORCH_THREADS", "torch_threads", str(DEFAULT_TORCH_THREADS),
     "torch threads for adapter training in a worker (0 = torch default; 1 when workers share a CPU)"),
)


def settings_help_text() -> str:
    """One line per variable, for `reid-al --help`."""
    width = max(len(v) for v, *_ in SETTINGS_HELP)
    lines = ["settings (environment variables):"]
    for variable, _field, default, text in SETTINGS_HELP:
        shown = f" [default: {default}]" if default else ""
        lines.append(f"  {variable.ljust(width)}  {text}{shown}")
    return "\n".join(lines)


def _convert(variable: str, type_name: Any, raw: str) -> Any:
    type_name = str(type_name)
    if type_name == "int":
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(variable, f"must be an integer, got {raw!r}") from None
    if type_name == "float":
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(variable, f"must be a number, got {raw!r}") from None
    if type_name == "Path":
        return Path(raw)
    if variable == "LOG_LEVEL":
        return raw.upper()
    return raw


def _check_int(variable: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(variable, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SettingsError(variable, f"must be {bound}, got {value}")
