"""Play rendered conversations to an agent on the virtual clock and keep what happened.

The machinery is ``edgevoice talk --input``'s: an ``Agent`` over a ``FileIO`` without pace, so
the stages run inline and the conversation is deterministic and faster than real time. Open
speakers add the room's echo path to the ``FileIO``. The engines load once; before each
conversation the agent forgets the previous one (history, LLM cache, the voice's noise stream),
so a conversation's result does not depend on which ran before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevoice.errors import EdgevoiceError
from edgevoice.eval.script import ConversationOptions
from edgevoice.eval.synth import RATE, Rendered, room_echo_path
from edgevoice.runtime.events import Event

ACTIVE_LEVEL = 1e-3  # |sample| above this in a 10 ms block of played audio: the agent is audible
JOIN_GAP_S = 0.25  # audible stretches closer than this are one stretch (gaps between words)
MAX_AFTER_RECORDING_S = 60.0  # the agent may go on this long after the recording ends


@dataclass(frozen=True)
class Observed:
    """What one conversation produced: every event, and when the agent was audible."""

    events: tuple[Event, ...]
    agent_spans: tuple[tuple[float, float], ...]  # seconds on the session clock
    seconds: float  # how long the session ran
    played: np.ndarray  # (M,) float32 at speaker_rate: what the agent said
    speaker_rate: int


class Runner:
    """One agent (engines loaded once) that plays conversation after conversation."""

    def __init__(self, package: str | Path, *, backend: str = "ort", device: str = "cpu", seed: int = 0):
        from edgevoice.runtime.agent import Agent

        self.agent = Agent(package, backend=backend, device=device, seed=seed)
        self.seed = seed
        if self.agent.mic_rate != RATE:
            raise EdgevoiceError(f"this package listens at {self.agent.mic_rate} Hz; eval scripts are rendered at "
                                 f"{RATE} Hz")

    @property
    def recipe(self) -> str:
        return self.agent.recipe

    def play(self, rendered: Rendered) -> Observed:
        from edgevoice.audio.io import FileIO

        agent = self.agent
        agent.options = self._session_options(rendered.conversation.options)
        self._forget()
        options = rendered.conversation.options
        echo = room_echo_path(options.echo_delay_s) if options.open_speakers else None
        io = FileIO(rendered.recording, recording_rate=RATE, mic_rate=agent.mic_rate,
                    speaker_rate=agent.speaker_rate, echo_path=echo)
        events: list[Event] = []
        unsubscribe = agent.on(None, events.append)
        try:
            agent.run(io, seconds=rendered.seconds + MAX_AFTER_RECORDING_S)
        finally:
            unsubscribe()
        played = io.played()
        return Observed(tuple(events), audible_spans(played, io.speaker_rate), io.clock.now(), played,
                        io.speaker_rate)

    def _session_options(self, options: ConversationOptions):
        from edgevoice.runtime.backchannel import BackchannelOptions
        from edgevoice.runtime.cascade.session import SessionOptions

        if options.agent_backchannels and self.recipe != "cascade":
            raise EdgevoiceError(f"agent_backchannels is a cascade feature; this package holds recipe "
                                 f"'{self.recipe}': set it false in the script")
        return SessionOptions(echo_cancellation=options.cancels_echo,
                              think_while_listening=options.think_while_listening,
                              semantic_endpointing=options.semantic_endpointing,
                              text_endpointing=options.text_endpointing,
                              backchannels=BackchannelOptions() if options.agent_backchannels else None)

    def _forget(self) -> None:
        """A fresh conversation: no history, an empty LLM cache, the voice's noise from its seed."""
        pipeline = self.agent.pipeline
        if self.recipe != "cascade":
            reset = getattr(pipeline, "reset", None)
            if reset is not None:
                reset()
            return
        pipeline.history.clear()
        pipeline.llm.reset()
        pipeline.tts = pipeline.voice.session(seed=self.seed)


def audible_spans(played: np.ndarray, rate: int, block_s: float = 0.01) -> tuple[tuple[float, float], ...]:
    """Stretches of ``played`` (at ``rate``) with sound in them, in seconds; gaps under JOIN_GAP_S joined."""
    block = max(1, round(rate * block_s))
    usable = played[: played.size // block * block].reshape(-1, block)  # (blocks, block)
    active = np.abs(usable).max(axis=1) > ACTIVE_LEVEL if usable.size else np.zeros(0, bool)
    spans: list[list[float]] = []
    for k in np.flatnonzero(active):
        start, end = k * block / rate, (k + 1) * block / rate
        if spans and start - spans[-1][1] < JOIN_GAP_S:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return tuple((round(a, 3), round(b, 3)) for a, b in spans)
