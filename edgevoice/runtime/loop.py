"""The listen loop every recipe's duplex session shares.

One ``step`` reads a frame of microphone audio with what the speaker played in the same instant
(position-aligned), cancels the echo, hands the cleaned frame to the recipe's ``_listen``, lets the
recipe move its other stages along (``_tick``: finished jobs, tool results, and the speaker feed
this class implements), and reports audio problems as events. It never waits for a model:
inference runs on the stages' workers, and the AudioIO's callback only copies between rings.
"""

from __future__ import annotations

import queue

import numpy as np

from edgevoice.audio.clock import VirtualClock
from edgevoice.audio.io import AudioIO, read_aligned
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import Event, EventBus
from edgevoice.runtime.reply import Generation
from edgevoice.runtime.tools import ToolOutcome
from edgevoice.runtime.turns import TurnPolicy

CLIP_WARNING_EVERY_S = 10.0  # a clipping microphone is reported at most this often
MIC_WAIT_S = 1.0  # no microphone frame for this long: the recording ended (a device's stall raises)
START_CHECK_S = 0.005  # while a released reply waits for its first audio, look this often
# Summary names of the first-audio latency where compute took no time (file mode).
ESTIMATED_LIVE_KEY = "first_audio_after_endpoint_estimated_live_s"  # see events.estimated_live_first_audio
VIRTUAL_CLOCK_KEY = "first_audio_after_endpoint_virtual_clock_s"  # as measured on the virtual clock: compute left out
# What the user waits: from the end of their speech, the endpoint silence included (see
# events.estimated_live_after_speech_end); the endpoint figures above start at the decision.
SPEECH_END_ESTIMATED_LIVE_KEY = "first_audio_after_speech_end_estimated_live_s"
SPEECH_END_KEY = "first_audio_after_speech_end_s"  # live runs: as measured


def compute_takes_no_time(io: AudioIO) -> bool:
    """True on an unpaced virtual clock: the stages run inline and the clock stands still meanwhile."""
    return isinstance(io.clock, VirtualClock) and getattr(io, "pace", None) is None


def first_audio_summary(io: AudioIO, history: list) -> dict[str, float | None]:
    """A session summary's first-audio latencies (medians over turns): compute-inclusive estimates
    beside the virtual clock's figure in file mode, the measured ones live."""
    measured = _median_high(t[ev.FIRST_AUDIO] for t in ev.turn_latencies(history).values() if ev.FIRST_AUDIO in t)
    if compute_takes_no_time(io):  # the virtual clock leaves the engines out: add the estimates
        return {ESTIMATED_LIVE_KEY: _median_high(ev.estimated_live_first_audio(history).values()),
                SPEECH_END_ESTIMATED_LIVE_KEY: _median_high(ev.estimated_live_after_speech_end(history).values()),
                VIRTUAL_CLOCK_KEY: measured}
    return {"first_audio_after_endpoint_s": measured,
            SPEECH_END_KEY: _median_high(ev.first_audio_after_speech_end(history).values())}


def _median_high(values) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


class ListenLoop:
    """Echo-cancelled frames in, events out, reply audio to the speaker.

    Subclasses implement ``_listen`` and ``_tick``, set ``policy`` and put the reply that holds the
    floor in ``_current``; ``_feed_speaker`` plays it.
    """

    policy: TurnPolicy

    def __init__(self, io: AudioIO, frame: int, echo_cancellation: bool, events: EventBus | None,
                 speaker_lead_s: float):
        self.io, self.frame = io, frame
        self.events = events or EventBus()
        self._speaker_lead = int(speaker_lead_s * io.speaker_rate)  # reply samples queued ahead of the speaker
        self._current: Generation | None = None  # the reply that holds (or will get) the floor
        self._speaking = False  # the current reply has started playing
        self.reply_gaps = 0  # times the speaker ran dry in the middle of a reply (synthesis fell behind)
        self._in_gap = False
        self.turn = 0  # index of the current user turn
        self.level = 0.0  # RMS of the last cleaned frame (the live view's meter)
        self._echo = None
        if echo_cancellation:
            from edgevoice.audio.echo import EchoCanceller

            self._echo = EchoCanceller(io.mic_rate)
        self._mic = np.zeros(frame, np.float32)
        self._ref = np.zeros(frame, np.float32)
        self._pending = np.zeros(0, np.float32)  # echo-cancelled audio not yet a whole frame
        self._xruns_seen = (0, 0, 0)  # device xruns, output starves and lost mic samples already reported
        self._nonfinite_seen = 0  # NaN/inf mic samples already reported
        self._clipped_seen = 0  # clipped mic samples already reported
        self._clip_warned_at = -1e9  # clock time of the last clipping warning

    # --- driving ---------------------------------------------------------------------------------

    def step(self) -> bool:
        """Handle one frame; False when the microphone has no more audio (end of a recording)."""
        self.io.check()
        if not self._wait_for_frame():
            return False
        _, count = read_aligned(self.io.mic, self.io.reference, self._mic, self._ref)
        cleaned = self._cancel_echo(self._mic[:count], self._ref[:count])
        if cleaned.size == self.frame:
            self.level = float(np.sqrt(np.mean(cleaned * cleaned)))
            self._listen(cleaned)
        self._tick()
        self._report_audio_problems()
        return True

    def run(self, seconds: float) -> None:
        """Run for ``seconds`` of session time (or until the microphone runs dry)."""
        end = self.io.clock.now() + seconds
        while self.io.clock.now() < end and self.step():
            pass

    def _wait_for_frame(self) -> bool:
        """Wait for the next microphone frame (False after a second without one).

        While a reply holds the floor but has not yet sounded, the wait is cut into device-block
        slices and its first audio goes to the speaker the moment it is ready: waiting for the next
        frame would add up to a frame (32 ms) to the latency the user hears, 16 ms on average.
        """
        waited = 0.0
        while waited < MIC_WAIT_S and self._reply_waiting_to_sound():
            if self.io.wait_for_mic(self.frame, timeout=START_CHECK_S):
                return True
            waited += START_CHECK_S
            self._feed_speaker()
        return self.io.wait_for_mic(self.frame, timeout=MIC_WAIT_S)

    def _reply_waiting_to_sound(self) -> bool:
        gen = self._current
        return gen is not None and not self._speaking and gen.released.is_set() and not self.policy.paused

    def _listen(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def _tick(self) -> None:
        raise NotImplementedError

    def _stage_failed(self, stage: str, exc: BaseException) -> None:
        """A stage's job raised (the stages' ``on_error``): say so and end the replies it was making;
        the conversation goes on."""
        self._emit(ev.WARNING, stage=stage, error=f"{type(exc).__name__}: {exc}")
        for gen in self._replies_in_flight():
            gen.cancel()
            gen.reply.finish()
            gen.done.set()

    def _replies_in_flight(self) -> list[Generation]:
        """The replies a failed stage may have been making (a recipe with more adds them)."""
        return [self._current] if self._current is not None else []

    # --- speak -----------------------------------------------------------------------------------

    def _feed_speaker(self) -> None:
        """Keep the speaker ring topped up from the current reply; finish it once all was played."""
        gen = self._current
        if gen is None or self.policy.paused or not gen.released.is_set():
            return
        if gen.done.is_set() and gen.reply.exhausted:
            if self.io.speaker.readable == 0:
                self._finish_reply(gen)
            return
        room = self._speaker_lead - self.io.speaker.readable
        if room <= 0:
            return
        chunk = gen.reply.take(room)
        self._track_gap(starved=self._speaking and self.io.speaker.readable == 0 and not chunk.size)
        if not chunk.size:
            return
        if not self._speaking:
            self._speaking = True
            self.policy.agent_started_speaking()
            self._first_audio()
        self.io.speaker.write(chunk)

    def _track_gap(self, starved: bool) -> None:
        """A gap in the agent's speech (its audio not ready in time) is an xrun the listener hears."""
        if starved and not self._in_gap:
            self.reply_gaps += 1
            self._emit(ev.XRUN, kind="reply_gap")
        self._in_gap = starved

    def _finish_reply(self, gen: Generation) -> None:
        self._current = None
        self.policy.agent_finished()
        if self._speaking:
            self._agent_done(gen)
        self._speaking = False

    def _first_audio(self) -> None:
        self._emit(ev.FIRST_AUDIO)

    def _agent_done(self, gen: Generation) -> None:
        self._emit(ev.AGENT_DONE)

    # --- act -------------------------------------------------------------------------------------

    def _arrived_tool_outcomes(self, outcomes: queue.SimpleQueue) -> list[ToolOutcome]:
        """Outcomes the tool runner finished since the last call, each reported as its event."""
        arrived = []
        while True:
            try:
                outcome = outcomes.get_nowait()
            except queue.Empty:
                return arrived
            kind = ev.TOOL_RESULT if outcome.ok else ev.TOOL_ERROR
            self._emit(kind, name=outcome.call.name, call_id=outcome.call.call_id, seconds=outcome.seconds,
                       **outcome.answer())
            arrived.append(outcome)

    # --- audio -----------------------------------------------------------------------------------

    def _cancel_echo(self, mic: np.ndarray, reference: np.ndarray) -> np.ndarray:
        if self._echo is None:
            return mic
        # The canceller returns whole 10 ms blocks; keep a frame's worth aligned for the listener.
        cleaned = self._echo.process(mic, reference)
        self._pending = np.concatenate([self._pending, cleaned])
        if self._pending.size < self.frame:
            return np.zeros(0, np.float32)
        out, self._pending = self._pending[: self.frame], self._pending[self.frame :]
        return out

    def summary(self) -> dict:
        """Turns, replies, the recipe's own figures, and every audio problem counted."""
        return {
            "turns": self.turn,
            "session_seconds": self.io.clock.now(),
            "replies": len(self.events.history(ev.AGENT_DONE)),
            "barge_ins": len(self.events.history(ev.CANCEL_DONE)),
            "reply_gaps": self.reply_gaps,
            **self._recipe_summary(),
            **self.audio_summary(),
        }

    def _recipe_summary(self) -> dict:
        return {}

    def audio_summary(self) -> dict:
        """Every audio problem counted since the start."""
        stats = self.io.stats
        return {
            "device_xruns": stats.xruns,  # callbacks with a PortAudio over/underflow flag
            "device_output_starved": stats.output_starved,  # times the device played silence for want of queued audio
            "mic_overrun_samples": self.io.mic.overrun_samples,
            "reference_overrun_samples": self.io.reference.overrun_samples,
            "speaker_silence_samples": self.io.speaker.underrun_samples,  # silence played while nothing was queued
            "nonfinite_samples": stats.nonfinite_samples,
            "clipped_samples": stats.clipped_samples,
        }

    def _report_audio_problems(self) -> None:
        """Device over/underflows, output starves and lost microphone audio as ``xrun`` events (one
        per step that saw any, with what is new since the last); NaN and clipping input (already
        repaired or counted by the I/O) as ``warning`` events."""
        stats = self.io.stats
        seen = (stats.xruns, stats.output_starved, self.io.mic.overrun_samples)
        if seen != self._xruns_seen:
            new = [after - before for after, before in zip(seen, self._xruns_seen)]
            self._emit(ev.XRUN, kind="device", device_xruns=new[0], output_starved=new[1], mic_samples_lost=new[2])
            self._xruns_seen = seen
        if stats.nonfinite_samples > self._nonfinite_seen:
            self._emit(ev.WARNING, stage="input", problem="non-finite samples (NaN/inf) replaced by silence",
                       samples=stats.nonfinite_samples - self._nonfinite_seen)
            self._nonfinite_seen = stats.nonfinite_samples
        now = self.io.clock.now()
        if stats.clipped_samples > self._clipped_seen and now - self._clip_warned_at >= CLIP_WARNING_EVERY_S:
            self._emit(ev.WARNING, stage="input", problem="the microphone clips: lower its input gain",
                       samples=stats.clipped_samples - self._clipped_seen)
            self._clip_warned_at, self._clipped_seen = now, stats.clipped_samples

    # --- events ----------------------------------------------------------------------------------

    # ``kind`` is positional-only so that an event's data may have a ``kind`` of its own (xrun's).
    def _emit(self, kind: str, /, **data) -> None:
        self.events.emit(Event(self.io.clock.now(), kind, self.turn, data))

    def _emit_turn(self, kind: str, /, turn: int, **data) -> None:
        self.events.emit(Event(self.io.clock.now(), kind, turn, data))
