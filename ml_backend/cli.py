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


WORKER_CONNECTIONS = 1000  # open connections per gunicorn worker, slow ones included
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


# --- serve -----------------------------------------------------------------------------------------------
def _web_command(settings: Settings, dev_server: bool) -> list[str]:
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


def cmd_serve(args: argparse.Namespace) -> int:
    from ml_backend.embedded import EmbeddedRedis, python_module_command, start_process, stop_process
    from ml_backend.embedded import stop_rq_worker as stop_worker
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
        web_command = _web_command(settings, args.dev_server)
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
FINETUNE_DESCRIPTION = """\
Fine-tune the encoder's visual tower end to end on a project's images: cluster-contrastive loss over
the latest model version's pseudo-labels (or DBSCAN over Jaccard distances of the stored features when
no version exists) plus the margin loss on the human same/different answers (from Redis when it is
reachable). Writes a checkpoint for REID_AL_ENCODER_CHECKPOINT. The backbone changes, so the project's
features must be re-embedded afterwards. Meant for a GPU; on a CPU it is slow (the CPU default is the
adapter that every cycle trains)."""


def _finetune_constraints(
    settings: Settings, project: str, row_of: Any, redis: Any | None
) -> tuple[Any, Any, str]:
    """(must-link rows, cannot-link rows, where they came from); no Redis -> no constraints."""
    import numpy as np
    import redis as redis_lib

    empty = np.zeros((0, 2), dtype=np.int64)
    if redis is None:
        try:
            redis = _redis(settings)
            redis.ping()
        except (SettingsError, redis_lib.RedisError, OSError) as exc:
            return empty, empty, f"none (Redis not reachable: {exc})"
    from ml_backend.state import ProjectState

    graph, unmapped = ProjectState(redis, project).constraint_graph(row_of, include_pending=False)
    effective = graph.effective()
    note = f"Redis ({len(graph)} constraint(s), {unmapped} unmapped, {len(effective.dropped)} dropped)"
    return effective.must_link, effective.cannot_link, note


def _finetune_labels(settings: Settings, project: str, features: Any) -> tuple[Any, str]:
    """The latest version's pseudo_labels.npy (new rows since then: outliers), else DBSCAN on Jaccard."""
    import io

    import numpy as np

    from trainer.registry import ModelRegistry

    n = features.shape[0]
    registry = ModelRegistry(settings.model_dir, project)
    version = registry.latest()
    if version is not None:
        blob = registry.load(version).extra.get("pseudo_labels.npy")
        if blob is not None:
            labels = np.load(io.BytesIO(blob)).astype(np.int64)
            if labels.ndim == 1 and labels.shape[0] <= n:
                padded = np.full(n, -1, dtype=np.int64)
                padded[: labels.shape[0]] = labels
                return padded, f"model version {version}"
            log.warning(
                "version %s has %s pseudo-labels for %d rows; clustering afresh", version, labels.shape, n
            )
    from strategies.view import ClusteringView

    return ClusteringView(features).dbscan_labels, "DBSCAN on Jaccard (no model version yet)"


def finetune_project(
    settings: Settings,
    project: str,
    out: str | os.PathLike[str],
    *,
    epochs: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    redis: Any | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Load a project's pool, pseudo-labels and constraints, fine-tune the encoder, write ``out``."""
    import numpy as np

    from ml_backend.jobs import load_project_data
    from trainer.encoders import encoder_from_spec
    from trainer.finetune import FinetuneConfig, finetune_encoder
    from trainer.store import EmbeddingStore

    data = load_project_data(settings, project, embed_missing=False)
    if data.pool is None:
        raise FileNotFoundError(
            f"project {project} has no pool under {settings.model_dir}; run "
            f"`reid-al ingest <folder> --project {project}` first"
        )
    if len(data.ids) < 2:
        raise ValueError(
            f"project {project}: {len(data.ids)} embedded image(s); ingest (and embed) a pool first"
        )
    labels, labels_source = _finetune_labels(settings, project, data.features)
    ml, cl, constraints_source = _finetune_constraints(settings, project, data.row_of, redis)
    # Only rows whose image file the pool knows can be trained on (user-imported tasks may lack one).
    keep = np.asarray([i in data.pool for i in data.ids], dtype=bool)
    new_row = np.full(len(data.ids), -1, dtype=np.int64)
    new_row[keep] = np.arange(int(keep.sum()))

    def remap(pairs: Any) -> Any:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        pairs = pairs[keep[pairs[:, 0]] & keep[pairs[:, 1]]]
        return new_row[pairs]

    items = [(i, data.pool.item(i).path) for i, k in zip(data.ids, keep, strict=True) if k]
    ml, cl = remap(ml), remap(cl)
    encoder = encoder_from_spec(
        settings.encoder,
        checkpoint=settings.encoder_checkpoint or None,
        device=None if device == "auto" else device,
        precision="fp32",
    )
    stored_by = EmbeddingStore(settings.features_dir(project)).encoder
    if stored_by is not None and stored_by != encoder.name:
        # the pseudo-labels describe another network's features: training this one on them is wrong
        raise ValueError(
            f"REID_AL_ENCODER: project {project}'s features were made by {stored_by!r}, but the "
            f"configured encoder is {encoder.name!r}; set REID_AL_ENCODER(_CHECKPOINT) to match"
        )
    overrides: dict[str, Any] = {"device": device}
    if epochs is not None:
        overrides["epochs"] = epochs
    if num_workers is not None:
        overrides["num_workers"] = num_workers
    result = finetune_encoder(
        encoder, items, labels[keep], ml, cl, FinetuneConfig(**overrides), checkpoint=out, progress=progress
    )
    train_labels = labels[keep]
    return {
        "project": project,
        "checkpoint": str(Path(out).resolve()),
        "encoder": settings.encoder,
        "n_images": len(items),
        "n_skipped_without_file": int((~keep).sum()),
        "n_clusters": len(np.unique(train_labels[train_labels >= 0])),
        "labels_from": labels_source,
        "n_must_link": int(ml.shape[0]),
        "n_cannot_link": int(cl.shape[0]),
        "constraints_from": constraints_source,
        "epochs": len(result.losses_per_epoch),
        "losses_per_epoch": [round(x, 6) for x in result.losses_per_epoch],
        "device": result.device,
        "precision": result.precision,
        "seconds": round(result.seconds, 3),
    }


def cmd_finetune(args: argparse.Namespace) -> int:
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
def stopping_line(stop: dict[str, Any]) -> str:
    """The stopping rule as `reid-al status` and `reid-al report` print it."""
    line = (
        f"  stopping rule: P(any of the next {stop['patience']} answers changes the identities) = "
        f"{stop['p_any_change']:.3f}, stop below {stop['threshold']:g}; {stop['label_changing']} of "
        f"{stop['answers']} answers changed them"
    )
    if stop["reached"]:
        paused = not stop.get("pushing", True)
        line += (
            "; REACHED: new pairs are no longer pushed (REID_AL_KEEP_PUSHING=1 pushes them)"
            if paused
            else "; reached, new pairs pushed anyway (REID_AL_KEEP_PUSHING=1)"
        )
    return line


def _project_problem_lines(p: dict[str, Any]) -> list[str]:
    """What `reid-al status` says about pushes that fell short, refused events and unreadable images."""
    lines = []
    push = p.get("last_push")
    if push:
        budget = push.get("budget")
        head = f"  pushed {push['pushed']}" + (f" of {budget} pairs (REID_AL_BUDGET)" if budget else " pairs")
        reasons = push.get("reasons") or []
        lines.append(head + (": " + "; ".join(reasons) if reasons and push.get("shortfall") else ""))
    rejected = p.get("webhook_rejected") or {}
    if rejected:
        parts = [
            f"{n} unauthorised (401: the webhook lacks the Authorization header; run `reid-al connect`)"
            if code == "401"
            else f"{n} refused ({code})"
            for code, n in sorted(rejected.items())
        ]
        lines.append("  webhook events not recorded: " + ", ".join(parts))
    unreadable = p.get("unreadable_images") or {}
    if unreadable.get("count"):
        shown = ", ".join(f"{u['id']} ({u['reason']})" for u in unreadable["examples"])
        more = unreadable["count"] - len(unreadable["examples"])
        lines.append(
            f"  {unreadable['count']} unreadable image(s) left out of the pool: {shown}"
            + (f" and {more} more" if more > 0 else "")
            + f" (listed in {unreadable['file']}; ingest again once fixed)"
        )
    return lines


def format_status(status: dict[str, Any]) -> str:
    """Human-readable lines for `reid-al status`."""
    from ml_backend.supervise import status_lines

    lines = [
        *status_lines(status.get("serve")),
        f"queue {status['queue']}: {status['queue_depth']} job(s) waiting",
    ]
    if not status["projects"]:
        lines.append("no project has state yet")
    for p in status["projects"]:
        cycle = p.get("cycle") or {}
        last = p.get("last_cycle") or {}
        lines.append(
            f"project {p['project']}: version {p['current_version'] or '-'}; "
            f"cycle {cycle.get('status', 'never run')}"
            + (f" (job {p['active_job']}, {p['active_job_status']})" if p.get("active_job") else "")
            + ("; rerun requested" if p.get("rerun_requested") else "")
        )
        every = p.get("retrain_every")
        lines.append(
            f"  answers pending until the next cycle: {p['pending_constraints']}"
            + (f" (a cycle starts at {every}, REID_AL_RETRAIN_EVERY, or on Start training)" if every else "")
        )
        if p.get("conflicts"):
            lines.append(f"  {len(p['conflicts'])} pair(s) with contradicting answers: "
                         + ", ".join(c["pair_id"] for c in p["conflicts"][:5]))
        reviews = p.get("reviews") or {}
        if reviews.get("open") or reviews.get("pushed"):
            kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in reviews["by_kind"].items() if n)
            lines.append(f"  under review: {len(reviews['open'])} pair(s) ({kinds or 'none'}), "
                         f"{reviews['contradictions_open']} contradiction(s) open; {reviews['pushed']} "
                         f"review task(s) pushed, {reviews['resolved']} resolved")
        if last:
            lines.append(
                f"  last cycle: {last.get('status')} in {last.get('duration_s', 0):.1f} s"
                + (f" -> {last['version']}" if last.get("version") else "")
                + (f" error: {last['error']}" if last.get("error") else "")
            )
            if last.get("identities"):
                ids = last["identities"]
                lines.append(
                    f"  identities: {ids['identities']} ({ids['identities_verified']} verified); "
                    f"images verified {ids['images_verified']}, inferred {ids['images_inferred']}"
                )
            if last.get("served"):
                gate = last.get("gate") or {}
                lines.append(
                    f"  model served: {last['served']}"
                    + (f" ({gate['reason']})" if gate.get("reason") else "")
                )
        stop = p.get("stopping")
        if stop:
            lines.append(stopping_line(stop))
        lines += _project_problem_lines(p)
    counters = status.get("unregistered") or {}
    rejected = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("rejected:")}
    if rejected:
        shown = (
            f"{route.rsplit(':', 1)[0]} -> {route.rsplit(':', 1)[1]} x{n}"
            for route, n in sorted(rejected.items())
        )
        lines.append("rejected requests: " + ", ".join(shown))
    other = {k: v for k, v in counters.items() if not k.startswith("rejected:")}
    if other:
        lines.append(
            "not about a registered project: "
            + ", ".join(f"{name} x{n}" for name, n in sorted(other.items()))
        )
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    import redis as redis_lib

    from ml_backend.queue import CycleQueue
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
