"""A full-duplex conversation with a Freeze-Omni package: the turn-state head takes the turns.

The **listen** loop (``step``, on the caller's thread) handles one 160 ms chunk at a time: read the
microphone with what the speaker played in the same instant, cancel the echo, let the acoustic
gate decide whether the LLM should hear it (``HeadTurnPolicy``), and hand the chunk to the listen
stage. It never waits for a model: the listen stage (front end, encoder, adapter, LLM + head) runs
on its own worker, and its verdicts come back through a queue the loop drains; think (LLM reply)
and speak (speech decoder + codec) run as step jobs (``edgevoice.runtime.freeze_omni.reply``).

A user turn is heard into a fork of the committed conversation. When the head says "respond",
that fork becomes the committed point and the reply is written into a copy of it; a reply that
finishes becomes the next committed point. A turn that starts over a reply is heard on top of
that reply as far as it got (``FoSessionOptions.barge_in_keeps``: what was generated, as the
reference server does, or only what the speaker played); the turn prefix starts with the
end-of-turn id, which closes it. A barge-in ("respond" while the agent holds the floor) cancels
the reply's decode and speech at their next step, flushes the speaker, and answers the new turn
from its own fork, so the next answer knows what it was saying when it was cut off. A dismissed
turn (a backchannel) leaves nothing: the reply goes on and commits as usual.

The gate runs the package's Silero VAD when it has one (the reference's rule), else chunk energy.

Tools (``tools=``, as ``Agent.tool`` registers them) follow the cascade's mechanism: the system
prompt lists them, a call in the reply text is withheld from speech and run in the background
(``edgevoice.runtime.freeze_omni.tools``), and its result, once the floor is free (no reply, the
user not speaking), is fed in as a ``tool`` turn and answered by a follow-up reply.

With ``threaded=False`` on an unpaced ``FileIO`` every stage runs inline and the conversation is
deterministic: listening costs no virtual time, and a reply advances a fixed number of engine
steps per chunk (``FoSessionOptions.inline_*``), standing in for the engines' speed.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from edgevoice.audio.io import AudioIO
from edgevoice.errors import EdgevoiceError
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import EventBus
from edgevoice.runtime.freeze_omni.head_policy import HeadTurnOptions, HeadTurnPolicy, level_db
from edgevoice.runtime.freeze_omni.listen import ChunkResult, LlmContext
from edgevoice.runtime.freeze_omni.pipeline import FreezeOmniPipeline
from edgevoice.runtime.freeze_omni.reply import FoReplyJobs, ReplyTiming
from edgevoice.runtime.freeze_omni.tools import tool_turns_ids
from edgevoice.runtime.loop import ListenLoop
from edgevoice.runtime.reply import Generation
from edgevoice.runtime.tools import Tool, ToolOutcome, ToolRunner
from edgevoice.runtime.turns import Decision, TurnState
from edgevoice.runtime.workers import Stepper, Worker


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
    # A turn that starts over a reply is heard on top of: "generated" (every reply token written by
    # then, as the reference server), "heard" (the tokens of what the speaker played by then, as the
    # cascade keeps what was heard), or "none" (the committed point: the reply is forgotten).
    barge_in_keeps: str = "generated"
    # What opens the gate: "auto" (the package's Silero VAD, else chunk energy with a notice), "vad" or "energy".
    gate: str = "auto"
    system_prompt: str | None = None  # replaces the pipeline's for this conversation (None: keep it)

    def __post_init__(self) -> None:
        if self.gate not in ("auto", "vad", "energy"):
            raise ValueError(f"gate must be 'auto', 'vad' or 'energy', got {self.gate!r}")
        if self.barge_in_keeps not in BARGE_IN_KEEPS:
            raise ValueError(f"barge_in_keeps must be one of {', '.join(BARGE_IN_KEEPS)}, got {self.barge_in_keeps!r}")
        if self.speaker_lead_s <= self.head.chunk_ms / 1000:
            raise ValueError(f"speaker_lead_s must exceed one chunk ({self.head.chunk_ms:g} ms) or the speaker runs dry")
        if self.inline_llm_steps < 1 or self.inline_speech_steps < 1:
            raise ValueError("inline_llm_steps and inline_speech_steps must be at least 1")


BARGE_IN_KEEPS = ("generated", "heard", "none")


def _reply_start(context: LlmContext) -> int:
    """Position where the reply at the end of ``context`` begins (its response prefix); its end if none."""
    start = context.position
    for entry_start, kind, _ in reversed(context.entries()):
        if kind != "reply":
            break
        start = entry_start
    return start


class _CountingJobs(FoReplyJobs):
    """Reply jobs that remember how many LLM tokens each voiced segment holds, in order, per reply:
    the phrase marks of the reply audio then say how many tokens the listener heard."""

    def __init__(self, *args):
        super().__init__(*args)
        self.segment_tokens: dict[int, list[int]] = {}  # Generation.id -> tokens of segment 0, 1, ...

    def _voice(self, gen, segment, turn, timing, resampler):
        self.segment_tokens.setdefault(gen.id, []).append(len(segment.ids))
        return super()._voice(gen, segment, turn, timing, resampler)

    def heard_tokens(self, gen: Generation, played: int) -> int:
        """Reply tokens the listener heard after ``played`` samples: whole phrases, then the played
        share of the current one (by tokens)."""
        counts, heard = self.segment_tokens.get(gen.id, []), 0
        for phrase, count in zip(list(gen.reply.phrases), counts):
            if played >= phrase.end:
                heard += count
            elif played > phrase.start:
                heard += int(count * (played - phrase.start) / max(1, phrase.end - phrase.start))
        return heard


@dataclass(frozen=True)
class _Heard:
    """A listen-stage verdict on its way back to the listen loop."""

    turn: int
    result: ChunkResult
    context: LlmContext  # the turn's context right after this chunk (arrays are never written in place)


class FreezeOmniSession(ListenLoop):
    """One conversation with a Freeze-Omni agent over ``io``; same surface as ``DuplexSession``."""

    def __init__(self, pipeline: FreezeOmniPipeline, io: AudioIO, options: FoSessionOptions = FoSessionOptions(),
                 events: EventBus | None = None, policy: HeadTurnPolicy | None = None, tools: Iterable[Tool] = ()):
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
        self._outcomes: queue.SimpleQueue[ToolOutcome] = queue.SimpleQueue()
        self._results: list[ToolOutcome] = []  # outcomes waiting for the floor to be free
        self.tools = ToolRunner(self._outcomes.put)
        for tool in tools:
            self.tools.register(tool)
        self.jobs = _CountingJobs(pipeline, self._think, self._speak, self._emit_turn, io.speaker_rate, self.tools)
        # A session is a new conversation: the system prompt (and what it says about tools) prefilled again.
        pipeline.reset(options.system_prompt, tools_prompt=self.tools.prompt() if self.tools.tools else "")
        if options.gate == "vad" and pipeline.vad is None:
            raise EdgevoiceError("this package has no vad component to gate with; re-export it with this edgevoice "
                                 "or use gate='energy'")
        use_vad = pipeline.vad is not None and options.gate != "energy"
        self._vad = pipeline.vad.runner.stream() if use_vad else None  # this session's VAD state
        self._onset_kept = 0  # reply tokens the newest turn is heard on top of
        self._reply_context: LlmContext | None = None  # the context the current reply is written into
        self._current_turn, self._current_timing = 0, ReplyTiming(0.0)  # the reply's user turn and latency clock
        self._cancelled: list[tuple[Generation, int, int]] = []  # (reply, its turn, its tokens the next turn kept)
        self._turn_of_listen = 0  # the user turn the listen stage is hearing
        if self._vad is None and options.gate == "auto":
            self._emit(ev.WARNING, stage="gate", error="this package has no vad component, so the gate opens on "
                       "chunk energy; re-export it with this edgevoice for Silero gating")

    # --- driving ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        self._act_on_verdicts()
        self._act()
        self._think.tick()
        self._speak.tick()
        self._feed_speaker()
        self._report_cancels()

    @property
    def idle(self) -> bool:
        """Nobody holds the floor and no stage has work."""
        return (self._current is None and not self.policy.listening and self.policy.state is TurnState.LISTENING
                and self._listen_worker.idle and self._think.idle and self._speak.idle and self._heard.empty()
                and self.tools.in_flight == 0 and not self._results and self._outcomes.empty())

    def _recipe_summary(self) -> dict:
        """Dismissed turns, chunks heard and the respond-latency breakdown (median per stage)."""
        stages: dict[str, list[float]] = {}
        for marks in ev.respond_breakdown(self.events.history()).values():
            for kind, seconds in marks.items():
                stages.setdefault(kind, []).append(seconds)
        return {
            "dismissed": len(self.events.history(ev.DISMISSED)),
            "tool_calls": len(self.events.history(ev.TOOL_CALL)),
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
        self.tools.shutdown()

    # --- listen ----------------------------------------------------------------------------------

    def _listen(self, chunk: np.ndarray) -> None:
        """The gate decides on the loop's thread; the engines hear the chunk on the listen stage."""
        decision = self._gate(chunk)
        begin = decision is Decision.USER_STARTED
        base = None  # forked on the listen stage: the point at the onset
        if begin:
            self.turn += 1
            base, self._onset_kept = self._turn_base()
            self._emit(ev.USER_SPEECH_START, speech_start=self.policy.speech_start, over_agent=self.policy.overlap,
                       on_top_of=base.position)
        elif decision is Decision.DISMISS:
            self._emit(ev.USER_SPEECH_END, speech_end=self.policy.last_speech)
            self._emit(ev.DISMISSED, reason="gate closed before the head decided")
        listening, turn = self.policy.listening, self.turn
        chunk = chunk.copy()  # the read buffer is reused by the next step
        self._listen_worker.submit(lambda: self._hear(chunk, turn, listening, base))

    def _gate(self, chunk: np.ndarray) -> Decision:
        """The policy's gate on this chunk: Silero's probability of each of its pieces, else its level."""
        if self._vad is None:
            return self.policy.gate(self.io.clock.now(), level_db(chunk))
        vad = self.pipeline.vad
        pieces = chunk.reshape(-1, vad.chunk_samples)  # (5, 512): a listen chunk is whole VAD chunks
        probs = [float(self._vad({vad.input_name: piece[None]})[vad.output_name].item()) for piece in pieces]
        return self.policy.gate_speech(self.io.clock.now(), probs)

    def _turn_base(self) -> tuple[LlmContext, int]:
        """What a turn starting now is heard on top of -- the committed point, or the reply that holds the
        floor as far as it got (``barge_in_keeps``) -- and how many reply tokens that keeps."""
        gen, reply = self._current, self._reply_context
        if gen is None or reply is None or self.options.barge_in_keeps == "none":
            return self.pipeline.conversation, 0
        written = self.pipeline.llm.snapshot(reply)
        first_token = _reply_start(written) + len(self.pipeline.llm.facts.response_prefix_ids)
        tokens = written.position - first_token  # by the log: positions move when a full cache is trimmed
        if self.options.barge_in_keeps == "heard":
            played = max(0, gen.reply.cursor - self.io.speaker.readable)
            tokens = min(tokens, self.jobs.heard_tokens(gen, played))
        if tokens <= 0:
            return self.pipeline.conversation, 0  # nothing of the reply yet
        return written.at(first_token + tokens), tokens

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
            self._heard.put(_Heard(self._turn_of_listen, result, context.view()))

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
        reply = self.pipeline.conversation.fork()
        self._reply_context = reply
        self.jobs.start(gen, reply, self.turn, timing)

    # --- act -------------------------------------------------------------------------------------

    def _act(self) -> None:
        """Tool outcomes that arrived are reported; once the floor is free, they are fed in and answered."""
        self._results.extend(self._arrived_tool_outcomes(self._outcomes))
        floor_free = self._current is None and not self.policy.listening and self.policy.state is TurnState.LISTENING
        if not self._results or not floor_free:
            return
        ids, self._results = tool_turns_ids(self.pipeline.tokenizer, self._results), []
        self.policy.agent_takes_floor()
        gen, timing = Generation(), ReplyTiming(time.perf_counter())
        self._current, self._speaking = gen, False
        self._current_turn, self._current_timing = self.turn, timing
        reply = self.pipeline.conversation.fork()
        self._reply_context = reply
        self.jobs.follow_up(gen, reply, ids, self.turn, timing)

    def _barge_in(self) -> None:
        """Cancel every stage of the reply now; the new turn was heard on top of what it kept of it."""
        gen, self._current = self._current, None
        unplayed = self.io.speaker.readable
        self.io.flush_speaker()
        if gen is not None:  # as the cascade: what the listener heard of the reply, by whole phrases' words
            gen.said = gen.reply.spoken_text(max(0, gen.reply.cursor - unplayed))
        self._emit(ev.BARGE_IN, stage="cancel", unplayed_samples=unplayed, said=None if gen is None else gen.said)
        if gen is None:
            return
        gen.cancel()
        self._cancelled.append((gen, self._current_turn, self._onset_kept))

    def _report_cancels(self) -> None:
        """``cancel_done`` once a cancelled reply's think and speak jobs have both stopped."""
        for entry in [c for c in self._cancelled if c[0].done.is_set()]:
            self._cancelled.remove(entry)
            gen, turn, kept = entry
            self._emit_turn(ev.CANCEL_DONE, turn, kept_reply_tokens=kept, played_samples=gen.reply.cursor,
                            written_samples=gen.reply.written)
            self.jobs.segment_tokens.pop(gen.id, None)

    # --- speak -------------------------------------------------------------------------------------

    # The speaker feed is ListenLoop's; these say what a Freeze-Omni reply reports.

    def _first_audio(self) -> None:
        self.jobs.mark(ev.FIRST_AUDIO, self._current_turn, self._current_timing)

    def _agent_done(self, gen: Generation) -> None:
        self.jobs.segment_tokens.pop(gen.id, None)
        self._emit_turn(ev.AGENT_DONE, self._current_turn, samples=gen.reply.written)
