"""The live view of `edgevoice talk`: turn state, input level, partial transcript, reply, latency, xruns.

Redrawn ten times a second from the session's state and its events; the conversation itself runs
on the agent's threads, so a slow terminal never delays listening.
"""

from __future__ import annotations

import math
import threading

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from edgevoice.runtime import events as ev

_STATE_STYLE = {"listening": "green", "user_speaking": "bold cyan", "thinking": "yellow", "speaking": "bold magenta"}


class LiveState:
    """What the view shows, updated by event callbacks (any thread) and read by the drawing loop."""

    def __init__(self):
        self.lock = threading.Lock()
        self.partial = ""
        self.heard = ""
        self.reply = ""
        self.last_latency: float | None = None
        self.tool = ""
        self._end: float | None = None

    def on_event(self, event) -> None:
        with self.lock:
            if event.kind == ev.PARTIAL_TRANSCRIPT:
                self.partial = event.data["text"]
            elif event.kind == ev.TRANSCRIPT:
                self.heard, self.partial = event.data["text"], ""
            elif event.kind == ev.REPLY_TEXT and not event.data.get("cancelled"):
                self.reply = event.data["text"]
            elif event.kind == ev.USER_SPEECH_END:
                self._end = event.time
            elif event.kind == ev.FIRST_AUDIO and self._end is not None:
                self.last_latency, self._end = event.time - self._end, None
            elif event.kind in (ev.TOOL_CALL, ev.TOOL_RESULT, ev.TOOL_ERROR):
                self.tool = f"{event.kind}: {event.data.get('name')}"


def level_meter(rms: float, width: int = 30) -> Text:
    """A dBFS bar from -60 to 0 dB."""
    db = 20 * math.log10(max(rms, 1e-6))
    filled = int(round(width * min(1.0, max(0.0, (db + 60) / 60))))
    return Text("█" * filled + "·" * (width - filled) + f" {db:5.1f} dBFS", style="green" if db < -6 else "red")


def render(session, state: LiveState) -> Panel:
    turn_state = session.policy.state.value + (" (paused)" if session.policy.paused else "")
    io = session.io
    xruns = io.stats.xruns
    lost = io.mic.overrun_samples
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    with state.lock:
        table.add_row("state", Text(turn_state, style=_STATE_STYLE.get(session.policy.state.value, "")))
        table.add_row("input", level_meter(session.level))
        table.add_row("hearing", Text(state.partial or "", style="dim"))
        table.add_row("you said", state.heard)
        table.add_row("agent", state.reply)
        table.add_row("last turn", "—" if state.last_latency is None else f"first audio {state.last_latency * 1000:.0f} ms after your turn ended")
        table.add_row("tools", state.tool or "—")
    # Starved: the device played silence for want of queued reply audio, a gap PortAudio does not flag.
    table.add_row("audio", f"xruns {xruns}, output starved {io.stats.output_starved}, mic samples lost {lost}, "
                           f"clipped {io.stats.clipped_samples}")
    return Panel(Group(table), title=f"edgevoice talk — turn {session.turn}", subtitle="Ctrl-C to stop")


def run_live_view(agent, console: Console) -> None:
    """Draw until the conversation ends (or Ctrl-C, which the caller handles)."""
    state = LiveState()
    unsubscribe = agent.on(None, state.on_event)
    try:
        with Live(render(agent.session, state), console=console, refresh_per_second=10, transient=False) as live:
            while not agent.wait(timeout=0.1):
                live.update(render(agent.session, state))
    finally:
        unsubscribe()
