"""Service settings, read once from the environment into one frozen object.

Why one object: every process (web server, RQ worker, CLI) must agree on MODEL_DIR, Redis and the
encoder, and a typo in an environment variable should fail at start-up with the variable's name,
not deep inside a job. The names follow Label Studio's ML-backend conventions (see DESIGN.md).

Each setting is declared once, as a field: its variable, default, help line and bounds. ``--help``,
``from_env`` and ``to_env`` are generated from those declarations; the cycle's and the encoder's
defaults come from trainer/defaults.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ml_backend.errors import SettingsError
from strategies.defaults import (
    IDENTITY_LINK_PAST_CANNOT_LINK,
    REDUNDANCY_K,
    REDUNDANCY_MAX_P_SAME,
    REDUNDANCY_MIN_SIZE,
    STOP_PATIENCE,
    STOP_THRESHOLD,
    STOP_WINDOW,
)
from trainer.defaults import CYCLE_BUDGET, CYCLE_STRATEGY, DEFAULT_ENCODER_SPEC

__all__ = [
    "LOG_LEVELS",
    "SETTINGS_HELP",
    "Settings",
    "SettingsError",
    "origin_of",
    "redact_url",
    "settings_help_text",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LINK_CHOICES = ("auto", "1", "0")  # REID_AL_LINK_PAST_CANNOT_LINK


def _link_setting(value: bool | str) -> str:
    """strategies' ``link_past_cannot_link`` as the setting spells it."""
    return value if isinstance(value, str) else str(int(value))


def link_rule(setting: str) -> bool | str:
    """The setting as the cycle takes it: True, False or "auto"."""
    return {"1": True, "0": False}.get(setting, setting)
_MODEL_DIR = Path("./model_dir")


def _setting(
    variable: str,
    default: Any,
    help_text: str,
    *,
    low: int | None = None,
    high: int | None = None,
    empty_ok: bool = False,
    secret: bool = False,
) -> Any:
    """One setting: its environment ``variable``, ``default`` and ``help_text``; ``low``/``high`` bound an
    integer; ``empty_ok``: an empty variable means the empty string (else it means "use the default");
    ``secret``: left out of the object's repr, so a logged or printed Settings shows no password."""
    shown = f"./{default}" if isinstance(default, Path) and not default.is_absolute() else str(default)
    return field(
        default=default,
        repr=not secret,
        metadata={
            "variable": variable,
            "help": help_text,
            "low": low,
            "high": high,
            "empty_ok": empty_ok,
            "shown": shown,
        },
    )


_URL_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """``scheme://host:port`` of an http(s) URL (default port made explicit), else None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _URL_PORTS or not parts.hostname:
        return None
    return f"{scheme}://{parts.hostname.lower()}:{port or _URL_PORTS[scheme]}"


def redact_url(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***`` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


@dataclass(frozen=True)
class Settings:
    """All service settings. Build with `Settings.from_env()`; each field declares its variable."""

    label_studio_url: str = _setting(
        "LABEL_STUDIO_URL",
        "http://localhost:8080",
        "Label Studio base URL the worker pushes tasks and predictions to",
    )
    label_studio_api_key: str = _setting(
        "LABEL_STUDIO_API_KEY",
        "",
        "Label Studio API token: a Personal Access Token (Label Studio >= 1.20's default) or a legacy token",
        empty_ok=True,
        secret=True,
    )
    model_dir: Path = _setting(  # noqa: RUF009 - _setting returns a dataclasses.field
        "MODEL_DIR", _MODEL_DIR, "per-project pools, features, model versions and the embedded Redis data"
    )
    basic_auth_user: str = _setting(
        "BASIC_AUTH_USER", "", "basic-auth user required on every route but /health", empty_ok=True
    )
    basic_auth_pass: str = _setting(
        "BASIC_AUTH_PASS",
        "",
        "basic-auth password (set together with BASIC_AUTH_USER)",
        empty_ok=True,
        secret=True,
    )
    redis_url: str = _setting(
        "REDIS_URL",
        "",
        "external Redis (production); empty = embedded redis-server + worker",
        empty_ok=True,
        secret=True,
    )
    workers: int = _setting("WORKERS", 1, "gunicorn worker processes", low=1)
    threads: int = _setting("THREADS", 8, "gunicorn threads per worker", low=1)
    log_level: str = _setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL")
    port: int = _setting("PORT", 9090, "HTTP port of the backend", low=1, high=65535)
    host: str = _setting("HOST", "0.0.0.0", "HTTP bind address of the backend")
    backend_url: str = _setting(
        "REID_AL_BACKEND_URL",
        "",
        "URL at which Label Studio reaches this backend (what `reid-al connect` registers); "
        "empty = http://localhost:PORT",
        empty_ok=True,
    )
    encoder: str = _setting(
        "REID_AL_ENCODER",
        DEFAULT_ENCODER_SPEC,
        "frozen encoder spec (open_clip:<model>:<tag> or mobilenetv2)",
    )
    encoder_checkpoint: str = _setting(
        "REID_AL_ENCODER_CHECKPOINT", "", "local checkpoint file for the encoder", empty_ok=True
    )
    strategy: str = _setting(
        "REID_AL_STRATEGY",
        CYCLE_STRATEGY,
        "pair sampler: hybrid, match_first, aas, uncertainty, random, coreset, margin",
    )
    budget: int = _setting("REID_AL_BUDGET", CYCLE_BUDGET, "pairs pushed to Label Studio per cycle", low=1)
    retrain_every: int = _setting(
        "REID_AL_RETRAIN_EVERY", 20, "new constraints that trigger an automatic cycle", low=1
    )
    max_body_bytes: int = _setting(  # a 100-task /predict body with long URLs is ~100 kB
        "REID_AL_MAX_BODY_BYTES", 10 * 1024 * 1024, "largest accepted request body", low=1024
    )
    predict_max_tasks: int = _setting(  # 60,000 tasks held a thread for 27 s
        "REID_AL_PREDICT_MAX_TASKS", 1000, "most tasks one /predict call may send (413 above)", low=1
    )
    predict_embed_max: int = _setting(
        "REID_AL_PREDICT_EMBED_MAX", 16, "images /predict may embed on the fly per call", low=0
    )
    predict_embed_seconds: float = _setting(  # Label Studio's /predict timeout is 100 s
        "REID_AL_PREDICT_EMBED_SECONDS", 20.0, "time /predict may spend embedding on the fly per call"
    )
    document_root: str = _setting(
        "REID_AL_DOCUMENT_ROOT",
        "",
        "directory that Label Studio's /data/local-files/?d= URLs are relative to",
        empty_ok=True,
    )
    image_origins: str = _setting(
        "REID_AL_IMAGE_ORIGINS",
        "",
        "further origins (scheme://host[:port], comma-separated) task images may be downloaded from; "
        "LABEL_STUDIO_URL and files under REID_AL_DOCUMENT_ROOT are always allowed",
        empty_ok=True,
    )
    image_max_bytes: int = _setting(
        "REID_AL_IMAGE_MAX_BYTES", 20 * 1024 * 1024, "largest image file read or downloaded", low=1024
    )
    image_fetch_seconds: float = _setting(
        "REID_AL_IMAGE_FETCH_SECONDS", 10.0, "total time one image download may take"
    )
    reconcile_seconds: int = _setting(
        "REID_AL_RECONCILE_SECONDS",
        60,
        "seconds between a worker's reconciliations of each project with Label Studio's annotations "
        "(what webhooks missed); 0 = off",
        low=0,
    )
    reconcile_full_minutes: int = _setting(
        "REID_AL_RECONCILE_FULL_MINUTES",
        60,
        "minutes between full reconciliations; the others read only tasks changed since the last one",
        low=1,
    )
    queue_name: str = _setting("REID_AL_QUEUE", "reid-al", "RQ queue name")
    extra_jobs: str = _setting(
        "REID_AL_EXTRA_JOBS",
        "",
        "dotted names of further functions an RQ worker may run (comma-separated); it refuses any other "
        "job than the service's own",
        empty_ok=True,
    )
    job_timeout: int = _setting(
        "REID_AL_JOB_TIMEOUT", 3600, "seconds a cycle may run (also the per-project lock lifetime)", low=10
    )
    torch_threads: int = _setting(  # 1 is several times faster when workers share a CPU
        "REID_AL_TORCH_THREADS",
        0,
        "torch threads for adapter training in a worker (0 = torch default; 1 when workers share a CPU)",
        low=0,
    )
    stop_window: int = _setting(
        "REID_AL_STOP_WINDOW",
        STOP_WINDOW,
        "stopping rule: span of the weighted rate of answers that change the identities",
        low=1,
    )
    stop_patience: int = _setting(
        "REID_AL_STOP_PATIENCE",
        STOP_PATIENCE,
        "stopping rule: N in 'the chance that any of the next N answers changes the identities'",
        low=1,
    )
    stop_threshold: float = _setting(
        "REID_AL_STOP_THRESHOLD",
        STOP_THRESHOLD,
        "stopping rule: stop pushing new pairs once that chance is below this (0 < value < 1)",
    )
    keep_pushing: int = _setting(
        "REID_AL_KEEP_PUSHING", 0, "1: push new pairs even after the stopping rule is reached", low=0, high=1
    )
    redundancy_k: int = _setting(
        "REID_AL_REDUNDANCY_K",
        REDUNDANCY_K,
        "'same' answers a large or doubted merge needs before it merges (1 = no second opinions)",
        low=1,
        high=9,
    )
    redundancy_min_size: int = _setting(
        "REID_AL_REDUNDANCY_MIN_SIZE",
        REDUNDANCY_MIN_SIZE,
        "a merge needs a second opinion when the smaller of its two groups has at least this many images",
        low=1,
    )
    redundancy_max_p_same: float = _setting(
        "REID_AL_REDUNDANCY_MAX_P_SAME",
        REDUNDANCY_MAX_P_SAME,
        "... or when the model's calibrated P(same) of the pair is below this (0 = never)",
    )
    link_past_cannot_link: str = _setting(
        "REID_AL_LINK_PAST_CANNOT_LINK",
        _link_setting(IDENTITY_LINK_PAST_CANNOT_LINK),
        "auto, 1 or 0. 1: an image whose nearest image was answered 'different' joins its next one; 0: it "
        "makes no link of its own; auto: 1 until answers conflict (an annotator erred), then 0",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.type == "int":
                meta = f.metadata
                _check_int(meta["variable"], getattr(self, f.name), meta["low"], meta["high"])
        if not self.predict_embed_seconds >= 0:
            raise SettingsError(
                "REID_AL_PREDICT_EMBED_SECONDS", f"must be >= 0, got {self.predict_embed_seconds}"
            )
        if not 0 < self.image_fetch_seconds <= 3600:
            raise SettingsError(
                "REID_AL_IMAGE_FETCH_SECONDS", f"must be > 0 and at most 3600, got {self.image_fetch_seconds}"
            )
        if not 0.0 <= self.redundancy_max_p_same <= 1.0:
            raise SettingsError(
                "REID_AL_REDUNDANCY_MAX_P_SAME", f"must be between 0 and 1, got {self.redundancy_max_p_same}"
            )
        if not 0.0 < self.stop_threshold < 1.0:
            raise SettingsError(
                "REID_AL_STOP_THRESHOLD", f"must be between 0 and 1 (exclusive), got {self.stop_threshold}"
            )
        _ = self.image_origin_list  # raises SettingsError on a malformed entry
        if self.label_studio_api_key:
            from ml_backend.labelstudio import token_kind

            try:
                token_kind(self.label_studio_api_key)
            except ValueError as exc:  # a JWT access token: expires within minutes
                reason = str(exc).removeprefix("LABEL_STUDIO_API_KEY ")
                raise SettingsError("LABEL_STUDIO_API_KEY", reason) from None
        if self.link_past_cannot_link not in LINK_CHOICES:
            raise SettingsError(
                "REID_AL_LINK_PAST_CANNOT_LINK",
                f"must be one of {', '.join(LINK_CHOICES)}, got {self.link_past_cannot_link!r}",
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(
                "LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("BASIC_AUTH_USER", "BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if not self.encoder:
            raise SettingsError("REID_AL_ENCODER", "must not be empty")
        if not self.strategy:
            raise SettingsError("REID_AL_STRATEGY", "must not be empty")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            shown = redact_url(self.redis_url)
            raise SettingsError("REDIS_URL", f"must start with redis://, rediss:// or unix://, got {shown!r}")
        if self.backend_url:
            parts = urlsplit(self.backend_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                raise SettingsError(
                    "REID_AL_BACKEND_URL",
                    f"must be an http(s) URL such as http://reid-al:9090, got "
                    f"{redact_url(self.backend_url)!r}",
                )
        if not self.queue_name:
            raise SettingsError("REID_AL_QUEUE", "must not be empty")

    @property
    def image_origin_list(self) -> tuple[str, ...]:
        """REID_AL_IMAGE_ORIGINS as ``scheme://host:port`` origins (what ml_backend.fetch compares)."""
        out = []
        for entry in filter(None, (e.strip() for e in self.image_origins.split(","))):
            origin = origin_of(entry)
            if origin is None or entry.rstrip("/").count("/") > 2:
                raise SettingsError(
                    "REID_AL_IMAGE_ORIGINS",
                    f"{entry!r} is not an origin like https://images.example.org[:port]",
                )
            out.append(origin)
        return tuple(out)

    @property
    def connect_url(self) -> str:
        """The backend's URL as Label Studio reaches it: REID_AL_BACKEND_URL, else localhost on PORT."""
        return (self.backend_url or f"http://localhost:{self.port}").rstrip("/")

    @property
    def extra_job_names(self) -> tuple[str, ...]:
        return tuple(filter(None, (e.strip() for e in self.extra_jobs.split(","))))

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user)

    @property
    def embedded_redis(self) -> bool:
        """No REDIS_URL: `reid-al serve` runs its own redis-server under MODEL_DIR."""
        return not self.redis_url

    def project_dir(self, project: str) -> Path:
        """MODEL_DIR/<project>: the pool file, the feature store, model versions and downloads."""
        return self.model_dir / str(project)

    def features_dir(self, project: str) -> Path:
        """The project's embedding store (trainer.store.EmbeddingStore), read by every cycle."""
        return self.project_dir(project) / "features"

    def downloads_dir(self, project: str) -> Path:
        """Images of user-imported tasks fetched over HTTP, cached for embedding."""
        return self.project_dir(project) / "downloads"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every declared variable from `env` (default os.environ); unset -> default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            variable = f.metadata["variable"]
            raw = env.get(variable)
            if raw is None or (raw == "" and not f.metadata["empty_ok"]):
                continue
            values[f.name] = _convert(variable, f.type, raw.strip())
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The inverse of from_env, so `reid-al serve` can hand its settings to child processes."""
        return {f.metadata["variable"]: str(getattr(self, f.name)) for f in fields(self)}


# (environment variable, field, default shown in --help, what it does), generated from the fields
SETTINGS_HELP: tuple[tuple[str, str, str, str], ...] = tuple(
    (f.metadata["variable"], f.name, f.metadata["shown"], f.metadata["help"]) for f in fields(Settings)
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


def _check_int(variable: str, value: Any, low: int | None, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(variable, f"must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SettingsError(variable, f"must be {bound}, got {value}")
