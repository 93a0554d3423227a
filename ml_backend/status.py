"""What `reid-al status` prints: per project the cycle, the answers pending, the identities, whether the
pool's text is used, the model served, the stopping rule, reviews, and every shortfall or refused event
(nothing is dropped quietly)."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["format_status", "project_problem_lines", "stopping_line"]


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


def project_problem_lines(p: dict[str, Any]) -> list[str]:
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
    reconciled = p.get("reconcile")
    if reconciled:
        ago = max(0.0, time.time() - float(reconciled["last_at"]))
        line = (
            f"  last reconciliation with Label Studio: {ago:.0f} s ago ({reconciled['kind']}, "
            f"{reconciled['tasks_read']} task(s) read), "
            f"{reconciled['recovered']} answer change(s) recovered; "
            f"{reconciled['recovered_total']} recovered in {reconciled['passes']} pass(es)"
        )
        if reconciled.get("error"):
            line = (
                f"  last reconciliation with Label Studio FAILED {ago:.0f} s ago: {reconciled['error']} "
                f"({reconciled['failures']} failure(s); {reconciled['recovered_total']} answer change(s) "
                "recovered so far)"
            )
        if reconciled.get("invalid") and not reconciled.get("error"):
            line += f"; {reconciled['invalid']} annotation(s) unreadable (see the worker's log)"
        lines.append(line)
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


def _text_line(text: dict[str, Any] | None) -> str | None:
    """The captions/attributes of the pool: used by the cycle (and how wide), or why not; nothing for a
    pool without text."""
    if not text or not text.get("items_with_text"):
        return None
    head = f"  text: {text['items_with_text']} image(s) with captions/attributes"
    if text.get("used"):
        return f"{head}, {text['text_dim']}-d text features used by the cycle"
    return f"{head}, not used (text_dim 0): {text.get('reason') or 'unknown reason'}"


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
            lines.append(
                f"  {len(p['conflicts'])} pair(s) with contradicting answers: "
                + ", ".join(c["pair_id"] for c in p["conflicts"][:5])
            )
        reviews = p.get("reviews") or {}
        if reviews.get("open") or reviews.get("pushed"):
            kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in reviews["by_kind"].items() if n)
            lines.append(
                f"  under review: {len(reviews['open'])} pair(s) ({kinds or 'none'}), "
                f"{reviews['contradictions_open']} contradiction(s) open; {reviews['pushed']} "
                f"review task(s) pushed, {reviews['resolved']} resolved"
            )
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
                if ids.get("link_past_cannot_link") == 0:
                    conflicts = (last.get("review") or {}).get("answers_in_conflict", 0)
                    lines.append(
                        f"  {conflicts} answer conflict(s): an image whose nearest image was answered "
                        "'different' makes no link of its own (REID_AL_LINK_PAST_CANNOT_LINK)"
                    )
            text_line = _text_line(last.get("text"))
            if text_line:
                lines.append(text_line)
            if last.get("served"):
                gate = last.get("gate") or {}
                lines.append(
                    f"  model served: {last['served']}"
                    + (f" ({gate['reason']})" if gate.get("reason") else "")
                )
        stop = p.get("stopping")
        if stop:
            lines.append(stopping_line(stop))
        lines += project_problem_lines(p)
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
