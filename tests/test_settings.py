"""Settings from the environment: defaults, conversion, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_backend.settings import SETTINGS_HELP, Settings, SettingsError, settings_help_text


def test_defaults_from_empty_environment() -> None:
    s = Settings.from_env({})
    assert s.model_dir == Path("./model_dir")
    assert s.port == 9090
    assert s.redis_url == ""
    assert s.embedded_redis
    assert s.encoder == "open_clip:ViT-B-32:laion2b_s34b_b79k"
    assert s.strategy == "hybrid"
    assert not s.auth_enabled


def test_every_variable_is_read() -> None:
    env = {
        "LABEL_STUDIO_URL": "http://ls:8080",
        "LABEL_STUDIO_API_KEY": "k",
        "MODEL_DIR": "/tmp/m",
        "BASIC_AUTH_USER": "u",
        "BASIC_AUTH_PASS": "p",
        "REDIS_URL": "redis://r:6379/1",
        "WORKERS": "3",
        "THREADS": "4",
        "LOG_LEVEL": "debug",
        "PORT": "9191",
        "HOST": "127.0.0.1",
        "REID_AL_ENCODER": "mobilenetv2",
        "REID_AL_ENCODER_CHECKPOINT": "/w.pt",
        "REID_AL_STRATEGY": "random",
        "REID_AL_BUDGET": "7",
        "REID_AL_RETRAIN_EVERY": "5",
        "REID_AL_MAX_BODY_BYTES": "2048",
        "REID_AL_PREDICT_EMBED_MAX": "0",
        "REID_AL_PREDICT_MAX_TASKS": "10",
        "REID_AL_IMAGE_ORIGINS": "https://img.example.org",
        "REID_AL_IMAGE_MAX_BYTES": "4096",
        "REID_AL_IMAGE_FETCH_SECONDS": "2.5",
        "REID_AL_EXTRA_JOBS": "a.b, c.d",
        "REID_AL_PREDICT_EMBED_SECONDS": "1.5",
        "REID_AL_DOCUMENT_ROOT": "/data",
        "REID_AL_QUEUE": "q",
        "REID_AL_JOB_TIMEOUT": "60",
        "REID_AL_TORCH_THREADS": "1",
        "REID_AL_BACKEND_URL": "http://reid-al:9191/",
        "REID_AL_STOP_WINDOW": "10",
        "REID_AL_STOP_PATIENCE": "30",
        "REID_AL_STOP_THRESHOLD": "0.2",
        "REID_AL_KEEP_PUSHING": "1",
        "REID_AL_REDUNDANCY_K": "3",
        "REID_AL_REDUNDANCY_MIN_SIZE": "4",
        "REID_AL_REDUNDANCY_MAX_P_SAME": "0",
        "REID_AL_LINK_PAST_CANNOT_LINK": "0",
        "REID_AL_RECONCILE_SECONDS": "0",
        "REID_AL_RECONCILE_FULL_MINUTES": "5",
    }
    s = Settings.from_env(env)
    assert (s.label_studio_url, s.label_studio_api_key, s.model_dir) == (
        "http://ls:8080",
        "k",
        Path("/tmp/m"),
    )
    assert (s.basic_auth_user, s.basic_auth_pass, s.auth_enabled) == ("u", "p", True)
    assert (s.redis_url, s.embedded_redis) == ("redis://r:6379/1", False)
    assert (s.workers, s.threads, s.log_level, s.port, s.host) == (3, 4, "DEBUG", 9191, "127.0.0.1")
    assert (s.encoder, s.encoder_checkpoint, s.strategy, s.budget) == ("mobilenetv2", "/w.pt", "random", 7)
    assert (s.retrain_every, s.max_body_bytes, s.predict_embed_max) == (5, 2048, 0)
    assert (s.predict_embed_seconds, s.document_root, s.queue_name, s.job_timeout) == (1.5, "/data", "q", 60)
    assert s.torch_threads == 1 and s.predict_max_tasks == 10
    assert (s.image_origin_list, s.image_max_bytes, s.image_fetch_seconds) == (
        ("https://img.example.org:443",),
        4096,
        2.5,
    )
    assert s.extra_job_names == ("a.b", "c.d")
    assert (s.backend_url, s.connect_url) == ("http://reid-al:9191/", "http://reid-al:9191")
    assert Settings(port=9292).connect_url == "http://localhost:9292"
    assert (s.stop_window, s.stop_patience, s.stop_threshold, s.keep_pushing) == (10, 30, 0.2, 1)
    assert (s.redundancy_k, s.redundancy_min_size, s.redundancy_max_p_same) == (3, 4, 0.0)
    assert s.link_past_cannot_link == "0" and Settings().link_past_cannot_link == "auto"
    assert (s.reconcile_seconds, s.reconcile_full_minutes) == (0, 5)
    assert set(env) == {v for v, *_ in SETTINGS_HELP}
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("PORT", "abc", "integer"),
        ("REID_AL_REDUNDANCY_K", "0", "between"),
        ("REID_AL_REDUNDANCY_MIN_SIZE", "0", ">="),
        ("REID_AL_REDUNDANCY_MAX_P_SAME", "1.5", "between 0 and 1"),
        ("REID_AL_LINK_PAST_CANNOT_LINK", "2", "one of auto, 1, 0"),
        ("PORT", "70000", "between"),
        ("WORKERS", "0", ">= 1"),
        ("REID_AL_BUDGET", "-1", ">= 1"),
        ("REID_AL_PREDICT_EMBED_SECONDS", "soon", "number"),
        ("LOG_LEVEL", "LOUD", "one of"),
        ("REDIS_URL", "localhost:6379", "redis://"),
        ("REID_AL_MAX_BODY_BYTES", "10", ">= 1024"),
        ("REID_AL_TORCH_THREADS", "-1", ">= 0"),
        ("REID_AL_RECONCILE_SECONDS", "-5", ">= 0"),
        ("REID_AL_RECONCILE_FULL_MINUTES", "0", ">= 1"),
        ("REID_AL_BACKEND_URL", "localhost:9090", "http(s) URL"),
        ("REID_AL_BACKEND_URL", "http://reid-al:9090/?x=1", "http(s) URL"),
        ("REID_AL_BACKEND_URL", "http://u:secret@reid-al:9090/?x=1", "u:***@"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, needle: str) -> None:
    with pytest.raises(SettingsError, match=variable) as info:
        Settings.from_env({variable: value})
    assert info.value.variable == variable
    assert needle in str(info.value)


def test_auth_user_without_password_is_rejected() -> None:
    with pytest.raises(SettingsError, match="BASIC_AUTH"):
        Settings.from_env({"BASIC_AUTH_USER": "u"})


def test_empty_numeric_variable_means_default() -> None:
    assert Settings.from_env({"PORT": ""}).port == 9090


def test_help_text_lists_every_variable() -> None:
    text = settings_help_text()
    for variable, *_ in SETTINGS_HELP:
        assert variable in text


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_secrets_stay_out_of_repr_and_messages() -> None:
    """A logged Settings or a bad REDIS_URL message shows no password or token."""
    from ml_backend.settings import redact_url

    s = Settings(
        basic_auth_user="u",
        basic_auth_pass="PW-1",
        label_studio_api_key="KEY-2",
        redis_url="redis://:RPW-3@host:6379/0",
    )
    for secret in ("PW-1", "KEY-2", "RPW-3"):
        assert secret not in repr(s) and secret not in str(s)
    assert redact_url("redis://:RPW-3@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    with pytest.raises(SettingsError) as info:
        Settings(redis_url="http://user:RPW-3@host")
    assert "RPW-3" not in str(info.value)


def test_a_jwt_access_token_as_api_key_is_refused_naming_the_variable() -> None:
    """A Personal Access Token (a JWT refresh token) and a legacy token are both accepted; an access token
    expires within minutes, so it stops start-up instead of failing every push five minutes later."""
    import base64
    import json

    def jwt(kind: str) -> str:
        part = [
            base64.urlsafe_b64encode(json.dumps(v).encode()).decode().rstrip("=")
            for v in ({"alg": "HS256"}, {"token_type": kind, "exp": 8_000_000_000})
        ]
        return ".".join([*part, "c2ln"])

    assert Settings.from_env({"LABEL_STUDIO_API_KEY": jwt("refresh")}).label_studio_api_key
    assert Settings.from_env({"LABEL_STUDIO_API_KEY": "ab" * 20}).label_studio_api_key == "ab" * 20
    with pytest.raises(SettingsError, match="LABEL_STUDIO_API_KEY: is a JWT of token_type 'access'") as info:
        Settings.from_env({"LABEL_STUDIO_API_KEY": jwt("access")})
    assert info.value.variable == "LABEL_STUDIO_API_KEY"
