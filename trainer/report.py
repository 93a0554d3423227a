"""A project's progress as one picture and a few numbers: what a project lead looks at.

Why these four panels: answers over time say whether the team is working; identities per version
(images verified by answers vs inferred) say how far the labelling is; pairs answered directly vs
implied by transitivity say what the active learning saved; the stopping estimate says when to stop.
Open contradictions are in the summary because each one needs a human. Inputs are plain data
(``Progress``), so the backend collects them and this module only counts and draws (matplotlib, Agg).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from strategies.constraints import ConstraintGraph
from strategies.stopping import StoppingEstimate

__all__ = ["Progress", "VersionPoint", "format_summary", "implied_pairs", "render_report", "summarize"]

ANSWER_KINDS = ("same", "different", "unsure", "skip")


@dataclass(frozen=True)
class VersionPoint:
    """One model version: when it was made and its identity counts."""

    version: str
    created_at: float | None  # epoch seconds
    identities: int
    identities_verified: int
    images_verified: int
    images_inferred: int


@dataclass
class Progress:
    """What the report needs. ``answers``: (epoch seconds or None, kind) per answer, oldest first."""

    project: str
    answers: list[tuple[float | None, str]]
    versions: list[VersionPoint]
    pairs_implied: int
    pairs_saved: int
    contradictions: int
    conflicts: int
    stopping: StoppingEstimate | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def implied_pairs(graph: ConstraintGraph, n: int) -> int:
    """Pairs whose answer follows from the answers without being asked: inside a must-link component
    ("same") or across two components a cannot-link separates ("different"), less the pairs answered."""
    comp = graph.component_labels(n)
    sizes = np.bincount(comp, minlength=1).astype(np.int64)
    same = int((sizes * (sizes - 1) // 2).sum())
    apart = {
        tuple(sorted((int(comp[c.i]), int(comp[c.j]))))
        for c in graph.cannot_links()
        if comp[c.i] != comp[c.j]
    }
    different = sum(int(sizes[a]) * int(sizes[b]) for a, b in apart)
    answered = {c.pair for c in graph}
    return same + different - len(answered)


def summarize(progress: Progress) -> dict[str, Any]:
    """The numbers the report prints (and a test checks)."""
    kinds = [kind for _, kind in progress.answers]
    out: dict[str, Any] = {
        "project": progress.project,
        "answers": len(kinds),
        **{f"answers_{kind}": kinds.count(kind) for kind in ANSWER_KINDS},
        "pairs_answered": kinds.count("same") + kinds.count("different"),
        "pairs_implied": progress.pairs_implied,
        "pairs_saved": progress.pairs_saved,
        "contradictions_open": progress.contradictions,
        "annotator_conflicts": progress.conflicts,
        "versions": len(progress.versions),
    }
    if progress.versions:
        last = progress.versions[-1]
        out.update(
            version=last.version,
            identities=last.identities,
            identities_verified=last.identities_verified,
            images_verified=last.images_verified,
            images_inferred=last.images_inferred,
        )
    if progress.stopping is not None:
        out["stopping"] = progress.stopping.to_dict()
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the lines `reid-al report` prints."""
    lines = [
        f"project {summary['project']}: {summary['answers']} answers ({summary['answers_same']} same, "
        f"{summary['answers_different']} different, {summary['answers_unsure']} unsure, "
        f"{summary['answers_skip']} skipped)"
    ]
    if summary.get("version"):
        lines.append(
            f"  version {summary['version']} ({summary['versions']} in all): "
            f"{summary['identities']} identities, {summary['identities_verified']} verified; images verified "
            f"{summary['images_verified']}, inferred {summary['images_inferred']}"
        )
    else:
        lines.append("  no model version yet")
    lines.append(
        f"  pairs: {summary['pairs_answered']} answered, {summary['pairs_implied']} implied by "
        f"transitivity, {summary['pairs_saved']} open tasks retired as implied"
    )
    lines.append(
        f"  contradictions open: {summary['contradictions_open']} ('different' inside a group "
        f"answered 'same', under review at the last cycle); pairs annotators disagree on: "
        f"{summary['annotator_conflicts']}"
    )
    stop = summary.get("stopping")
    if stop:
        state = "REACHED" if stop["reached"] else "not reached"
        lines.append(
            f"  stopping rule {state}: P(any of the next {stop['patience']} answers changes the "
            f"identities) = {stop['p_any_change']:.3f} (stop below {stop['threshold']:g}); "
            f"{stop['label_changing']} of {stop['answers']} answers changed them"
        )
    return "\n".join(lines)


def render_report(progress: Progress, out: str | Path) -> Path:
    """Write the four-panel PNG to ``out``; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    out = Path(out)
    summary = summarize(progress)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    title = f"reid-al project {progress.project}"
    if summary.get("version"):
        title += f" — {summary['version']}"
    fig.suptitle(title, fontsize=14, fontweight="bold")

    # answers over time, cumulative by kind
    ax = axes[0, 0]
    timed = [(t, k) for t, k in progress.answers if t is not None]
    if timed:
        times = [datetime.fromtimestamp(t, tz=timezone.utc) for t, _ in timed]
        for kind, colour in zip(ANSWER_KINDS, ("tab:green", "tab:red", "tab:gray", "tab:olive"), strict=True):
            counts = np.cumsum([k == kind for _, k in timed])
            if counts[-1]:
                ax.step(times, counts, where="post", color=colour, label=f"{kind} ({counts[-1]})")
        ax.step(
            times,
            np.arange(1, len(timed) + 1),
            where="post",
            color="black",
            lw=2,
            label=f"all ({len(timed)})",
        )
        locator = mdates.AutoDateLocator(minticks=3, maxticks=6)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.legend(loc="upper left", fontsize=9)
    else:
        _empty(ax, "no answers yet")
    ax.set_title("Answers over time (cumulative, UTC)")
    ax.set_ylabel("answers")

    # identities per version: images verified / inferred, and identity counts
    ax = axes[0, 1]
    if progress.versions:
        x = np.arange(len(progress.versions))
        verified = [v.images_verified for v in progress.versions]
        inferred = [v.images_inferred for v in progress.versions]
        ax.bar(x, verified, color="tab:green", label="images verified (answered)")
        ax.bar(x, inferred, bottom=verified, color="tab:blue", alpha=0.5, label="images inferred")
        ax.set_xticks(
            x,
            [v.version.split("-")[0] for v in progress.versions],
            rotation=45 if len(x) > 8 else 0,
            fontsize=8,
        )
        ax.set_ylabel("images")
        twin = ax.twinx()
        twin.plot(x, [v.identities for v in progress.versions], "k-o", label="identities")
        twin.plot(x, [v.identities_verified for v in progress.versions], "g--o", label="identities verified")
        twin.set_ylabel("identities")
        top = max(v.images_verified + v.images_inferred for v in progress.versions)
        ax.set_ylim(0, 1.3 * max(top, 1))  # headroom for the legend
        twin.set_ylim(0, 1.3 * max(max(v.identities for v in progress.versions), 1))
        handles = ax.get_legend_handles_labels()
        twin_handles = twin.get_legend_handles_labels()
        ax.legend(
            handles[0] + twin_handles[0],
            handles[1] + twin_handles[1],
            loc="upper center",
            ncol=2,
            fontsize=8,
            framealpha=0.9,
        )
    else:
        _empty(ax, "no model version yet")
    ax.set_title("Identities per model version")

    # pairs: answered vs implied
    ax = axes[1, 0]
    labels = ["answered", "implied by\ntransitivity", "open tasks\nretired"]
    values = [summary["pairs_answered"], summary["pairs_implied"], summary["pairs_saved"]]
    bars = ax.bar(labels, values, color=["tab:orange", "tab:purple", "tab:cyan"])
    ax.bar_label(bars, labels=[f"{v:,}" for v in values])
    ax.set_title(
        f"Pairs (contradictions open: {summary['contradictions_open']}, "
        f"annotator conflicts: {summary['annotator_conflicts']})"
    )
    ax.set_ylabel("pairs")
    ax.margins(y=0.15)

    # stopping estimate along the answers
    ax = axes[1, 1]
    stop = progress.stopping
    if stop is not None and stop.answers:
        k = np.arange(1, stop.answers + 1)
        ax.plot(k, stop.p_trace, color="tab:red", label=f"P(any of next {stop.patience} changes)")
        ax.plot(k, stop.rate_trace, color="tab:blue", alpha=0.7, label=f"rate (span {stop.window})")
        ax.axhline(stop.threshold, color="k", ls="--", lw=1, label=f"threshold {stop.threshold:g}")
        ax.set_ylim(-0.02, 1.3)  # headroom for the legend
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_xlabel("answers (same / different), in arrival order")
        ax.legend(loc="upper center", ncol=3, fontsize=8, framealpha=0.9)
        state = "REACHED: stop asking" if stop.reached else "not reached"
        ax.set_title(f"Stopping rule: {state} (P = {stop.p_any_change:.3f})")
    else:
        _empty(ax, "no same/different answers yet")
        ax.set_title("Stopping rule")

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray", fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])
