"""A conversation with a VocalNet package: the VAD takes the turns, the pipeline answers each one.

VocalNet is turn-based (it has no turn-state head), so the turns come from the runtime: the
package's Silero VAD feeds ``VadTurnPolicy`` one 32 ms frame at a time. The **listen** loop
(``ListenLoop.step``) keeps the recent microphone audio; when the policy ends a user turn, the
turn's audio (from its onset, with a short pre-roll) goes to ``VocalNetPipeline.respond``, whose
steps -- one engine call each -- run on the **reply** stage: on a thread, or inline a fixed number
per frame on an unpaced ``FileIO`` (deterministic: compute takes no virtual time).

Speech streams: every vocoder chunk is appended to the reply's audio as it is made, and the loop
feeds the speaker from it, so the first PCM plays after the first mel chunk, not after the reply.
Speech over the reply pauses it at once (the queued audio is dropped and will play again); a
short sound resumes it (a backchannel), a longer one is a barge-in: the reply's remaining
engine calls are cancelled at the next step, the speaker is flushed, and the new turn is heard.
Nothing needs rolling back: each turn is answered from a fresh prompt, as the reference does.

Events per reply, after ``turn_taken`` (the end of the turn), each with ``after_turn_s`` (wall
seconds since the decision): ``first_token`` -> ``first_speech_token`` -> ``first_mel_chunk`` ->
``first_pcm``, then ``first_audio`` when the speaker gets it, ``reply_text`` and ``agent_done``
(or ``barge_in`` and ``cancel_done``).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from edgevoice.audio.io import AudioIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import EventBus
from edgevoice.runtime.loop import ListenLoop
from edgevoice.runtime.reply import Generation
from edgevoice.runtime.turns import Decision, TurnOptions, TurnState, VadTurnPolicy
from edgevoice.runtime.vocalnet.pipeline import VocalNetPipeline
from edgevoice.runtime.workers import Stepper

FIRST_MEL_CHUNK = "first_mel_chunk"  # the flow's first mel chunk of a reply
FIRST_PCM = "first_pcm"  # the vocoder's first audio of a reply (before it reaches the speaker)
STAGES = (ev.FIRST_TOKEN, ev.FIRST_SPEECH_TOKEN, FIRST_MEL_CHUNK, FIRST_PCM)


@dataclass(frozen=True)
class VnSessionOptions:
    """How a VocalNet session listens and speaks."""

    turn: TurnOptions = field(default_factory=TurnOptions)
    echo_cancellation: bool = True
    speaker_lead_s: float = 0.2  # reply audio queued ahead of the speaker (what a pause drops)
    preroll_s: float = 0.3  # audio before the detected onset that belongs to the turn
    threaded: bool = True
    inline_steps: int = 4  # engine calls per 32 ms frame on an unpaced FileIO (stands in for engine speed)

    def __post_init__(self) -> None:
        if self.inline_steps < 1:
            raise ValueError("inline_steps must be at least 1")


class VocalNetSession(ListenLoop):
    """One conversation with a VocalNet agent over ``io``; same surface as the other sessions."""

    def __init__(self, pipeline: VocalNetPipeline, io: AudioIO, options: VnSessionOptions = VnSessionOptions(),
                 events: EventBus | None = None):
        if io.mic_rate != pipeline.sample_rate or io.speaker_rate != pipeline.output_rate:
            raise ValueError(f"the package takes {pipeline.sample_rate} Hz and speaks {pipeline.output_rate} Hz; the I/O "
                             f"gives {io.mic_rate} Hz in and {io.speaker_rate} Hz out")
        super().__init__(io, pipeline.vad.chunk_samples, options.echo_cancellation, events, options.speaker_lead_s)
        self.pipeline, self.options = pipeline, options
        self.policy = VadTurnPolicy(options.turn)
        self._vad = pipeline.vad.runner.stream()
        self._stage = Stepper("reply", options.threaded, self._stage_failed, options.inline_steps)
        keep = int(pipeline.manifest.config["listen"]["window_samples"] / self.frame) + 1
        self._recent: collections.deque[tuple[float, np.ndarray]] = collections.deque(maxlen=keep)  # (end time, frame)
        self._reply_turn = 0
        self._cancelled: list[tuple[Generation, int]] = []

    # --- driving -----------------------------------------------------------------------------------

    def _tick(self) -> None:
        self._stage.tick()
        self._feed_speaker()
        self._report_cancels()

    @property
    def idle(self) -> bool:
        return self._current is None and self.policy.state is TurnState.LISTENING and self._stage.idle

    def close(self) -> None:
        if self._current is not None:
            self._current.cancel()
        self._stage.stop()

    # --- listen ------------------------------------------------------------------------------------

    def _listen(self, frame: np.ndarray) -> None:
        now = self.io.clock.now()
        self._recent.append((now, frame.copy()))
        vad = self.pipeline.vad
        prob = float(self._vad({vad.input_name: frame[None]})[vad.output_name].item())
        decision = self.policy.update(now, prob, self.level)
        if decision is Decision.USER_STARTED:
            self.turn += 1
            self._emit(ev.USER_SPEECH_START, speech_start=self.policy.speech_start, over_agent=False)
        elif decision is Decision.END_OF_TURN:
            self._emit(ev.USER_SPEECH_END, speech_end=self.policy.last_speech)
            self._respond(self._turn_audio())
        elif decision is Decision.DISMISS:
            self._emit(ev.DISMISSED, reason="shorter than a turn")
        elif decision is Decision.PAUSE:
            self._pause()
        elif decision is Decision.RESUME:
            self._emit(ev.BACKCHANNEL)
        elif decision is Decision.BARGE_IN:
            self._barge_in()

    def _turn_audio(self) -> np.ndarray:
        """The user's turn from its onset (less the pre-roll) to now."""
        start = (self.policy.speech_start or 0.0) - self.options.preroll_s - self.frame / self.io.mic_rate
        frames = [f for end, f in self._recent if end > start]
        return np.concatenate(frames) if frames else np.zeros(0, np.float32)

    # --- respond -----------------------------------------------------------------------------------

    def _respond(self, audio: np.ndarray) -> None:
        self._emit(ev.TURN_TAKEN, audio_s=round(audio.size / self.io.mic_rate, 3))
        gen = Generation()
        self._current, self._speaking, self._reply_turn = gen, False, self.turn
        self._stage.submit(self._reply(gen, audio, self.turn, time.perf_counter()))

    def _reply(self, gen: Generation, audio: np.ndarray, turn: int, decided_at: float) -> Iterator[None]:
        """The pipeline's steps with their first-of-reply events; stops at the next step once cancelled."""
        marked: set[str] = set()

        def mark(kind: str, **data) -> None:
            if kind not in marked:
                marked.add(kind)
                self._emit_turn(kind, turn, after_turn_s=round(time.perf_counter() - decided_at, 4), **data)

        try:
            for step in self.pipeline.respond(audio):
                if gen.cancelled.is_set():
                    return
                if step.kind == "token":
                    mark(ev.FIRST_TOKEN, token=step.token)
                elif step.kind == "units" and step.units:
                    mark(ev.FIRST_SPEECH_TOKEN, units=len(step.units))
                elif step.kind == "mel" and step.frames:
                    mark(FIRST_MEL_CHUNK, frames=step.frames)
                elif step.kind == "pcm" and step.pcm is not None and step.pcm.size:
                    mark(FIRST_PCM, samples=int(step.pcm.size))
                    gen.reply.append(step.pcm)
                elif step.kind == "done":
                    gen.text = step.text
                    self._emit_turn(ev.REPLY_TEXT, turn, text=step.text, finish=step.finish)
                yield
        finally:
            gen.reply.finish()
            gen.done.set()

    # --- barge-in ----------------------------------------------------------------------------------

    def _pause(self) -> None:
        """Speech over the reply: drop what is queued for the speaker now; it plays again on resume."""
        unplayed = self.io.speaker.readable
        self.io.flush_speaker()
        if self._current is not None:
            self._current.reply.rewind(unplayed)
        self._emit(ev.BARGE_IN, stage="pause", unplayed_samples=unplayed)

    def _barge_in(self) -> None:
        """The user took the floor: cancel every stage of the reply; their turn is being heard."""
        gen, self._current = self._current, None
        self.io.flush_speaker()
        self._speaking = False
        self.turn += 1
        self._emit(ev.BARGE_IN, stage="cancel", said=None)
        self._emit(ev.USER_SPEECH_START, speech_start=self.policy.speech_start, over_agent=True)
        if gen is not None:
            gen.cancel()
            self._cancelled.append((gen, self._reply_turn))

    def _report_cancels(self) -> None:
        for entry in [c for c in self._cancelled if c[0].done.is_set()]:
            self._cancelled.remove(entry)
            gen, turn = entry
            self._emit_turn(ev.CANCEL_DONE, turn, played_samples=gen.reply.cursor, written_samples=gen.reply.written)

    # --- speak -------------------------------------------------------------------------------------

    def _first_audio(self) -> None:
        self._emit_turn(ev.FIRST_AUDIO, self._reply_turn)

    def _agent_done(self, gen: Generation) -> None:
        self._emit_turn(ev.AGENT_DONE, self._reply_turn, samples=gen.reply.written)
