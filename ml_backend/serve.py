"""How `reid-al serve` starts the web server, and when its bind needs a warning.

Why gunicorn with a pre-reading worker: it reads every request before a thread takes it, so slow clients
starve nothing; the Flask development server is the fallback when gunicorn is not installed.
"""

from __future__ import annotations

from ml_backend.settings import Settings

__all__ = ["ACCESS_LOG_FORMAT", "LOOPBACK", "WORKER_CONNECTIONS", "exposure_warning", "web_command"]

WORKER_CONNECTIONS = 1000  # open connections per gunicorn worker, slow ones included
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


def web_command(settings: Settings, dev_server: bool) -> list[str]:
    from ml_backend.embedded import python_module_command

    if not dev_server:
        try:
            import gunicorn  # noqa: F401
        except ImportError:
            dev_server = True
    if dev_server:
        return python_module_command(
            "flask",
            "--app",
            "ml_backend.wsgi:app",
            "run",
            "--host",
            settings.host,
            "--port",
            str(settings.port),
            "--no-reload",
        )
    # The worker reads every request before a thread takes it (slow clients starve nothing); the access
    # log names no user: gunicorn's %(u)s is whatever precedes ':' in a Basic header, which is the
    # password itself when a client sends a malformed one.
    return python_module_command(
        "gunicorn",
        "--worker-class",
        "ml_backend.httpworker.PrereadThreadWorker",
        "--workers",
        str(settings.workers),
        "--threads",
        str(settings.threads),
        "--worker-connections",
        str(WORKER_CONNECTIONS),
        "--bind",
        f"{settings.host}:{settings.port}",
        "--timeout",
        "120",
        "--graceful-timeout",
        "10",
        "--no-control-socket",
        "--log-level",
        settings.log_level.lower(),
        "--access-logfile",
        "-",
        "--access-logformat",
        ACCESS_LOG_FORMAT,
        "ml_backend.wsgi:app",
    )


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def exposure_warning(settings: Settings) -> str | None:
    """A warning when the backend listens beyond this machine with basic auth off (the default bind)."""
    if settings.auth_enabled or settings.host in LOOPBACK or settings.host.startswith("127."):
        return None
    return (
        f"WARNING: listening on {settings.host}:{settings.port} with BASIC_AUTH_USER unset: anyone who "
        "can reach this port can post answers, request cycles and read /status. Set BASIC_AUTH_USER "
        "and BASIC_AUTH_PASS, or HOST=127.0.0.1 when Label Studio runs on this machine."
    )
