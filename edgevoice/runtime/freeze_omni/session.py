"""A full-duplex conversation with a Freeze-Omni package: the turn-state head takes the turns.

The **listen** loop (``step``, on the caller's thread) handles one 160 ms chunk at a time: read the
microphone with what the speaker played in the same instant, cancel the echo, let the acoustic
gate decide whether the LLM should hear it (``HeadTurnPolicy``), and hand the chunk to the listen
stage. It never waits for a model: the listen stage (front end, encoder, adapter, LLM + head) runs
on its own worker, and its verdicts come back through a queue the loop drains; think (LLM reply)
and speak (speech decoder + codec) run as step jobs (``edgevoice.runtime.freeze_omni.reply``).

A user turn is heard into a fork of the committed conversation. When the head says "respond",
that fork becomes the committed point and the reply is written into a copy of it; a reply that
finishes becomes the next committed point. A barge-in ("respond" while the agent holds the floor)
cancels the reply's decode and speech at their next step, flushes the speaker, and answers the new
turn from its own fork -- the interrupted reply never reaches the committed conversation.

With ``threaded=False`` on an unpaced ``FileIO`` every stage runs inline and the conversation is
deterministic: listening costs no virtual time, and a reply advances a fixed number of engine
steps per chunk (``FoSessionOptions.inline_*``), standing in for the engines' speed.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

import numpy as np

from edgevoice.audio.io import AudioIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import EventBus
from edgevoice.runtime.freeze_omni.head_policy import HeadTurnOptions, HeadTurnPolicy, level_db
from edgevoice.runtime.freeze_omni.listen import ChunkResult, LlmContext
from edgevoice.runtime.freeze_omni.pipeline import FreezeOmniPipeline
from edgevoice.runtime.freeze_omni.reply import FoReplyJobs, ReplyTiming, Stepper
from edgevoice.runtime.loop import ListenLoop
from edgevoice.runtime.reply import Generation
from edgevoice.runtime.turns import Decision, TurnState
from edgevoice.runtime.workers import Worker


@dataclass(frozen=True)
class FoSessionOptions:
    """How a Freeze-Omni session listens and speaks."""

    head: HeadTurnOptions = field(default_factory=HeadTurnOptions)
    echo_cancellation: bool = True  # clean the mic against what the speaker played (open speakers)
    # Reply audio kept queued ahead of the speaker (what a barge-in drops): more than one chunk, since
    # the loop tops the ring up once per 160 ms chunk.
    speaker_lead_s: float = 0.24
    threaded: bool = True  # listen, think and speak on worker threads (False: inline, deterministic)
    inline_llm_steps: int = 4  # threaded=False: LLM tokens per 160 ms chunk (25 tokens/s)
    inline_speech_steps: int = 16  # threaded=False: speech-decoder steps per chunk (2.5x real time at 40 Hz)

    def __post_init__(self) -> None:
        if self.speaker_lead_s <= self.head.chunk_ms / 1000:
            raise ValueError(f"speaker_lead_s must exceed one chunk ({self.head.chunk_ms:g} ms) or the speaker runs dry")
        if self.inline_llm_steps < 1 or self.inline_speech_steps < 1:
            raise ValueError("inline_llm_steps and inline_speech_steps must be at least 1")


@dataclass(frozen=True)
class _Heard:
    """A listen-stage verdict on its way back to the listen loop."""

    turn: int
    result: ChunkResult
    context: LlmContext  # the turn's context right after this chunk (arrays are never written in place)


class FreezeOmniSession(ListenLoop):
    """One conversation with a Freeze-Omni agent over ``io``; same surface as ``DuplexSession``."""

    def __init__(self, pipeline: FreezeOmniPipeline, io: AudioIO, options: FoSessionOptions = FoSessionOptions(),
                 events: EventBus | None = None, policy: HeadTurnPolicy | None = None):
        if io.mic_rate != pipeline.sample_rate:
            raise ValueError(f"the listen path takes {pipeline.sample_rate} Hz audio; the I/O gives {io.mic_rate} Hz")
        # One frame is one listen chunk: 2560 samples = 160 ms.
        super().__init__(io, pipeline.chunk_samples, options.echo_cancellation, events, options.speaker_lead_s)
        self.pipeline, self.options = pipeline, options
        self.policy = policy or HeadTurnPolicy(options.head)
        self._heard: queue.SimpleQueue[_Heard] = queue.SimpleQueue()
        self._listen_worker = Worker("listen", options.threaded, self._stage_failed)
        self._think = Stepper("think", options.threaded, self._stage_failed, options.inline_llm_steps)
        self._speak = Stepper("speak", options.threaded, self._stage_failed, options.inline_speech_steps)
        self.jobs = FoReplyJobs(pipeline, self._think, self._speak, self._emit_turn, io.speaker_rate)
        self._current_turn, self._current_timing = 0, ReplyTiming(0.0)  # the reply's user turn and latency clock
        self._cancelled: list[tuple[Generation, int, int]] = []  # (reply, its turn, committed position)
        self._turn_of_listen = 0  # the user turn the listen stage is hearing

    # --- driving ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        self._act_on_verdicts()
        self._think.tick()
        self._speak.tick()
        self._feed_speaker()
        self._report_cancels()

    @property
    def idle(self) -> bool:
        """Nobody holds the floor and no stage has work."""
        return (self._current is None and not self.policy.listening and self.policy.state is TurnState.LISTENING
                and self._listen_worker.idle and self._think.idle and self._speak.idle and self._heard.empty())

    def _recipe_summary(self) -> dict:
        """Dismissed turns, chunks heard and the respond-latency breakdown (median per stage)."""
        stages: dict[str, list[float]] = {}
        for marks in ev.respond_breakdown(self.events.history()).values():
            for kind, seconds in marks.items():
                stages.setdefault(kind, []).append(seconds)
        return {
            "dismissed": len(self.events.history(ev.DISMISSED)),
            "chunks_listened": len(self.events.history(ev.TURN_STATE)),
            "respond_latency_s": {k: sorted(v)[len(v) // 2] for k, v in stages.items()},
        }

    def close(self) -> None:
        """Stop every stage and cancel the reply."""
        if self._current is not None:
            self._current.cancel()
        self._listen_worker.stop()
        self._think.stop()
        self._speak.stop()

    # --- listen ----------------------------------------------------------------------------------

    def _listen(self, chunk: np.ndarray) -> None:
        """The gate decides on the loop's thread; the engines hear the chunk on the listen stage."""
        decision = self.policy.gate(self.io.clock.now(), level_db(chunk))
        begin = decision is Decision.USER_STARTED
        if begin:
            self.turn += 1
            self._emit(ev.USER_SPEECH_START, speech_start=self.policy.speech_start, over_agent=self.policy.overlap)
        elif decision is Decision.DISMISS:
            self._emit(ev.USER_SPEECH_END, speech_end=self.policy.last_speech)
            self._emit(ev.DISMISSED, reason="gate closed before the head decided")
        listening, turn = self.policy.listening, self.turn
        base = self.pipeline.conversation if begin else None  # forked now: the committed point at the onset
        chunk = chunk.copy()  # the read buffer is reused by the next step
        self._listen_worker.submit(lambda: self._hear(chunk, turn, listening, base))

    def _hear(self, chunk: np.ndarray, turn: int, listening: bool, base: LlmContext | None) -> None:
        """Listen stage: the chunk through the engines; a verdict when a turn is being heard."""
        listener = self.pipeline.listener
        if base is not None:
            listener.begin_turn(base)
            self._turn_of_listen = turn
        elif not listening and listener.listening:
            listener.end_turn()  # the gate closed or the head decided: the rest is not heard
        result = listener.hear(chunk)
        if result is not None:
            context = listener.context
            self._heard.put(_Heard(self._turn_of_listen, result, LlmContext(context.state, context.position,
                                                                            context.hidden)))

    def _act_on_verdicts(self) -> None:
        while True:
            try:
                heard = self._heard.get_nowait()
            except queue.Empty:
                return
            if heard.turn != self.turn:
                continue  # a late verdict on a turn that is over
            decision = self.policy.head(heard.result.probs)
            r = heard.result
            self._emit(ev.TURN_STATE, chunk=r.index, probs=[float(p) for p in r.probs], head=r.decision,
                       decision=decision.value, turn_start=r.turn_start, replayed=r.replayed,
                       llm_position=r.position, compute_s=r.compute_s)
            if decision is Decision.END_OF_TURN:
                self._respond(heard.context)
            elif decision is Decision.BARGE_IN:
                self._barge_in()
                self._respond(heard.context)
            elif decision is Decision.DISMISS:
                self._emit(ev.DISMISSED, reason="head", over_agent=self._current is not None)
                if self._current is not None:
                    self._emit(ev.BACKCHANNEL)

    # --- respond -----------------------------------------------------------------------------------

    def _respond(self, heard: LlmContext) -> None:
        """The user's turn is over: it becomes the committed point; the reply is written into a copy."""
        self._emit(ev.USER_SPEECH_END, speech_end=self.policy.last_speech)
        self.pipeline.commit(heard.fork())
        timing = ReplyTiming(time.perf_counter())
        self._emit(ev.TURN_TAKEN, llm_position=heard.position)
        gen = Generation()
        self._current, self._speaking = gen, False
        self._current_turn, self._current_timing = self.turn, timing
        self.jobs.start(gen, self.pipeline.conversation.fork(), self.turn, timing)

    def _barge_in(self) -> None:
        """Cancel every stage of the reply now; its context is dropped with it."""
        gen, self._current = self._current, None
        unplayed = self.io.speaker.readable
        self.io.flush_speaker()
        self._emit(ev.BARGE_IN, stage="cancel", unplayed_samples=unplayed)
        if gen is None:
            return
        gen.cancel()
        self._cancelled.append((gen, self._current_turn, self.pipeline.conversation.position))

    def _report_cancels(self) -> None:
        """``cancel_done`` once a cancelled reply's think and speak jobs have both stopped."""
        for entry in [c for c in self._cancelled if c[0].done.is_set()]:
            self._cancelled.remove(entry)
            gen, turn, committed = entry
            self._emit_turn(ev.CANCEL_DONE, turn, rolled_back_to=committed, played_samples=gen.reply.cursor,
                            written_samples=gen.reply.written)

    # --- speak -------------------------------------------------------------------------------------

    # The speaker feed is ListenLoop's; these say what a Freeze-Omni reply reports.

    def _first_audio(self) -> None:
        self.jobs.mark(ev.FIRST_AUDIO, self._current_turn, self._current_timing)

    def _agent_done(self, gen: Generation) -> None:
        self._emit_turn(ev.AGENT_DONE, self._current_turn, samples=gen.reply.written)

    # --- events ------------------------------------------------------------------------------------

    def _stage_failed(self, stage: str, exc: BaseException) -> None:
        self._emit(ev.WARNING, stage=stage, error=f"{type(exc).__name__}: {exc}")
        gen = self._current
        if gen is not None:
            gen.cancel()
            gen.reply.finish()
            gen.done.set()
