"""A full-duplex conversation over an AudioIO: listen, think and speak, frame by frame.

Each ``step`` handles one 32 ms VAD frame: read the microphone (with what the speaker played in
the same instant), cancel the echo, score speech, let the turn policy decide, and keep the speaker
ring topped up with the reply. The session never blocks on the device: the AudioIO's callback
only copies between rings.

This driver runs the stages one after another on the caller's thread, which makes a conversation
on a ``FileIO`` + ``VirtualClock`` fully deterministic and faster than real time: engine compute
happens "between" two virtual instants, and its wall-clock cost is reported in the events'
``compute_s`` instead of being charged to the virtual clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edgevoice.audio.io import AudioIO, read_aligned
from edgevoice.audio.resample import StreamingResampler
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import Event, EventBus
from edgevoice.runtime.pipelines.cascade import CascadePipeline
from edgevoice.runtime.turns import Decision, TurnOptions, VadTurnPolicy

USER_MARGIN_S = 0.3  # audio kept before the detected onset, so the first word is not clipped


@dataclass(frozen=True)
class SessionOptions:
    """How the session listens and speaks."""

    turn: TurnOptions = field(default_factory=TurnOptions)
    echo_cancellation: bool = True  # clean the mic against what the speaker played (open speakers)
    speaker_lead_s: float = 0.08  # reply audio kept queued ahead of the speaker: what a pause must drop
    max_utterance_s: float = 28.0  # longer user speech is cut into turns (one Whisper window)


class DuplexSession:
    """One conversation with a cascade agent over ``io``."""

    def __init__(self, agent: CascadePipeline, io: AudioIO, options: SessionOptions = SessionOptions(),
                 events: EventBus | None = None):
        self.agent, self.io, self.options = agent, io, options
        self.events = events or EventBus()
        self.policy = VadTurnPolicy(options.turn)
        self.frame = agent.vad.chunk_samples  # 512 samples at 16 kHz
        self.turn = 0
        self._vad = agent.vad.runner.stream()
        self._echo = None
        if options.echo_cancellation:
            from edgevoice.audio.echo import EchoCanceller

            self._echo = EchoCanceller(io.mic_rate)
        self._mic = np.zeros(self.frame, np.float32)
        self._ref = np.zeros(self.frame, np.float32)
        self._heard: list[np.ndarray] = []  # cleaned mic audio of the current user turn
        self._history: list[np.ndarray] = []  # the last ~USER_MARGIN_S of audio before an onset
        self._reply = np.zeros(0, np.float32)  # the reply's audio at the speaker rate
        self._cursor = 0  # next reply sample to queue
        self._reply_text = ""
        self._to_speaker = StreamingResampler(agent.voice.sample_rate, io.speaker_rate)
        self._pending = np.zeros(0, np.float32)  # echo-cancelled audio not yet a whole VAD frame

    # --- driving -----------------------------------------------------------------------------

    def step(self) -> bool:
        """Handle one frame; False when the microphone has no more audio (end of a recording)."""
        self.io.check()
        if not self.io.wait_for_mic(self.frame, timeout=1.0):
            return False
        _, count = read_aligned(self.io.mic, self.io.reference, self._mic, self._ref)
        cleaned = self._cancel_echo(self._mic[:count], self._ref[:count])
        if cleaned.size == self.frame:
            self._listen(cleaned)
        self._feed_speaker()
        return True

    def run(self, seconds: float) -> None:
        """Run for ``seconds`` of session time (or until the microphone runs dry)."""
        end = self.io.clock.now() + seconds
        while self.io.clock.now() < end and self.step():
            pass

    # --- listen --------------------------------------------------------------------------------

    def _cancel_echo(self, mic: np.ndarray, reference: np.ndarray) -> np.ndarray:
        if self._echo is None:
            return mic
        # The canceller returns whole 10 ms blocks; keep a frame's worth aligned for the VAD.
        cleaned = self._echo.process(mic, reference)
        self._pending = np.concatenate([self._pending, cleaned])
        if self._pending.size < self.frame:
            return np.zeros(0, np.float32)
        out, self._pending = self._pending[: self.frame], self._pending[self.frame :]
        return out

    def _listen(self, frame: np.ndarray) -> None:
        prob = float(self._vad({"chunk": frame[None]})["prob"].item())
        level = float(np.sqrt(np.mean(frame * frame)))
        now = self.io.clock.now()
        decision = self.policy.update(now, prob, level)
        self._keep_audio(frame, decision)
        if decision is Decision.USER_STARTED:
            self.turn += 1
            self._emit(ev.USER_SPEECH_START, speech_start=self.policy.speech_start)
        elif decision is Decision.END_OF_TURN:
            self._emit(ev.USER_SPEECH_END)
            self._respond()
        elif decision is Decision.DISMISS:
            self._heard.clear()
        elif decision is Decision.PAUSE:
            self._pause()
        elif decision is Decision.RESUME:
            self._emit(ev.BACKCHANNEL)
            self._heard.clear()
        elif decision is Decision.BARGE_IN:
            self._barge_in()
            self.turn += 1
            self._emit(ev.USER_SPEECH_START, speech_start=self.policy.speech_start)

    def _keep_audio(self, frame: np.ndarray, decision: Decision) -> None:
        """Collect the user's speech: a little audio before the onset, everything after it."""
        frame = frame.copy()  # the read buffer is reused by the next step
        in_user_speech = self.policy.speech_start is not None and (
            self.policy.state.value == "user_speaking" or self.policy.paused
        )
        if in_user_speech or decision in (Decision.USER_STARTED, Decision.PAUSE, Decision.END_OF_TURN):
            if not self._heard:
                self._heard.extend(self._history)
            self._heard.append(frame)
        keep = max(1, int(USER_MARGIN_S * self.io.mic_rate / self.frame))
        self._history = (self._history + [frame])[-keep:]

    # --- think ---------------------------------------------------------------------------------

    def _respond(self) -> None:
        audio = np.concatenate(self._heard) if self._heard else np.zeros(0, np.float32)
        self._heard.clear()
        started = time.perf_counter()
        transcript = self.agent.asr.transcribe(audio, self.io.mic_rate).text.strip() if audio.size else ""
        self._emit(ev.TRANSCRIPT, text=transcript, compute_s=time.perf_counter() - started)
        if not transcript:
            self.policy.agent_finished()
            return
        self._emit(ev.TURN_TAKEN)
        reply, pieces, timing = self.agent.answer(transcript, started)
        self._emit(ev.REPLY_TEXT, text=reply, compute_s=timing.get("total", 0.0), first_audio_compute_s=timing.get("first_audio"))
        voice = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        self._to_speaker.reset()
        self._reply = np.concatenate([self._to_speaker.process(voice), self._to_speaker.flush()])
        self._cursor, self._reply_text = 0, reply
        if not self._reply.size:
            self.policy.agent_finished()

    # --- speak ---------------------------------------------------------------------------------

    def _feed_speaker(self) -> None:
        if self.policy.paused or self._cursor >= self._reply.size:
            if self._reply.size and self._cursor >= self._reply.size and self.io.speaker.readable == 0:
                self._finish_reply()
            return
        lead = int(self.options.speaker_lead_s * self.io.speaker_rate)
        room = lead - self.io.speaker.readable
        if room <= 0:
            return
        if self._cursor == 0:
            self.policy.agent_started_speaking()
            self._emit(ev.FIRST_AUDIO)
        chunk = self._reply[self._cursor : self._cursor + room]
        self.io.speaker.write(chunk)
        self._cursor += chunk.size

    def _pause(self) -> None:
        """Possible interruption: stop the audio now, keep the reply to resume from where it stopped."""
        unplayed = self.io.speaker.readable
        self.io.flush_speaker()
        self._cursor = max(0, self._cursor - unplayed)
        self._emit(ev.BARGE_IN, stage="pause")

    def _barge_in(self) -> None:
        """The user took the floor: drop the rest of the reply, remember only what was said."""
        spoken = self._cursor / max(1, self._reply.size)
        words = self._reply_text.split()
        said = " ".join(words[: int(round(spoken * len(words)))])
        if self.agent.history and self.agent.history[-1]["role"] == "assistant":
            self.agent.history[-1] = {"role": "assistant", "content": said}
        self._reply, self._cursor, self._reply_text = np.zeros(0, np.float32), 0, ""
        self._emit(ev.CANCEL_DONE, kept_words=len(said.split()), of_words=len(words))

    def _finish_reply(self) -> None:
        self._reply, self._cursor = np.zeros(0, np.float32), 0
        self.policy.agent_finished()
        self._emit(ev.AGENT_DONE)

    def _emit(self, kind: str, **data) -> None:
        self.events.emit(Event(self.io.clock.now(), kind, self.turn, data))
