"""A conversation with a VocalNet package: the VAD takes the turns, the pipeline answers each one.

VocalNet is turn-based (it has no turn-state head), so the turns come from the runtime: the
package's Silero VAD feeds ``VadTurnPolicy`` one 32 ms frame at a time. The **listen** loop
(``ListenLoop.step``) keeps the recent microphone audio; when the policy ends a user turn, the
turn's audio (from its onset, with a short pre-roll) goes to ``VocalNetPipeline.respond``, whose
steps -- one engine call each -- run on the **reply** stage: on a thread, or inline a fixed number
per frame on an unpaced ``FileIO`` (deterministic: compute takes no virtual time).

Think while listening (``VnSessionOptions.think_while_listening``): the encoder attends over the
whole turn (Whisper style), so it cannot run chunk by chunk as the user speaks; what can start
early is the whole reply. Once the user has been silent ``speculate_after_ms`` (before the
endpoint's ``endpoint_silence_ms``), the reply's engine work -- encode, prefill, text and speech
tokens, mel and PCM chunks -- starts speculatively on the reply stage; nothing of it plays and
none of its events is emitted. When the turn is taken with the same audio (the same last speech
frame) the speculation is released: its audio plays and its held events come out; if the user
speaks again first it is cancelled at its next step and leaves nothing behind (each turn is
answered from a fresh prompt, so no state needs rolling back). The turn's audio always ends at
the frame where that silence was reached, speculation or not, so a released reply is exactly the
one a session without speculation gives; the endpoint silence past it is not sent to the model.

Speech streams: every vocoder chunk is appended to the reply's audio as it is made, and the loop
feeds the speaker from it, so the first PCM plays after the first mel chunk, not after the reply.
Speech over the reply pauses it at once (the queued audio is dropped and will play again); a
short sound resumes it (a backchannel), a longer one is a barge-in: the reply's remaining
engine calls are cancelled at the next step, the speaker is flushed, and the new turn is heard.
Nothing needs rolling back: each turn is answered from a fresh prompt, as the reference does.

Events per reply, after ``turn_taken`` (the end of the turn; ``speculative``: a released
speculation answers it): ``first_token`` -> ``first_speech_token`` -> ``first_mel_chunk`` ->
``first_pcm``, then ``first_audio`` when the speaker gets it, ``reply_text`` and ``agent_done``
(or ``barge_in`` and ``cancel_done``). The four stage events carry ``after_turn_s`` (wall seconds
from the turn decision), ``compute_s`` (engine seconds since the reply's job started),
``speculative`` and ``reply`` (the reply's id); ``first_pcm`` adds ``job_start`` (session-clock
time its job started), which ``events.estimated_live_first_audio`` uses to add the engines' time
back on a virtual clock. A released speculation's stages reached before the decision come out
right after ``turn_taken`` with ``after_turn_s`` 0.0 (clamped: they cost the user no wait) and
``ahead_s``, the session-clock seconds by which they beat the decision (on an unpaced FileIO the
inline stepping's virtual time, not wall time: a wall difference there would count the frames the
loop listened to meanwhile); stages it reaches later are timed from the decision like any reply's.
The speculation itself is visible as ``speculation`` events (``stage``: "start" with the audio it
answers, "drop" with the reason and its engine seconds).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from edgevoice.audio.io import AudioIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import EventBus
from edgevoice.runtime.loop import ListenLoop, first_audio_summary
from edgevoice.runtime.reply import Generation
from edgevoice.runtime.turns import (
    Decision,
    TurnOptions,
    TurnState,
    VadTurnPolicy,
    elapsed_ms,
)
from edgevoice.runtime.vocalnet.pipeline import ReplyStep, VocalNetPipeline
from edgevoice.runtime.workers import Stepper

FIRST_MEL_CHUNK = "first_mel_chunk"  # the flow's first mel chunk of a reply
FIRST_PCM = ev.FIRST_PCM  # the vocoder's first audio of a reply (before it reaches the speaker)
STAGES = (ev.FIRST_TOKEN, ev.FIRST_SPEECH_TOKEN, FIRST_MEL_CHUNK, FIRST_PCM)
SPECULATION = "speculation"  # a reply started in the end-of-turn silence: stage "start" | "drop"
# The cascade's default (runtime/cascade/session.py): the reply is under way well before the
# 600 ms endpoint, and a pause between two words rarely lasts this long.
DEFAULT_SPECULATE_AFTER_MS = 160.0


@dataclass(frozen=True)
class VnSessionOptions:
    """How a VocalNet session listens and speaks."""

    turn: TurnOptions = field(default_factory=TurnOptions)
    echo_cancellation: bool = True
    speaker_lead_s: float = 0.2  # reply audio queued ahead of the speaker (what a pause drops)
    preroll_s: float = 0.3  # audio before the detected onset that belongs to the turn
    threaded: bool = True
    inline_steps: int = 4  # engine calls per 32 ms frame on an unpaced FileIO (stands in for engine speed)
    think_while_listening: bool = True  # start the reply speculatively in the end-of-turn silence
    # Silence after the last speech frame that starts the speculative reply; the turn's audio ends there.
    speculate_after_ms: float = DEFAULT_SPECULATE_AFTER_MS

    def __post_init__(self) -> None:
        if self.inline_steps < 1:
            raise ValueError("inline_steps must be at least 1")
        if self.speculate_after_ms < 0:
            raise ValueError(f"speculate_after_ms must be >= 0, got {self.speculate_after_ms}")
        if self.think_while_listening and self.speculate_after_ms >= self.turn.endpoint_silence_ms:
            raise ValueError(f"speculate_after_ms ({self.speculate_after_ms}) must be shorter than "
                             f"turn.endpoint_silence_ms ({self.turn.endpoint_silence_ms}), or the reply never starts "
                             "early; lower it, or set think_while_listening=False")


class _ReplyEvents:
    """One reply's events: the first of each stage, and its text.

    A reply answering a taken turn emits them as they happen; a speculation holds them until it
    is released (then they come out at once, clamped to the decision) or dropped (then never).
    Called from the reply stage's thread and the listen loop's, so one lock orders both.
    """

    def __init__(self, emit: Callable[..., None], clock: Callable[[], float], turn: int, gen: Generation,
                 decided_at: float | None):
        self._emit, self._clock, self.turn, self.gen = emit, clock, turn, gen
        self.job_start = clock()  # session clock: the job is queued now and starts at the next tick
        self._decided_at = decided_at  # perf_counter() at the turn decision; None: not released yet
        self._lock = threading.Lock()
        self._held: list[tuple[str, dict, float]] = []  # (kind, data, session-clock time when reached)
        self._marked: set[str] = set()
        self._dropped = False
        self.compute_s = 0.0  # wall seconds of this reply's engine calls so far

    def stage(self, kind: str, **data) -> None:
        """The first ``kind`` stage of the reply (later ones are not latency marks)."""
        if kind in self._marked:
            return
        self._marked.add(kind)
        self.emit(kind, stage=True, compute_s=round(self.compute_s, 4), speculative=self.gen.speculative,
                  reply=self.gen.id, **data)

    def emit(self, kind: str, stage: bool = False, **data) -> None:
        with self._lock:
            if self._dropped:
                return
            if self._decided_at is None:
                self._held.append((kind, {**data, "_stage": stage}, self._clock()))
                return
            if stage:
                data["after_turn_s"] = round(time.perf_counter() - self._decided_at, 4)
            self._emit(kind, self.turn, **data)

    def release(self, decided_at: float) -> None:
        """The turn was taken as the speculation assumed: what it reached comes out, timed from now."""
        with self._lock:
            self._decided_at, now = decided_at, self._clock()
            for kind, data, reached in self._held:
                if data.pop("_stage"):
                    data.update(after_turn_s=0.0, ahead_s=round(max(0.0, now - reached), 4))
                self._emit(kind, self.turn, **data)
            self._held.clear()

    def drop(self) -> None:
        with self._lock:
            self._dropped = True
            self._held.clear()


@dataclass
class _Reply:
    gen: Generation
    events: _ReplyEvents


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
        self._speculation: _Reply | None = None  # a reply started in the end-of-turn silence, not yet released
        # The turn's audio as it will be answered, cut when the silence reached speculate_after_ms,
        # and the last speech frame it ends after (None: not cut yet in this silence).
        self._turn_cut: tuple[float, np.ndarray] | None = None

    # --- driving -----------------------------------------------------------------------------------

    def _tick(self) -> None:
        self._stage.tick()
        self._feed_speaker()
        self._report_cancels()

    @property
    def idle(self) -> bool:
        return (self._current is None and self._speculation is None and self.policy.state is TurnState.LISTENING
                and self._stage.idle)

    def close(self) -> None:
        for gen in self._replies_in_flight():
            gen.cancel()
        self._stage.stop()

    def _replies_in_flight(self) -> list[Generation]:
        spec = [self._speculation.gen] if self._speculation is not None else []
        return ([self._current] if self._current is not None else []) + spec

    def _recipe_summary(self) -> dict:
        starts = [e for e in self.events.history(SPECULATION) if e.data["stage"] == "start"]
        released = [e for e in self.events.history(ev.TURN_TAKEN) if e.data.get("speculative")]
        summary = {"speculations": len(starts), "speculations_released": len(released)}
        return {**summary, **first_audio_summary(self.io, self.events.history())}

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
            self._take_turn()
        elif decision is Decision.DISMISS:
            self._drop_speculation("dismissed")
            self._emit(ev.DISMISSED, reason="shorter than a turn")
        elif decision is Decision.PAUSE:
            self._pause()
        elif decision is Decision.RESUME:
            self._emit(ev.BACKCHANNEL)
        elif decision is Decision.BARGE_IN:
            self._barge_in()
        if self.policy.state is TurnState.USER_SPEAKING:
            self._think_while_listening(now)

    def _turn_audio(self) -> np.ndarray:
        """The user's turn from its onset (less the pre-roll) to now."""
        start = (self.policy.speech_start or 0.0) - self.options.preroll_s - self.frame / self.io.mic_rate
        frames = [f for end, f in self._recent if end > start]
        return np.concatenate(frames) if frames else np.zeros(0, np.float32)

    # --- think while listening ---------------------------------------------------------------------

    def _think_while_listening(self, now: float) -> None:
        """In the user's silence: cut the turn's audio and start its reply early; drop it if they go on."""
        last = self.policy.last_speech
        if last is None:
            return
        if self._speculation is not None and self._speculation.gen.audio_key != last:
            self._drop_speculation("the user went on")
        silent_enough = elapsed_ms(last, now) >= self.options.speculate_after_ms
        if not silent_enough or (self._turn_cut is not None and self._turn_cut[0] == last):
            return
        self._turn_cut = (last, self._turn_audio())
        if self.options.think_while_listening:
            self._speculation = self._start_reply(self._turn_cut[1], decided_at=None)
            self._emit(SPECULATION, stage="start", reply=self._speculation.gen.id,
                       audio_s=round(self._turn_cut[1].size / self.io.mic_rate, 3))

    def _drop_speculation(self, reason: str) -> None:
        spec, self._speculation = self._speculation, None
        if spec is None:
            return
        spec.gen.cancel()  # its job stops before its next engine call
        spec.events.drop()
        self._emit(SPECULATION, stage="drop", reply=spec.gen.id, reason=reason,
                   compute_s=round(spec.events.compute_s, 4))

    # --- respond -----------------------------------------------------------------------------------

    def _take_turn(self) -> None:
        """The end of the turn: release the speculation made for this audio, or start the reply now."""
        last = self.policy.last_speech
        audio = self._turn_cut[1] if self._turn_cut is not None and self._turn_cut[0] == last else self._turn_audio()
        self._turn_cut = None
        spec = self._speculation
        released = spec is not None and spec.gen.audio_key == last and not spec.gen.cancelled.is_set()
        if released:
            self._speculation = None
        else:
            self._drop_speculation("not the turn's audio")  # a stage failure cancelled it, or another silence
        self._emit(ev.TURN_TAKEN, audio_s=round(audio.size / self.io.mic_rate, 3), speculative=released)
        decided_at = time.perf_counter()
        if released:
            spec.gen.released.set()
            spec.events.release(decided_at)
            reply = spec
        else:
            reply = self._start_reply(audio, decided_at=decided_at)
        self._current, self._speaking, self._reply_turn = reply.gen, False, self.turn

    def _start_reply(self, audio: np.ndarray, decided_at: float | None) -> _Reply:
        """Queue the reply's engine calls; ``decided_at`` None makes it a speculation (held, silent)."""
        gen = Generation(speculative=decided_at is None)
        gen.audio_key = self.policy.last_speech or 0.0
        events = _ReplyEvents(self._emit_turn, self.io.clock.now, self.turn, gen, decided_at)
        self._stage.submit(self._reply(gen, audio, events))
        return _Reply(gen, events)

    def _reply(self, gen: Generation, audio: np.ndarray, events: _ReplyEvents) -> Iterator[None]:
        """The pipeline's steps with their events; once cancelled, no further engine call is made."""
        steps = self.pipeline.respond(audio)
        try:
            while not gen.cancelled.is_set():
                started = time.perf_counter()
                step = next(steps, None)
                events.compute_s += time.perf_counter() - started
                if step is None:
                    return
                self._on_step(gen, step, events)
                yield
        finally:
            steps.close()
            gen.reply.finish()
            gen.done.set()

    @staticmethod
    def _on_step(gen: Generation, step: ReplyStep, events: _ReplyEvents) -> None:
        if step.kind == "token":
            events.stage(ev.FIRST_TOKEN, token=step.token)
        elif step.kind == "units" and step.units:
            events.stage(ev.FIRST_SPEECH_TOKEN, units=len(step.units))
        elif step.kind == "mel" and step.frames:
            events.stage(FIRST_MEL_CHUNK, frames=step.frames)
        elif step.kind == "pcm" and step.pcm is not None and step.pcm.size:
            events.stage(FIRST_PCM, samples=int(step.pcm.size), job_start=events.job_start)
            gen.reply.append(step.pcm)  # a speculation's too: it plays from the start once released
        elif step.kind == "done":
            gen.text = step.text
            events.emit(ev.REPLY_TEXT, text=step.text, finish=step.finish, speculative=gen.speculative, reply=gen.id)

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

