"""A full-duplex conversation over an AudioIO: listen, think, speak and act at once.

The **listen** loop (``step``, on the caller's thread) handles one 32 ms VAD frame at a time: read
the microphone with what the speaker played in the same instant, cancel the echo, score speech,
let the turn policy decide, hand work to the other stages, and keep the speaker ring topped up
from the current reply. It never waits for a model: **think** (ASR + LLM) and **speak** (TTS) run
as jobs on their own workers (``edgevoice.runtime.workers``), **act** (tools) in a thread pool.
The AudioIO's callback only copies between rings.

Think while listening (``SessionOptions.think_while_listening``): while the user speaks, partial
transcripts prefill the LLM with the words that have settled, and once they fall silent for
``speculate_after_ms`` the whole answer is prepared speculatively; when the endpoint confirms the
turn it is released to the speaker, and if the user goes on it is cancelled without a trace.
When that answer asks for a tool registered ``read_only=True``, the call starts right away and its
result waits for the committed turn: used if the final reply asks for the same call, dropped
otherwise (``edgevoice.runtime.early_tools``); a tool with side effects runs only after the commit.

Semantic endpointing: when the package has an end-of-turn model (``turn``), the policy asks for
a score once the user has been silent ``TurnOptions.eot_first_check_ms`` and again while the
model says "incomplete"; the scorer runs it on its own worker, so the listen loop only submits the
turn's last 8 s and picks the probability up a frame later (see ``edgevoice.runtime.turns``).
A thinking pause then does not end the turn, and a finished one is answered after ~0.2 s of
silence instead of 0.6 s. Without the model the VAD alone ends turns, and one ``warning`` says how
to re-export the package with it.

Backchannels (``SessionOptions.backchannels``, off by default): during a long user turn the agent
may say a quiet "mhm" at a pause the end-of-turn model calls incomplete (or, without the model, a
short VAD pause), within the limits of ``edgevoice.runtime.backchannel``. The clips are synthesized
once at start with the package's voice and written to the speaker ring like reply audio (so the
echo canceller gets them as reference); the user resuming flushes the ring as a barge-in pause
does. No LLM call, no history entry, no turn-policy change: the user keeps the floor.

With ``threaded=False`` the jobs run inline: on a ``FileIO`` over an unpaced virtual clock the
whole conversation is deterministic and faster than real time (compute takes no virtual time;
its wall-clock cost is in the events' ``compute_s``). Threads pair with a device or a paced FileIO.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field

import numpy as np

from edgevoice.audio.io import AudioIO
from edgevoice.audio.resample import resample
from edgevoice.runtime import events as ev
from edgevoice.runtime.backchannel import (
    BackchannelOptions,
    BackchannelScheduler,
    quiet_clip,
)
from edgevoice.runtime.cascade.pipeline import CascadePipeline
from edgevoice.runtime.cascade.thinking import CascadeThinker
from edgevoice.runtime.cascade.turn import EndOfTurnScorer, missing_model_notice
from edgevoice.runtime.early_tools import Fate
from edgevoice.runtime.events import EventBus
from edgevoice.runtime.loop import ListenLoop, first_audio_summary
from edgevoice.runtime.reply import Generation
from edgevoice.runtime.tools import ToolOutcome, ToolRunner
from edgevoice.runtime.turns import (
    Decision,
    SemanticTurnPolicy,
    TurnOptions,
    TurnState,
    VadTurnPolicy,
    elapsed_ms,
)
from edgevoice.runtime.workers import Worker

USER_MARGIN_S = 0.3  # audio kept before the detected onset, so the first word is not clipped


@dataclass(frozen=True)
class SessionOptions:
    """How the session listens, thinks and speaks."""

    turn: TurnOptions = field(default_factory=TurnOptions)
    echo_cancellation: bool = True  # clean the mic against what the speaker played (open speakers)
    speaker_lead_s: float = 0.08  # reply audio kept queued ahead of the speaker: what a pause must drop
    max_utterance_s: float = 28.0  # longer user speech is cut into turns (one Whisper window)
    think_while_listening: bool = True  # partial transcripts prefill the LLM; answers start in the endpoint silence
    partial_every_s: float = 1.0  # user speech between two partial transcripts
    # Silence after speech that starts a speculative answer: two VAD frames. Early, because the
    # answer (Whisper + LLM + voice, 0.5-0.8 s on 2 cores) must be ready by the decision, which waits
    # for TurnOptions.text_min_silence_ms (text_sure_min_silence_ms for sure words). The cost is
    # CPU: on read speech 2.2x as many answers start and are dropped as at 160 ms (about one per
    # second of speech), each stopped mid-transcript once the user goes on (its Whisper encoder call
    # too: ``Generation.abort``). 160 ms -> 64 ms: first audio 1.05 -> 0.95 s; 32 ms was ~20 ms
    # sooner still but fired read-only tool calls on half-said numbers (BENCHMARKS.md).
    speculate_after_ms: float = 64.0
    semantic_endpointing: bool = True  # end turns on the package's end-of-turn model when it has one
    # With semantic endpointing and think-while-listening: the speculative answer's transcript votes
    # too (``runtime/cascade/text_turn``), so unfinished words hold the turn the audio calls complete.
    text_endpointing: bool = True
    threaded: bool = True  # think and speak on worker threads (False: inline, deterministic on a virtual clock)
    backchannels: BackchannelOptions | None = None  # a quiet "mhm" at pauses of a long user turn; None: never

    def __post_init__(self) -> None:
        if self.backchannels is not None and self.backchannels.pause_ms >= self.turn.endpoint_silence_ms:
            raise ValueError("backchannels.pause_ms must be shorter than turn.endpoint_silence_ms, or the VAD "
                             "ends the turn before the pause is ever heard")
        if not self.think_while_listening:
            return
        if self.speculate_after_ms >= self.turn.endpoint_silence_ms:
            raise ValueError("speculate_after_ms must be shorter than the endpoint silence, or nothing is gained")
        if self.speculate_after_ms > self.turn.eot_first_check_ms:
            raise ValueError("speculate_after_ms must not be longer than turn.eot_first_check_ms: the answer should "
                             "be under way when the end-of-turn model first says the user is done")


class DuplexSession(ListenLoop):
    """One conversation with a cascade agent over ``io``."""

    def __init__(self, agent: CascadePipeline, io: AudioIO, options: SessionOptions = SessionOptions(),
                 events: EventBus | None = None, tools: ToolRunner | None = None):
        # One frame is one VAD chunk: 512 samples at 16 kHz.
        super().__init__(io, agent.vad.chunk_samples, options.echo_cancellation, events, options.speaker_lead_s)
        self.agent, self.options = agent, options
        self._vad = agent.vad.runner.stream()
        self._scorer = self._open_scorer(agent, io, options)
        words_vote = self._scorer is not None and options.think_while_listening and options.text_endpointing
        self.policy = SemanticTurnPolicy(options.turn, text_gate=words_vote) if self._scorer else VadTurnPolicy(options.turn)
        self._words: queue.SimpleQueue[tuple[float, float | None]] = queue.SimpleQueue()  # (speech_end, P) votes
        self._heard: list[np.ndarray] = []  # cleaned mic audio of the current user turn
        self._history: list[np.ndarray] = []  # the last ~USER_MARGIN_S of audio before an onset
        self._outcomes: queue.SimpleQueue[ToolOutcome] = queue.SimpleQueue()
        self.tools = tools or ToolRunner(self._outcomes.put)
        self._think = Worker("think", options.threaded, self._stage_failed)
        self._speak = Worker("speak", options.threaded, self._stage_failed)
        self._partials = Worker("partial", options.threaded, self._stage_failed)  # transcripts while the user speaks
        self.thinker = CascadeThinker(agent, self._think, self._speak, self._emit_turn, io.speaker_rate, self.tools,
                                      on_words=self._vote if words_vote else None)
        self._speculation: Generation | None = None  # an answer prepared before the endpoint
        self._cancelled: list[tuple[Generation, int, int]] = []  # (reply, its turn, words kept) until its stages stop
        self._tool_results_waiting = 0
        self._last_partial_at = 0.0
        self._incomplete = False  # this frame brought the end-of-turn model's "incomplete" verdict
        self._backchannel = self._backchannel_clips = None
        if options.backchannels is not None:
            self._backchannel = BackchannelScheduler(options.backchannels, self.frame / io.mic_rate)
            self._speak.submit(self._prepare_backchannels)  # once, before the user can have spoken 3 s
        if options.think_while_listening:
            self._think.submit(self.thinker.warm_up)

    def _open_scorer(self, agent: CascadePipeline, io: AudioIO, options: SessionOptions) -> EndOfTurnScorer | None:
        model = agent.turn_model if options.semantic_endpointing else None
        if model is None:
            if options.semantic_endpointing:
                notice = missing_model_notice(agent.manifest, options.turn.endpoint_silence_ms)
                self._emit(ev.WARNING, stage="turn", problem=notice)
            return None
        if model.sample_rate != io.mic_rate:
            raise ValueError(f"the end-of-turn model takes {model.sample_rate} Hz audio, the microphone gives "
                             f"{io.mic_rate} Hz; open the audio I/O at the package's rate")
        return EndOfTurnScorer(model, options.threaded, self._scoring_failed)

    # --- driving -----------------------------------------------------------------------------

    def _tick(self) -> None:
        self._act()
        self._feed_speaker()
        self._report_cancels()

    @property
    def idle(self) -> bool:
        """Nobody holds the floor and no stage has work: no reply, no tool call in flight."""
        return (self._current is None and self._speculation is None and not self._heard
                and self.policy.state is TurnState.LISTENING and self._think.idle and self._speak.idle
                and self._partials.idle and (self._scorer is None or self._scorer.idle)
                and self.tools.in_flight == 0 and self._tool_results_waiting == 0 and self._outcomes.empty()
                and not self.thinker.early.pending)

    def _recipe_summary(self) -> dict:
        summary = {"tool_calls": len(self.events.history(ev.TOOL_CALL)),
                   "early_tool_calls": len([e for e in self.events.history(ev.TOOL_CALL) if e.data.get("early")]),
                   "early_tool_calls_used": len(self.events.history(ev.EARLY_TOOL_USED))}
        return {**summary, **first_audio_summary(self.io, self.events.history())}

    def close(self) -> None:
        """Stop every stage: cancel the reply, end the workers, drop pending tool calls."""
        for gen in (self._current, self._speculation):
            if gen is not None:
                gen.cancel()
        self._partials.stop()
        if self._scorer is not None:
            self._scorer.stop()
        self._think.stop()
        self._speak.stop()
        self.tools.shutdown()

    # --- listen --------------------------------------------------------------------------------

    def _listen(self, frame: np.ndarray) -> None:
        now = self.io.clock.now()
        # Our own backchannel without echo cancellation: the frame is neither the user's speech nor
        # their silence, so the policy does not see it and the transcript gets zeros.
        deaf = self._backchannel is not None and self._backchannel.deaf(now)
        if deaf:
            frame = np.zeros_like(frame)
        prob = float(self._vad({"chunk": frame[None]})["prob"].item())
        decision = Decision.NONE if deaf else self.policy.update(now, prob, self.level)
        self._keep_audio(frame, decision)
        self._incomplete = False
        if self._scorer is not None and decision is Decision.NONE and not deaf:
            decision = self._score_turn(now)
        if decision is Decision.NONE and not deaf:
            decision = self._hear_words(now)
        self._act_on(decision)
        if self.policy.state is TurnState.USER_SPEAKING:
            self._think_while_listening(now)
        if self._backchannel is not None and not deaf:
            speech = prob >= self.options.turn.threshold and self.level >= self.options.turn.min_level
            self._backchannel_step(now, speech, decision)

    def _act_on(self, decision: Decision) -> None:
        if decision is Decision.USER_STARTED:
            self.turn += 1
            self.thinker.early.abandon(self.turn - 1, "turn ended")  # nothing found early outlives its turn
            self._last_partial_at = self.io.clock.now()
            self._emit(ev.USER_SPEECH_START, speech_start=self.policy.speech_start)
        elif decision is Decision.END_OF_TURN:
            end = self.policy.turn_end
            judged = {"silence_ms": round(end.silence_ms, 1), "eot_prob": end.eot_prob, "text_eot_prob": end.text_prob,
                      "endpoint": end.by}
            self._emit(ev.USER_SPEECH_END, speech_end=self.policy.last_speech, **judged)
            self._take_turn(judged)
        elif decision is Decision.DISMISS:
            self._drop_speculation()
            self.thinker.early.abandon(self.turn, "turn dismissed")
            self._heard.clear()
        elif decision is Decision.PAUSE:
            self._pause()
        elif decision is Decision.RESUME:
            self._emit(ev.BACKCHANNEL)
            self._heard.clear()
        elif decision is Decision.BARGE_IN:
            self._barge_in()
            self.thinker.early.abandon(self.turn, "barge-in")
            self.turn += 1
            self._emit(ev.USER_SPEECH_START, speech_start=self.policy.speech_start)

    def _score_turn(self, now: float) -> Decision:
        """Hand the policy's score request to the scorer; feed it the scores that are ready."""
        request = self.policy.score_wanted
        if request is not None:
            self._scorer.submit(request, self._recent_audio(self._scorer.model.window_samples))
        decision = Decision.NONE
        for done, prob in self._scorer.finished():  # inline: this frame's score; threaded: earlier frames'
            verdict = self.policy.score(now, done, prob)
            if verdict is not Decision.NONE:
                decision = verdict
            elif prob < self.options.turn.eot_threshold and self.policy.state is TurnState.USER_SPEAKING \
                    and done.speech_end == self.policy.last_speech:
                self._incomplete = True  # a fresh "not done yet": a pause a listener may answer with "mhm"
        return decision

    def _vote(self, speech_end: float, prob: float | None) -> None:
        self._words.put((speech_end, prob))  # from the think worker; heard by the listen loop's next frame

    def _hear_words(self, now: float) -> Decision:
        """Feed the policy the words' votes the speculative answers made since the last frame."""
        decision, heard = Decision.NONE, False
        while True:
            try:
                speech_end, prob = self._words.get_nowait()
            except queue.Empty:
                break
            heard = True
            verdict = self.policy.text_score(now, speech_end, prob)
            if verdict is not Decision.NONE:
                decision = verdict
        if heard and decision is Decision.NONE and self.policy.words_unfinished:
            self._incomplete = True  # unfinished words: a pause a listener may answer with "mhm"
        return decision

    def _recent_audio(self, samples: int) -> np.ndarray:
        """The last ``samples`` of the user's turn (fewer when it is shorter)."""
        frames, total = [], 0
        for frame in reversed(self._heard):
            frames.append(frame)
            total += frame.size
            if total >= samples:
                break
        return np.concatenate(frames[::-1])[-samples:] if frames else np.zeros(0, np.float32)

    def _keep_audio(self, frame: np.ndarray, decision: Decision) -> None:
        """Collect the user's speech: a little audio before the onset, everything after it."""
        frame = frame.copy()  # the read buffer is reused by the next step
        in_user_speech = self.policy.speech_start is not None and (
            self.policy.state is TurnState.USER_SPEAKING or self.policy.paused
        )
        if in_user_speech or decision in (Decision.USER_STARTED, Decision.PAUSE, Decision.END_OF_TURN):
            if not self._heard:
                self._heard.extend(self._history)
            self._heard.append(frame)
        keep = max(1, int(USER_MARGIN_S * self.io.mic_rate / self.frame))
        self._history = (self._history + [frame])[-keep:]
        limit = int(self.options.max_utterance_s * self.io.mic_rate / self.frame)
        if len(self._heard) > limit:  # a monologue: answer what fits in one ASR window
            del self._heard[: len(self._heard) - limit]

    # --- think ---------------------------------------------------------------------------------

    def _think_while_listening(self, now: float) -> None:
        if not self.options.think_while_listening or not self._heard:
            return
        last = self.policy.last_speech or now
        silence_ms = elapsed_ms(last, now)
        spec = self._speculation
        if spec is not None and spec.audio_key != last:  # the user went on: that answer is stale
            self._drop_speculation()
            spec = None
        if silence_ms >= self.options.speculate_after_ms and spec is None:
            self._speculation = self._start_answer(speculative=True, audio_key=last)
        elif silence_ms < self.options.speculate_after_ms and self._partials.idle and self._think.idle and \
                now - self._last_partial_at >= self.options.partial_every_s:
            self._last_partial_at = now
            audio, turn = np.concatenate(self._heard), self.turn
            self._partials.submit(lambda: self.thinker.partial(audio, self.io.mic_rate, turn))

    def _take_turn(self, judged: dict) -> None:
        self._emit(ev.TURN_TAKEN, **judged)
        spec, self._speculation = self._speculation, None
        if spec is not None and not spec.cancelled.is_set():
            self.thinker.release(spec)  # the answer prepared in the silence gets the floor
            self._current = spec
        else:
            self._current = self._start_answer(speculative=False)
        self._heard.clear()
        self._speaking = False

    def _start_answer(self, speculative: bool, audio_key: float = 0.0) -> Generation:
        gen = Generation(speculative=speculative)
        gen.audio_key = audio_key  # before the job starts: an inline job reads it at once
        audio = np.concatenate(self._heard) if self._heard else np.zeros(0, np.float32)
        turn = self.turn
        self._think.submit(lambda: self.thinker.answer(gen, audio, self.io.mic_rate, turn))
        return gen

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation.cancel()
            self._speculation = None

    # --- act -----------------------------------------------------------------------------------

    def _act(self) -> None:
        """Tool outcomes that arrived join the conversation; the agent speaks when the floor is free."""
        for outcome in self._arrived_tool_outcomes_early() + self.thinker.early.take_ready():
            self.thinker.add_tool_outcome(outcome)
            self._tool_results_waiting += 1
        if self._tool_results_waiting and self._current is None and self.policy.state is TurnState.LISTENING:
            self._tool_results_waiting = 0
            self.policy.agent_takes_floor()
            gen, turn = Generation(), self.turn
            self._current, self._speaking = gen, False
            self._think.submit(lambda: self.thinker.follow_up(gen, turn))

    def _arrived_tool_outcomes_early(self) -> list[ToolOutcome]:
        """Outcomes the runner finished, each reported as its event with ``early``; an early call's
        outcome is kept for its turn (or ignored once dropped) instead of joining the conversation."""
        arrived = []
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                return arrived
            fate = self.thinker.early.arrived(outcome)
            kind = ev.TOOL_RESULT if outcome.ok else ev.TOOL_ERROR
            self._emit(kind, name=outcome.call.name, call_id=outcome.call.call_id, seconds=outcome.seconds,
                       early=fate is not Fate.NORMAL, **outcome.answer())
            if fate in (Fate.NORMAL, Fate.USE):
                arrived.append(outcome)

    # --- speak ---------------------------------------------------------------------------------

    # The speaker feed is ListenLoop's.

    def _pause(self) -> None:
        """Possible interruption: stop the audio now, keep the reply to resume from where it stopped."""
        unplayed = self.io.speaker.readable
        self.io.flush_speaker()
        if self._current is not None:
            self._current.reply.rewind(unplayed)
        self._emit(ev.BARGE_IN, stage="pause")

    def _barge_in(self) -> None:
        """The user took the floor: cancel every stage, remember only what was said."""
        gen, self._current = self._current, None
        if gen is None:
            return
        gen.cancel()
        said = gen.reply.spoken_text(gen.reply.cursor)
        self.thinker.barge_in(gen, said)
        self._cancelled.append((gen, self.turn, len(said.split())))

    def _report_cancels(self) -> None:
        """``cancel_done`` once the think and speak stages of a cancelled reply have both stopped."""
        for entry in [c for c in self._cancelled if c[0].done.is_set()]:
            self._cancelled.remove(entry)
            gen, turn, kept = entry
            self._emit_turn(ev.CANCEL_DONE, turn, kept_words=kept, of_words=len(gen.text.split()))

    # --- backchannel ---------------------------------------------------------------------------

    def _prepare_backchannels(self) -> None:
        """Synthesize every phrase once, quiet and at the speaker rate (speak job at start).

        A voice session of its own, so the replies' noise stream is the same with and without them.
        """
        options, voice = self.options.backchannels, self.agent.voice
        tts = voice.session(seed=0)
        self._backchannel_clips = {
            phrase: quiet_clip(resample(tts.synthesize(phrase), voice.sample_rate, self.io.speaker_rate), options.gain)
            for phrase in options.phrases
        }

    def _backchannel_step(self, now: float, speech: bool, decision: Decision) -> None:
        """Cut the clip if the user resumed; at a pause of their turn, maybe play one."""
        scheduler = self._backchannel
        if decision in (Decision.USER_STARTED, Decision.BARGE_IN):
            scheduler.start_turn()
        if self.policy.state is not TurnState.USER_SPEAKING:
            return
        if scheduler.hear(now, speech):
            self.io.flush_speaker()  # the user goes on: not a word over them
            self._emit(ev.AGENT_BACKCHANNEL, stage="cut")
            return
        if not self._backchannel_clips or self.io.speaker.readable or self.policy.last_speech is None:
            return
        silence_ms = elapsed_ms(self.policy.last_speech, now)
        phrase = scheduler.offer(now, silence_ms, self._incomplete if self._scorer is not None else None)
        if phrase is None:
            return
        clip = self._backchannel_clips[phrase]
        self.io.speaker.write(clip)
        duration = clip.size / self.io.speaker_rate
        scheduler.played(now, duration, echo_cancellation=self._echo is not None)
        self._emit(ev.AGENT_BACKCHANNEL, stage="start", text=phrase, duration_s=round(duration, 3))

    # --- events --------------------------------------------------------------------------------

    def _scoring_failed(self, stage: str, exc: BaseException) -> None:
        # The reply in flight is not at fault: without a score the turn is taken at eot_max_silence_ms.
        self._emit(ev.WARNING, stage=stage, error=f"{type(exc).__name__}: {exc}")

    def _replies_in_flight(self) -> list[Generation]:
        return [gen for gen in (self._current, self._speculation) if gen is not None]

