"""Webhook latency under a loopback load, and /predict latency for 100 tasks, against a real `reid-al serve`.

Why: Label Studio posts every annotation event to /webhook synchronously inside the annotator's own
request, with a 1 s timeout and no retry (LABEL_STUDIO.md). A slow webhook slows every annotator and
a timed-out one loses a constraint. So we drive the real process tree (`reid-al serve`: embedded
redis-server + gunicorn, as the README starts it) at a constant arrival rate, open loop (latency is
measured from each request's *scheduled* time, so a stall is not hidden by the client slowing down),
with Label Studio-shaped payloads (a 50-key project object, the full task), one new TCP connection per
event as Label Studio's sender makes, and then count the recorded annotations in Redis: every event
sent must be there. /predict is timed for 100 pair tasks of already-embedded images (the normal case)
and for 100 tasks of images the backend has never seen (the bounded on-the-fly embedding path).

    .venv/bin/python benchmarks/bench_webhook.py                      # 200 req/s for 30 s, 300 images
    .venv/bin/python benchmarks/bench_webhook.py --rate 50 --duration 5 --pool 60 --predict-calls 5
    .venv/bin/python benchmarks/bench_webhook.py --slow-clients 64    # the same load beside 64 clients
                                                                      # that send their headers slowly

Writes benchmarks/results/<name>.json, .md and .png (name: webhook). The RQ worker is not started
(`serve --no-worker`): cycle requests made by the webhook are recorded and coalesced, not run, so the
figures are the webhook's own cost, not that of a training job competing for the two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ml_backend.embedded import free_port, stop_process  # noqa: E402
from ml_backend.pairs import task_data  # noqa: E402
from ml_backend.pool import local_files_url  # noqa: E402
from ml_backend.state import ProjectState  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PROJECT = 7
LABEL_CONFIG = (ROOT / "ml_backend" / "label_config.xml").read_text()
TIMEOUT_S = 1.0  # Label Studio's webhook timeout: a slower answer is a lost event


def make_pool(root: Path, n: int, seed: int = 0) -> list[str]:
    """n tiny crops, 5 per identity (colour + noise); returns the image ids (paths under root)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ids = []
    for k in range(n):
        ident = k // 5
        colour = np.array([(ident * 67) % 256, (ident * 131 + 40) % 256, (ident * 29 + 90) % 256])
        pixels = np.clip(colour + rng.normal(0, 30, (48, 24, 3)), 0, 255).astype(np.uint8)
        rel = f"id{ident:04d}/{k:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / rel)
        ids.append(rel)
    return ids


def prepare(model_dir: Path, images: Path, document_root: Path) -> dict[str, float]:
    """Pool + frozen features (ingest) and one model version (a cycle), as after a first cycle."""
    from ml_backend.ingest import ingest
    from ml_backend.settings import Settings
    from strategies.constraints import ConstraintGraph
    from trainer.cycle import CycleConfig, run_cycle
    from trainer.registry import ModelRegistry
    from trainer.store import EmbeddingStore

    settings = Settings(model_dir=model_dir, encoder="mobilenetv2", document_root=str(document_root))
    t0 = time.perf_counter()
    report = ingest(images, PROJECT, settings, push=False, progress=False)
    t1 = time.perf_counter()
    features = np.asarray(EmbeddingStore(Settings(model_dir=model_dir).features_dir(str(PROJECT))).features())
    run_cycle(
        features,
        ConstraintGraph(),
        CycleConfig(strategy="uncertainty", budget=50),
        registry=ModelRegistry(model_dir, PROJECT),
    )
    t2 = time.perf_counter()
    return {"n_pool": report.n_pool, "ingest_s": round(t1 - t0, 2), "cycle_s": round(t2 - t1, 2)}


class Serve:
    """`reid-al serve --no-worker` (embedded redis-server + gunicorn) in its own process group."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env, self.port, self.log_path = env, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Serve:
        with open(self.log_path, "wb") as log_fh:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ml_backend.cli", "serve", "--no-worker"],
                cwd=ROOT,
                env=self.env,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"reid-al serve exited:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.3)
        raise RuntimeError(f"reid-al serve did not come up:\n{self.log_path.read_text()[-3000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=20, sig=signal.SIGTERM)


def project_object(project: int) -> dict[str, Any]:
    """The 50-key project object Label Studio puts in every webhook payload."""
    obj: dict[str, Any] = {
        "id": project,
        "title": "bench project",
        "description": "",
        "label_config": LABEL_CONFIG,
        "expert_instruction": "",
        "show_instruction": False,
        "show_skip_button": True,
        "enable_empty_annotation": True,
        "show_annotation_history": False,
        "organization": 1,
        "color": "#FFFFFF",
        "maximum_annotations": 1,
        "is_published": False,
        "model_version": "v0001",
        "is_draft": False,
        "created_by": {"id": 1, "email": "admin@example.com"},
        "created_at": "2026-11-21T06:00:00Z",
        "min_annotations_to_start_training": 0,
        "start_training_on_annotation_update": False,
        "show_collab_predictions": True,
        "num_tasks_with_annotations": 10,
        "task_number": 1000,
        "useful_annotation_number": 10,
        "ground_truth_number": 0,
        "skipped_annotations_number": 0,
        "total_annotations_number": 10,
        "total_predictions_number": 1000,
        "sampling": "Uncertainty sampling",
        "show_ground_truth_first": False,
        "show_overlap_first": False,
        "overlap_cohort_percentage": 100,
        "task_data_login": None,
        "task_data_password": None,
        "control_weights": {
            "answer": {
                "type": "Choices",
                "labels": {"same": 1.0, "different": 1.0, "unsure": 1.0},
                "overall": 1.0,
            }
        },
        "parsed_label_config": {
            "answer": {
                "type": "Choices",
                "to_name": ["image_a"],
                "inputs": [{"type": "Image", "value": "image_a"}],
                "labels": ["same", "different", "unsure"],
            }
        },
        "evaluate_predictions_automatically": False,
        "config_has_control_tags": True,
        "skip_queue": "REQUEUE_FOR_OTHERS",
        "reveal_preannotations_interactively": False,
        "pinned_at": None,
        "finished_task_number": 10,
        "queue_total": 1000,
        "queue_done": 10,
        "config_suitable_for_bulk_annotation": False,
        "workspace": None,
        "annotator_evaluation_enabled": False,
        "state": "CREATED",
        "label_config_hash": 3078811862236498884,
        "token": "NJ98qCcnuEncbjExSx5Ps5epLg05OxjOvH6Eb9AA",
        "result_count": 10,
    }
    return obj


def annotation_event(k: int, a: str, b: str, answer: str, project: dict[str, Any]) -> dict[str, Any]:
    cancelled = answer == "skip"
    result = (
        []
        if cancelled
        else [
            {
                "id": f"r{k}",
                "from_name": "answer",
                "to_name": "image_a",
                "type": "choices",
                "origin": "manual",
                "value": {"choices": [answer]},
            }
        ]
    )
    stamp = f"2026-11-21T07:{(k // 60) % 60:02d}:{k % 60:02d}.{k % 1000:03d}Z"
    task_id = 100_000 + k
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {
            "id": 1_000_000 + k,
            "result": result,
            "was_cancelled": cancelled,
            "ground_truth": False,
            "created_at": stamp,
            "updated_at": stamp,
            "draft_created_at": None,
            "lead_time": 3.2,
            "import_id": None,
            "last_action": None,
            "bulk_created": False,
            "task": task_id,
            "project": project["id"],
            "updated_by": 1,
            "parent_prediction": None,
            "parent_annotation": None,
            "last_created_by": None,
            "completed_by": 1,
        },
        "task": {
            "id": task_id,
            "data": task_data(a, b, f"/data/local-files/?d=pool/{a}", f"/data/local-files/?d=pool/{b}"),
            "meta": {},
            "created_at": stamp,
            "updated_at": stamp,
            "is_labeled": True,
            "overlap": 1,
            "inner_id": k,
            "total_annotations": 1,
            "cancelled_annotations": int(cancelled),
            "total_predictions": 1,
            "comment_count": 0,
            "unresolved_comment_count": 0,
            "last_comment_updated_at": None,
            "project": project["id"],
            "updated_by": [{"user_id": 1}],
            "file_upload": None,
            "comment_authors": [],
        },
        "project": project,
    }


@dataclass
class Sample:
    index: int
    scheduled: float
    sent: float = 0.0
    done: float = 0.0
    status: int = 0
    error: str = ""


def raw_post(host: str, port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP/1.1 POST on a fresh connection, like Label Studio's sender, for a fraction of the client
    CPU `requests` needs (the client shares the two cores with the server it measures)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the response headers")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body


def http_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-webhook\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def open_loop(host: str, port: int, requests_: list[bytes], rate: float, n_senders: int) -> list[Sample]:
    """Send request i at t0 + i/rate (a dispatcher thread), each on a fresh connection, by a sender pool."""
    samples = [Sample(i, 0.0) for i in range(len(requests_))]
    work: queue.Queue[int | None] = queue.Queue()

    def sender() -> None:
        while True:
            i = work.get()
            if i is None:
                return
            s = samples[i]
            s.sent = time.perf_counter()
            try:
                s.status, answer = raw_post(host, port, requests_[i])
                if s.status != 200:
                    s.error = answer[:200].decode(errors="replace")
            except OSError as exc:
                s.error = f"{type(exc).__name__}: {exc}"
            s.done = time.perf_counter()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(n_senders)]
    for t in threads:
        t.start()
    t0 = time.perf_counter() + 0.2
    for i in range(len(requests_)):
        samples[i].scheduled = t0 + i / rate
        delay = samples[i].scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        work.put(i)
    for _ in threads:
        work.put(None)
    for t in threads:
        t.join()
    return samples


class SlowClients:
    """``n`` connections that send a request's headers 2 bytes a second for the whole run (slowloris):
    they must not take the threads the webhooks need."""

    def __init__(self, host: str, port: int, n: int) -> None:
        self.host, self.port, self.n = host, port, n
        self.stop = threading.Event()
        self.opened = 0
        self.dropped = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(n)]

    def _client(self) -> None:
        head = (b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + b"X-Pad: y\r\n" * 5000)
        try:
            with socket.create_connection((self.host, self.port), timeout=10) as sock:
                with self.lock:
                    self.opened += 1
                for byte in head:
                    if self.stop.wait(0.5):
                        return
                    sock.sendall(bytes([byte]))
        except OSError:
            with self.lock:
                self.dropped += 1

    def __enter__(self) -> SlowClients:
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 10
        while self.opened + self.dropped < self.n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)


def tree_cpu_seconds(process: subprocess.Popen[bytes] | None) -> float:
    """User+system CPU of a process and its children (gunicorn, redis-server): the server's own cost,
    independent of how much of the machine other work takes."""
    import psutil

    if process is None:
        return 0.0
    root = psutil.Process(process.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def percentiles(values_s: np.ndarray) -> dict[str, float]:
    ms = np.asarray(values_s) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def bench_predict(url: str, tasks: list[dict[str, Any]], calls: int) -> dict[str, Any]:
    body = {
        "tasks": tasks,
        "project": f"{PROJECT}.1795242755",
        "label_config": LABEL_CONFIG,
        "params": {"context": None},
    }
    times = []
    results: Any = None
    for _ in range(calls):
        t = time.perf_counter()
        resp = requests.post(f"{url}/predict", json=body, timeout=120)
        times.append(time.perf_counter() - t)
        resp.raise_for_status()
        results = resp.json()["results"]
    assert len(results) == len(tasks)
    scored = sum(1 for r in results if r.get("result"))
    return {
        "calls": calls,
        "first_call_ms": round(times[0] * 1000, 1),
        **percentiles(np.asarray(times[1:] if calls > 1 else times)),
        "tasks_scored": scored,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="webhook events per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--pool", type=int, default=300, help="images in the pool")
    parser.add_argument(
        "--senders", type=int, default=128, help="client sender threads (concurrent annotators)"
    )
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of load sent first and not measured"
    )
    parser.add_argument("--predict-calls", type=int, default=30, help="/predict calls per case")
    parser.add_argument(
        "--workers", type=int, default=None, help="gunicorn workers (WORKERS; default: setting)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads per worker (THREADS; default: setting)"
    )
    parser.add_argument("--slow-clients", type=int, default=0,
                        help="connections sending their headers 2 bytes/s during the load (slowloris)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="webhook", help="file stem of the results (<name>.json/.md/.png)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.pool < 10 or args.senders < 1 or args.predict_calls < 1:
        parser.error("--rate, --duration, --senders, --predict-calls must be positive and --pool >= 10")

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp_name:
        tmp = Path(tmp_name)
        document_root = tmp / "files"
        images = document_root / "pool"
        ids = make_pool(images, args.pool)
        print(f"preparing: {args.pool} images, ingest + one cycle ...", flush=True)
        prep = prepare(tmp / "models", images, document_root)
        port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_URL", "BASIC_AUTH_USER", "BASIC_AUTH_PASS")
        }
        env.update(
            {
                "MODEL_DIR": str(tmp / "models"),
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "REID_AL_ENCODER": "mobilenetv2",
                "REID_AL_DOCUMENT_ROOT": str(document_root),
                "LABEL_STUDIO_API_KEY": "",
                "LOG_LEVEL": "WARNING",
            }
        )
        if args.workers is not None:
            env["WORKERS"] = str(args.workers)
        if args.threads is not None:
            env["THREADS"] = str(args.threads)
        rng = np.random.default_rng(1)
        n_events = round(args.rate * args.duration)
        n_warm = round(args.rate * args.warmup)
        n_total = n_warm + n_events
        project = project_object(PROJECT)
        answers = rng.choice(["same", "different", "unsure", "skip"], size=n_total, p=[0.35, 0.45, 0.1, 0.1])
        bodies, expected = [], {"same": 0, "different": 0, "unsure": 0, "skip": 0}
        for k in range(n_total):
            a, b = rng.choice(len(ids), size=2, replace=False)
            bodies.append(json.dumps(annotation_event(k, ids[a], ids[b], str(answers[k]), project)).encode())
            expected[str(answers[k])] += 1
        with Serve(env, port, tmp / "serve.log") as serve:
            redis_url = (tmp / "models" / "redis" / "redis.url").read_text().strip()
            import redis as redis_lib

            client = redis_lib.Redis.from_url(redis_url)
            state = ProjectState(client, str(PROJECT))
            print(
                f"webhook: {n_warm} warm-up + {n_events} measured events at {args.rate:g}/s ...", flush=True
            )
            raw = [http_request("127.0.0.1", port, "/webhook", body) for body in bodies]
            with SlowClients("127.0.0.1", port, args.slow_clients) as slow:
                cpu_before = tree_cpu_seconds(serve.process)
                all_samples = open_loop("127.0.0.1", port, raw, args.rate, args.senders)
                server_cpu_s = tree_cpu_seconds(serve.process) - cpu_before
                slow_clients = {"n": args.slow_clients, "opened": slow.opened,
                                "dropped_by_server": slow.dropped}
            samples = all_samples[n_warm:]  # the warm-up is sent and counted, but not in the latency figures
            stored = state.annotations.all()
            counts = state.annotations.counts()
            status = client.hgetall(f"reid-al:{PROJECT}:cycle")
            queued = {k.decode(): json.loads(v) for k, v in status.items()}.get("status")

            print(f"predict: {args.predict_calls} calls x 100 tasks ...", flush=True)
            pair_rng = np.random.default_rng(2)
            warm_tasks = []
            for k in range(100):
                a, b = pair_rng.choice(len(ids), size=2, replace=False)
                data = task_data(
                    ids[a],
                    ids[b],
                    local_files_url(images / ids[a], document_root),
                    local_files_url(images / ids[b], document_root),
                )
                warm_tasks.append({"id": 500_000 + k, "data": data})
            predict_known = bench_predict(serve.url, warm_tasks, args.predict_calls)
            cold_runs = []
            for run in range(3):
                new_ids = make_pool(document_root / f"new{run}", 100, seed=100 + run)
                tasks = []
                for k in range(100):
                    a = new_ids[k]
                    b = ids[int(pair_rng.integers(len(ids)))]
                    data = task_data(
                        f"new{run}/{a}",
                        b,
                        local_files_url(document_root / f"new{run}" / a, document_root),
                        local_files_url(images / b, document_root),
                    )
                    tasks.append({"id": 600_000 + 100 * run + k, "data": data})
                cold_runs.append(bench_predict(serve.url, tasks, 1))
            client.close()
    load_after = os.getloadavg()
    from ml_backend.settings import Settings

    workers = args.workers or Settings.workers
    threads = args.threads or Settings.threads

    latency = np.asarray([s.done - s.scheduled for s in samples])
    service = np.asarray([s.done - s.sent for s in samples])
    start_lag = np.asarray([s.sent - s.scheduled for s in samples])
    errors = [s for s in all_samples if s.status != 200]
    slow = int((service > TIMEOUT_S).sum())
    span = max(s.done for s in samples) - min(s.scheduled for s in samples)
    lost = n_total - len(stored)
    warm = np.asarray([s.done - s.scheduled for s in all_samples[:n_warm]]) if n_warm else np.zeros(1)
    result = {
        "benchmark": "webhook",
        "command": "python benchmarks/bench_webhook.py "
        + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "note": "2 cores shared with other jobs; client, gunicorn and redis-server on the same cores",
        },
        "server": f"reid-al serve --no-worker (gunicorn {workers} worker(s) x {threads} threads, "
        "embedded redis-server)",
        "prepare": prep,
        "webhook": {
            "rate_per_s": args.rate,
            "duration_s": args.duration,
            "events": n_events,
            "warmup_events": n_warm,
            "warmup_latency_from_schedule": percentiles(warm),
            "achieved_rate_per_s": round(n_events / span, 1),
            "latency_from_schedule": percentiles(latency),
            "service_time": percentiles(service),
            "client_start_lag": percentiles(start_lag),
            "server_cpu_ms_per_event": round(server_cpu_s / n_total * 1000, 3),
            "errors": len(errors),
            "error_examples": [s.error for s in errors[:5]],
            "over_label_studio_timeout_1s": slow,
            "recorded_annotations": len(stored),
            "lost": lost,
            "expected_by_answer": expected,
            "recorded_by_answer": counts,
            "cycle_status_after": queued,
            "slow_clients": slow_clients,
        },
        "predict_100_tasks_embedded": predict_known,
        "predict_100_tasks_new_images": {
            "runs": cold_runs,
            "note": "100 never-seen images per call; at most REID_AL_PREDICT_EMBED_MAX (16) are "
            "embedded inline, the rest scored neutrally and queued for embedding",
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / f"{args.name}.md", png=f"{args.name}.png")
    plot(samples, latency, service, args.out / f"{args.name}.png", args.rate)
    print(json.dumps({k: result[k] for k in ("webhook", "predict_100_tasks_embedded")}, indent=2))
    return 0 if lost == 0 and not errors else 1


def write_markdown(r: dict[str, Any], path: Path, *, png: str) -> None:
    w, p = r["webhook"], r["predict_100_tasks_embedded"]
    lat, svc = w["latency_from_schedule"], w["service_time"]
    cold = r["predict_100_tasks_new_images"]["runs"]
    lines = [
        "# Webhook and /predict latency",
        "",
        f"`{r['command']}` on {r['machine']['platform']}, {r['machine']['cpus']} CPUs shared with other work "
        f"(1-min load average {r['machine']['loadavg_before'][0]} before, "
        f"{r['machine']['loadavg_after'][0]} after). Server: {r['server']}; "
        "client on the same machine (loopback).",
        "",
        "## /webhook under load (open loop, Label Studio-shaped ANNOTATION_CREATED events)",
        "",
        "| events | target rate | achieved | p50 | p90 | p99 | max | errors | > 1 s | recorded | lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {w['events']} | {w['rate_per_s']:g}/s for {w['duration_s']:g} s | {w['achieved_rate_per_s']}/s "
        f"| {lat['p50_ms']} ms | {lat['p90_ms']} ms | {lat['p99_ms']} ms | {lat['max_ms']} ms "
        f"| {w['errors']} | {w['over_label_studio_timeout_1s']} | {w['recorded_annotations']} "
        f"| {w['lost']} |",
        "",
        f"Before the measured {w['duration_s']:g} s, {w['warmup_events']} warm-up events were sent at the "
        f"same rate (a cold server: p50 {w['warmup_latency_from_schedule']['p50_ms']} ms, p99 "
        f"{w['warmup_latency_from_schedule']['p99_ms']} ms); they are in the recorded/lost counts, not in "
        "the latency columns.",
        "",
        f"Latency is measured from each event's scheduled send time (so client-side queueing counts); the "
        f"server's share alone (send to answer) is p50 {svc['p50_ms']} ms, p99 {svc['p99_ms']} ms. "
        f"The server's process tree (gunicorn + redis-server) used {w['server_cpu_ms_per_event']} ms of CPU "
        "per event, so the rate one free core sustains is about 1000 / that figure; on a loaded machine "
        "latency is mostly waiting for a core. "
        f"Recorded by answer: {w['recorded_by_answer']} (sent: {w['expected_by_answer']}). Cycle requests "
        f"made by the webhook were coalesced into one queued job (status after: {w['cycle_status_after']}).",
        "",
        *([f"During the whole load, {w['slow_clients']['opened']} other connections sent their request "
           "headers 2 bytes a second (slowloris); the server dropped "
           f"{w['slow_clients']['dropped_by_server']} of them.", ""] if w["slow_clients"]["n"] else []),
        "## /predict, 100 pair tasks",
        "",
        "| case | calls | first call | p50 | p99 |",
        "|---|---|---|---|---|",
        f"| images already embedded | {p['calls']} | {p['first_call_ms']} ms | {p['p50_ms']} ms "
        f"| {p['p99_ms']} ms |",
    ]
    for k, run in enumerate(cold):
        lines.append(f"| 100 new images, run {k + 1} | 1 | {run['first_call_ms']} ms | - | - |")
    lines += [
        "",
        "The first call loads the serving model (features, adapter, calibrator); later calls reuse it. With "
        "never-seen images, at most REID_AL_PREDICT_EMBED_MAX images are embedded inline (the first such "
        "call also loads the encoder); the rest are scored neutrally and queued for the worker.",
        "",
        f"![latency]({png})",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(samples: list[Sample], latency: np.ndarray, service: np.ndarray, path: Path, rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    t0 = min(s.scheduled for s in samples)
    ax1.plot([s.scheduled - t0 for s in samples], latency * 1000, ".", ms=2, alpha=0.5, label="from schedule")
    ax1.set_yscale("log")
    ax1.set_xlabel("time into the run (s)")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title(f"/webhook at {rate:g} events/s")
    ax1.axhline(1000, color="red", lw=1, ls="--", label="Label Studio timeout")
    ax1.legend(loc="upper right")
    for values, label in ((latency, "from schedule"), (service, "server (send -> answer)")):
        xs = np.sort(values * 1000)
        ax2.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label)
    ax2.set_xscale("log")
    ax2.set_xlabel("latency (ms)")
    ax2.set_ylabel("fraction of events")
    ax2.set_title("CDF")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
