"""Prometheus text exposition: format details and the values collected from Redis."""

from __future__ import annotations

import re

import pytest
import redis

from ml_backend.prom import MetricFamily, escape_label, format_value, render, render_metrics
from ml_backend.queue import CycleQueue
from ml_backend.state import ProjectState

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')


def test_escaping_and_values() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert format_value(3.0) == "3" and format_value(0.25) == "0.25"
    assert format_value(float("nan")) == "NaN" and format_value(float("inf")) == "+Inf"


def test_family_render() -> None:
    fam = MetricFamily("x_total", "counter", "help\nline").add(2, project='p"1')
    assert render([fam]) == '# HELP x_total help\\nline\n# TYPE x_total counter\nx_total{project="p\\"1"} 2\n'
    with pytest.raises(ValueError, match="kind"):
        MetricFamily("x", "histogramm", "h")


def test_metrics_from_state(redis_client: redis.Redis) -> None:
    s = ProjectState(redis_client, "5")
    s.annotations.record(1, task_id=1, image_a="a", image_b="b", answer="same")
    s.annotations.record(2, task_id=1, image_a="a", image_b="b", answer="different")
    s.annotations.record(3, task_id=2, image_a="c", image_b="d", answer="skip")
    s.incr("events:ANNOTATION_CREATED", 3)
    s.incr("pairs_asked", 3)
    s.incr("pairs_saved", 2)
    s.cycles.set_status(status="running", contradictions=4)
    s.cycles.record({"status": "finished", "duration_s": 1.5})
    q = CycleQueue(redis_client, queue_name="m")
    q.request_cycle("6")
    text = render_metrics(redis_client, q)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(SAMPLE.match(line) for line in lines), [line for line in lines if not SAMPLE.match(line)]
    for expected in [
        'reid_al_webhook_events_total{event="ANNOTATION_CREATED",project="5"} 3',
        'reid_al_constraints{answer="same",project="5"} 1',
        'reid_al_constraints{answer="different",project="5"} 1',
        'reid_al_constraints{answer="skip",project="5"} 1',
        'reid_al_pairs_asked_total{project="5"} 3',
        'reid_al_pairs_saved_total{project="5"} 2',
        'reid_al_conflicts{project="5"} 1',
        'reid_al_contradictions{project="5"} 4',
        'reid_al_cycle_duration_seconds_sum{project="5"} 1.5',
        'reid_al_cycle_duration_seconds_count{project="5"} 1',
        'reid_al_last_cycle_duration_seconds{project="5"} 1.5',
        'reid_al_cycle_running{project="5"} 1',
        'reid_al_cycles_total{outcome="enqueued",project="6"} 1',
        'reid_al_queue_depth{queue="m"} 1',
    ]:
        assert expected in lines, expected
    # every family has exactly one HELP and one TYPE line
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names))


def test_empty_redis_still_renders(redis_client: redis.Redis) -> None:
    text = render_metrics(redis_client)
    assert "# TYPE reid_al_queue_depth gauge" in text and text.endswith("\n")


def test_ignored_events_of_an_unknown_project_are_counted_without_registering_it(
        redis_client: redis.Redis) -> None:
    from ml_backend.webhook import WebhookHandler

    handler = WebhookHandler(redis_client, None, retrain_every=5)
    handler.handle({"action": "PROJECT_UPDATED", "project": {"id": 44}})
    text = render_metrics(redis_client)
    assert 'reid_al_webhook_events_total{event="PROJECT_UPDATED",project=""} 1' in text
    assert 'project="44"' not in text
