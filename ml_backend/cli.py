"""`reid-al`: serve | worker | connect | ingest | sync | status | export | report | simulate | finetune.

Why `serve` starts three processes: with no REDIS_URL the backend must work from one command, with
the same topology as production: a real redis-server (embedded, data under MODEL_DIR/redis), one RQ
worker process that trains, and gunicorn serving the protocol. With REDIS_URL, `serve` starts only
the web server and training runs in separate `reid-al worker` processes (any number, any host).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ml_backend.errors import ConnectError, LabelStudioError
from ml_backend.finetune import FINETUNE_DESCRIPTION
from ml_backend.settings import Settings, SettingsError, settings_help_text

log = logging.getLogger("reid_al")

DESCRIPTION = "Active learning for re-identification, served as a Label Studio ML backend."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reid-al",
        description=DESCRIPTION,
        epilog=settings_help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True

    serve = sub.add_parser(
        "serve",
        help="run the backend: web server (+ embedded Redis and an RQ worker without REDIS_URL)",
        epilog=settings_help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="bind address (HOST)")
    serve.add_argument("--port", type=int, help="port (PORT)")
    serve.add_argument("--workers", type=int, help="gunicorn worker processes (WORKERS)")
    serve.add_argument(
        "--rq-workers",
        type=int,
        default=1,
        help="RQ worker processes started next to the embedded Redis (default 1)",
    )
    serve.add_argument(
        "--no-worker", action="store_true", help="start no RQ worker (with REDIS_URL none is started anyway)"
    )
    serve.add_argument(
        "--dev-server", action="store_true", help="use Flask's development server instead of gunicorn"
    )

    worker = sub.add_parser(
        "worker",
        help="run one RQ worker that executes cycles and embedding jobs",
        epilog=settings_help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--name", help="worker name (default: RQ's)")

    ingest = sub.add_parser("ingest", help="register an image folder or a CSV/JSONL manifest for a project")
    ingest.add_argument("source", help="folder (<root>/<identity?>/<image>) or manifest (.csv/.jsonl)")
    ingest.add_argument("--project", required=True, help="Label Studio project id")
    ingest.add_argument("--no-embed", action="store_true", help="register the pool without embedding it")
    ingest.add_argument("--no-push", action="store_true", help="do not create initial tasks in Label Studio")

    connect = sub.add_parser(
        "connect",
        help="connect a Label Studio project to this backend: the ML backend (with basic auth when set) "
        "and its webhook (with the Authorization header); running it again changes nothing",
    )
    connect.add_argument("--project", required=True, help="Label Studio project id")
    connect.add_argument(
        "--url",
        help="the backend's URL as Label Studio reaches it (default REID_AL_BACKEND_URL, else "
        "http://localhost:PORT)",
    )
    connect.add_argument("--json", action="store_true", help="print JSON")

    sync = sub.add_parser("sync", help="rebuild constraints from Label Studio's annotations")
    sync.add_argument("--project", required=True, help="Label Studio project id")

    status = sub.add_parser("status", help="show cycle/job status per project")
    status.add_argument("--project", help="one project (default: all)")
    status.add_argument("--json", action="store_true", help="print JSON")

    export = sub.add_parser(
        "export",
        help="write every pool image's identity (verified or inferred) as CSV or JSON",
        description=EXPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--project", required=True, help="Label Studio project id")
    export.add_argument("--out", default="-", help="file to write; - for stdout (default)")
    export.add_argument(
        "--format", choices=("csv", "json"), help="default: the suffix of --out (.json -> json), else csv"
    )
    export.add_argument("--version", help="model version to export (default: the latest)")

    report = sub.add_parser("report", help="write a progress picture (PNG) and print a summary of a project")
    report.add_argument("--project", required=True, help="Label Studio project id")
    report.add_argument("--out", default="report.png", help="PNG file to write (default report.png)")
    report.add_argument("--json", action="store_true", help="print the summary as JSON")

    sub.add_parser(
        "simulate", help="offline active-learning simulator (arguments go to it; see --help)", add_help=False
    )

    finetune = sub.add_parser(
        "finetune",
        help="fine-tune the encoder's visual tower on a project (GPU option; slow on a CPU)",
        description=FINETUNE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    finetune.add_argument(
        "--project", required=True, help="Label Studio project id (its pool must be ingested)"
    )
    finetune.add_argument("--out", required=True, help="checkpoint file to write")
    finetune.add_argument("--epochs", type=int, help="training epochs (default: FinetuneConfig's)")
    finetune.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto = CUDA when available (default)",
    )
    finetune.add_argument(
        "--num-workers", type=int, help="image decoding processes (default: FinetuneConfig's)"
    )
    return parser


def _settings(**overrides: Any) -> Settings:
    settings = Settings.from_env()
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _redis(settings: Settings) -> Any:
    from ml_backend.app import redis_from_settings

    return redis_from_settings(settings)


# --- serve -----------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from ml_backend.embedded import EmbeddedRedis, python_module_command, start_process, stop_process
    from ml_backend.embedded import stop_rq_worker as stop_worker
    from ml_backend.serve import exposure_warning
    from ml_backend.serve import web_command as serve_web_command
    from ml_backend.supervise import STATUS_FILE, Child, Supervisor

    settings = _settings(host=args.host, port=args.port, workers=args.workers)
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(settings.to_env())
    stopping = {"signal": None}

    def _stop(signum: int, _frame: Any) -> None:
        stopping["signal"] = signum

    warning = exposure_warning(settings)
    if warning:
        print(f"reid-al: {warning}", file=sys.stderr, flush=True)
    # SIGHUP too: closing the terminal must stop the children in order, not leave them running.
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    supervisor = Supervisor(settings.model_dir / STATUS_FILE)
    try:
        if settings.embedded_redis:
            server = EmbeddedRedis(settings.model_dir / "redis")
            supervisor.add(
                Child(
                    "redis-server",
                    start=lambda: server.restart().process,
                    stop=lambda _p: server.stop(),
                    extra={"address": server.address},
                )
            )
            env["REDIS_URL"] = server.url
            print(
                f"reid-al: embedded redis-server at {server.address} (password in "
                f"{server.data_dir / 'redis.conf'}; data in {server.data_dir})",
                flush=True,
            )
            worker_command = python_module_command("ml_backend.cli", "worker")
            if not args.no_worker:
                for n in range(max(0, args.rq_workers)):
                    supervisor.add(
                        Child(
                            f"rq worker {n}",
                            stop=lambda p: stop_worker(p, timeout=15),
                            start=lambda: start_process(worker_command, env=env),
                        )
                    )
        web_command = serve_web_command(settings, args.dev_server)
        supervisor.add(
            Child(
                "web server",
                start=lambda: start_process(web_command, env=env),
                stop=lambda p: stop_process(p, timeout=15),
            )
        )
        print(
            f"reid-al: serving on http://{settings.host}:{settings.port} (MODEL_DIR={settings.model_dir})",
            flush=True,
        )
        while stopping["signal"] is None:
            supervisor.poll()
            time.sleep(0.1)
    finally:
        # Web server first (no new jobs), then workers: an RQ worker needs its cold shutdown, which also
        # kills the work-horse running a cycle (a plain SIGTERM + SIGKILL would orphan it), then Redis.
        supervisor.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("reid-al: stopped", flush=True)
    return 0


# --- worker ----------------------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    from ml_backend.worker import make_worker

    settings = _settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = make_worker(settings, _redis(settings), name=args.name)
    worker.work(burst=args.burst, logging_level=settings.log_level, with_scheduler=False)
    return 0


# --- connect / ingest / sync -----------------------------------------------------------------------------
def _label_studio_client(settings: Settings, command: str) -> Any:
    from ml_backend.labelstudio import LabelStudioClient

    if not settings.label_studio_api_key:
        raise SettingsError(
            "LABEL_STUDIO_API_KEY", f"not set: `reid-al {command}` needs Label Studio's API token"
        )
    return LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)


def cmd_connect(args: argparse.Namespace) -> int:
    from ml_backend.connect import connect_project

    settings = _settings()
    client = _label_studio_client(settings, "connect")
    auth = (settings.basic_auth_user, settings.basic_auth_pass) if settings.auth_enabled else None
    report = connect_project(client, args.project, args.url or settings.connect_url, auth=auth)
    print(json.dumps(report.to_dict(), indent=2) if args.json else "\n".join(report.lines()))
    return 0 if report.connected else 1


def cmd_ingest(args: argparse.Namespace) -> int:
    from ml_backend.ingest import ingest

    settings = _settings()
    logging.basicConfig(level=settings.log_level)
    report = ingest(
        args.source, project=args.project, settings=settings, embed=not args.no_embed, push=not args.no_push
    )
    print(json.dumps(_jsonable(report), indent=2, default=str))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from ml_backend.sync import sync

    settings = _settings()
    logging.basicConfig(level=settings.log_level)
    report = sync(project=args.project, settings=settings, redis=_redis(settings))
    print(json.dumps(_jsonable(report), indent=2, default=str))
    return 0


def _jsonable(report: Any) -> Any:
    if hasattr(report, "to_dict"):
        return report.to_dict()
    if hasattr(report, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(report)
    return report


# --- finetune --------------------------------------------------------------------------------------------
def cmd_finetune(args: argparse.Namespace) -> int:
    from ml_backend.finetune import finetune_project

    settings = _settings()
    logging.basicConfig(level=settings.log_level)
    report = finetune_project(
        settings,
        args.project,
        args.out,
        epochs=args.epochs,
        device=args.device,
        num_workers=args.num_workers,
        progress=sys.stderr.isatty(),
    )
    print(json.dumps(report, indent=2))
    print(
        f"\nFine-tuned weights: {report['checkpoint']}\n"
        "To use them, set on the worker and the web server (and for ingest):\n"
        f"  export REID_AL_ENCODER={settings.encoder}\n"
        f"  export REID_AL_ENCODER_CHECKPOINT={report['checkpoint']}\n"
        "then re-embed the project: its stored features describe the old backbone. Move "
        f"{settings.features_dir(args.project)} aside and run\n"
        f"  reid-al ingest <the same folder or manifest> --project {args.project} --no-push\n"
        "(the pool and Label Studio tasks are kept); the next cycle trains on the new features."
    )
    return 0


# --- export ----------------------------------------------------------------------------------------------
EXPORT_DESCRIPTION = """\
Write one row per pool image: image_id, path, url, identity, verified (inside a group of images answered
"same"), confidence and the number of answers behind it (columns that wildlife-datasets and
`reid-al ingest` read). The identities are those of the latest model version (what the last cycle
computed); when answers changed since, a note on stderr says so and the next cycle includes them."""


def _redis_if_reachable(settings: Settings) -> Any | None:
    import redis as redis_lib

    try:
        client = _redis(settings)
        client.ping()
        return client
    except (SettingsError, redis_lib.RedisError, OSError):
        return None


def cmd_export(args: argparse.Namespace) -> int:
    from ml_backend.export import build_export, export_format

    settings = _settings()
    fmt = export_format(args.format, args.out)
    result = build_export(settings, args.project, redis=_redis_if_reachable(settings), version=args.version)
    text = result.render(fmt)
    if args.out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--out: cannot write {args.out}: {exc.strerror or exc}") from None
    summary = result.summary
    print(
        f"reid-al export: {len(result.rows)} images, {summary['identities']} identities "
        f"({summary['identities_verified']} verified) of version {result.version}"
        + ("" if args.out == "-" else f" -> {args.out}"),
        file=sys.stderr,
    )
    if result.note:
        print(f"reid-al export: note: {result.note}", file=sys.stderr)
    return 0


# --- report ----------------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from ml_backend.report import collect_progress
    from trainer.report import format_summary, render_report, summarize

    settings = _settings()
    if Path(args.out).suffix.lower() != ".png":
        raise ValueError(f"--out: the report is a PNG file (name ending in .png), got {args.out!r}")
    if not Path(args.out).resolve().parent.is_dir():
        raise ValueError(f"--out: directory {str(Path(args.out).resolve().parent)!r} does not exist")
    progress = collect_progress(settings, _redis(settings), args.project)
    path = render_report(progress, args.out)
    summary = summarize(progress)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    print(f"reid-al report: wrote {path}", file=sys.stderr)
    return 0


# --- status ----------------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    import redis as redis_lib

    from ml_backend.queue import CycleQueue
    from ml_backend.status import format_status
    from ml_backend.supervise import read_status, status_lines

    settings = _settings()
    children = read_status(settings.model_dir)
    try:
        queue = CycleQueue.for_settings(_redis(settings), settings)
        if args.project:
            status = {
                "queue": queue.queue_name,
                "queue_depth": queue.depth(),
                "projects": [queue.status(args.project)],
            }
        else:
            status = queue.status_all()
    except redis_lib.exceptions.ConnectionError as exc:
        if children is None:
            raise
        # Redis is restarting under `reid-al serve`: say so, with what the supervisor knows.
        print(
            json.dumps({"redis": f"down: {exc}", "serve": children}, indent=2)
            if args.json
            else "\n".join([f"redis: down ({exc})", *status_lines(children)])
        )
        return 1
    if children is not None:
        status["serve"] = children
    print(json.dumps(status, indent=2, default=str) if args.json else format_status(status))
    return 0


COMMANDS = {
    "serve": cmd_serve,
    "worker": cmd_worker,
    "connect": cmd_connect,
    "ingest": cmd_ingest,
    "sync": cmd_sync,
    "status": cmd_status,
    "finetune": cmd_finetune,
    "export": cmd_export,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything written under MODEL_DIR (features, model versions, the Redis data and its password,
    # downloads) by us or our children is for this user only.
    os.umask(0o077)
    if argv and argv[0] == "simulate":
        from trainer.simulate import main as simulate_main

        return int(simulate_main(argv[1:]) or 0)
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SettingsError as exc:
        print(f"reid-al {args.command}: setting {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"reid-al {args.command}: {exc}", file=sys.stderr)
        return 2
    except (ConnectError, LabelStudioError) as exc:
        print(f"reid-al {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
