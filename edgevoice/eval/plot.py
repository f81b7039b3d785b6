"""A conversation's timeline as a PNG: who spoke when, and where the turn changed hands.

Two lanes on one time axis: the user (the script's voiced stretches, coloured by kind, thinking
pauses hatched) and the agent (when its audio was audible; its own backchannels marked). Turn
events are drawn over them: turn taken, first audio, barge-in pause, reply cancelled, tool calls.
matplotlib is the ``eval`` extra; it is imported only here, with the Agg backend (no display).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from edgevoice.errors import MissingDependencyError
from edgevoice.eval.score import pauses
from edgevoice.eval.synth import UserSpan
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import Event

USER_COLOURS = {"say": "tab:blue", "monologue": "tab:cyan", "barge_in": "tab:red", "backchannel": "tab:olive"}
# Event kind -> (lane, marker, colour, legend label); lane 1 is the user's, 0 the agent's.
MARKS = {
    ev.TURN_TAKEN: (0.5, "v", "tab:green", "turn taken"),
    ev.FIRST_AUDIO: (0.0, ">", "black", "first audio of a reply"),
    ev.BARGE_IN: (0.0, "x", "tab:red", "agent paused (barge-in)"),
    ev.CANCEL_DONE: (0.0, "s", "tab:purple", "reply cancelled"),
    ev.TOOL_CALL: (0.0, "D", "tab:brown", "tool call"),
}
LANE_HEIGHT = 0.3


def require_matplotlib() -> None:
    """Fail early, before any engine loads, when the plotting library is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError.for_module("matplotlib", "eval", "the timeline plots of `edgevoice eval`") from exc


def plot_timeline(path: str | Path, title: str, spans: Sequence[UserSpan], events: Sequence[Event],
                  agent_spans: Sequence[tuple[float, float]], seconds: float) -> Path:
    """Write the timeline PNG to ``path`` and return it."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    width = min(24.0, max(8.0, seconds * 0.45))
    fig, ax = plt.subplots(figsize=(width, 3.2))
    try:
        _user_lane(ax, spans)
        ax.broken_barh([(a, b - a) for a, b in agent_spans], (-LANE_HEIGHT / 2, LANE_HEIGHT), color="tab:orange")
        handles = [Patch(color=colour, label=kind.replace("_", " ")) for kind, colour in USER_COLOURS.items()
                   if any(s.kind == kind for s in spans)]
        if any(s.pauses for s in spans):
            handles.append(Patch(facecolor="white", edgecolor="grey", hatch="//", label="thinking pause"))
        cut = _cut_off_pauses(ax, spans, events)
        if cut:
            handles.append(Patch(facecolor="mistyrose", edgecolor="tab:red", hatch="//",
                                 label="pause cut off (agent took the turn)"))
        handles.append(Patch(color="tab:orange", label="agent audible"))
        handles += _event_marks(ax, events)
        ax.set_yticks([0, 1], ["agent", "user"])
        ax.set_ylim(-0.6, 1.95)
        ax.set_xlim(0, max(seconds, max((b for _, b in agent_spans), default=0.0)) + 0.2)
        ax.set_xlabel("session time, s (virtual clock)")
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _user_lane(ax, spans: Sequence[UserSpan]) -> None:
    for k, span in enumerate(spans):
        colour = USER_COLOURS.get(span.kind, "tab:blue")
        ax.broken_barh([(a, b - a) for a, b in span.segments], (1 - LANE_HEIGHT / 2, LANE_HEIGHT), color=colour)
        ax.broken_barh([(a, b - a) for a, b in span.pauses], (1 - LANE_HEIGHT / 2, LANE_HEIGHT),
                       facecolor="white", edgecolor="grey", hatch="//")
        label = span.text if len(span.text) <= 40 else span.text[:37] + "..."
        raised = 0.05 + 0.2 * (k % 2)  # neighbours' labels on two rows, so they do not overprint
        ax.text(span.start, 1 + LANE_HEIGHT / 2 + raised, label, fontsize=7, va="bottom", clip_on=True)


def _cut_off_pauses(ax, spans: Sequence[UserSpan], events: Sequence[Event]) -> int:
    """Redraw the pauses in which the agent took the turn (false cut-offs) in red; returns how many."""
    cut = [p["pause_s"] for p in pauses(spans, events) if p["cut_off"]]
    ax.broken_barh([(a, b - a) for a, b in cut], (1 - LANE_HEIGHT / 2, LANE_HEIGHT),
                   facecolor="mistyrose", edgecolor="tab:red", hatch="//")
    return len(cut)


def _event_marks(ax, events: Sequence[Event]) -> list:
    """Scatter each marked event kind; returns the legend handles of those present."""
    from matplotlib.lines import Line2D

    handles = []
    for kind, (lane, marker, colour, label) in MARKS.items():
        times = [e.time for e in events if e.kind == kind]
        if kind == ev.TURN_TAKEN:
            for t in times:
                ax.axvline(t, color=colour, alpha=0.35, linewidth=1, linestyle="--")
        if times:
            ax.scatter(times, [lane] * len(times), marker=marker, color=colour, zorder=3, s=30)
            handles.append(Line2D([], [], marker=marker, color=colour, linestyle="", label=label))
    backchannels = [e.time for e in events if e.kind == ev.AGENT_BACKCHANNEL and e.data.get("stage") == "start"]
    if backchannels:
        ax.scatter(backchannels, [0.3] * len(backchannels), marker="*", color="tab:pink", zorder=3, s=60)
        handles.append(Line2D([], [], marker="*", color="tab:pink", linestyle="", label="agent backchannel"))
    return handles
