"""The think and speak stages of a cascade conversation, run on their own workers.

- think: transcribe the user's turn, let the LLM write the reply token by token, cut it into
  phrases, start tool calls it asks for; while the user still speaks, transcribe what is there
  (partial transcripts) and prefill the LLM with the words that have stopped changing.
- act before the turn ends: a speculative answer (made in the user's pause) that asks for a
  read-only tool starts the call at once (``edgevoice.runtime.early_tools`` keeps its result for
  the committed reply); a call of a tool with side effects waits until the answer is released.
- speak: synthesize each phrase and append its audio (at the speaker rate) to the reply, which
  the listen loop plays.

Every job checks its ``Generation``'s cancel flag between tokens and between audio pieces, so a
barge-in stops both stages within one token or one clause.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgevoice.audio.resample import StreamingResampler
from edgevoice.backends.abort import Abort
from edgevoice.runtime import events as ev
from edgevoice.runtime.cascade.asr import Transcript
from edgevoice.runtime.cascade.phrases import phrase_cut
from edgevoice.runtime.cascade.pipeline import CascadePipeline, prompt_messages
from edgevoice.runtime.cascade.text_turn import end_token_ids, without_trailing_punctuation
from edgevoice.runtime.early_tools import EarlyToolCalls
from edgevoice.runtime.knowledge import Recall
from edgevoice.runtime.reply import Generation
from edgevoice.runtime.tools import ToolCall, ToolOutcome, ToolRunner, split_tool_text
from edgevoice.runtime.workers import Worker

Emit = Callable[..., None]
# The longest the reply's LLM waits for the voice's first audio (0: never waits).
YIELD_TO_VOICE_MAX_S = 1.0
WordsVerdict = Callable[[float, "float | None"], None]  # (speech_end, P(the words end the turn) or None)
_MARK = "\u2063"  # an invisible separator: where the partial user text ends in a rendered prompt


@dataclass
class _Unreleased:
    """The tool calls a speculative answer wrote before it was released (run or claimed at release)."""

    gen: Generation
    turn: int
    calls: list[tuple[ToolCall, float]] = field(default_factory=list)  # with the LLM seconds until written
    written: bool = False  # its generation ended: every call it will ask for is in ``calls``


class CascadeThinker:
    """Think/speak jobs over one ``CascadePipeline``; the session decides when they run."""

    def __init__(self, agent: CascadePipeline, think: Worker, speak: Worker, emit: Emit,
                 speaker_rate: int, tools: ToolRunner | None = None, on_words: WordsVerdict | None = None):
        self.agent, self.think, self.speak, self._emit = agent, think, speak, emit
        self.speaker_rate, self.tools = speaker_rate, tools
        self.on_words = on_words  # set: each speculative answer scores its transcript's end of turn
        self._end_ids: list[int] | None = None  # the tokens that end the user's words (text_turn)
        self._history_lock = threading.Lock()  # history is written by think jobs and by barge-in
        self._last_partial: tuple[int, list[str]] = (0, [])  # (turn, words) of the latest partial transcript
        # (turn, Whisper tokens) of the latest whole transcript of the turn's audio so far: the next
        # transcript of the grown audio is checked against it in one decoder call (``WhisperAsr.decode``).
        self._draft: tuple[int, tuple[int, ...]] = (0, ())
        self._answers_begun = 0  # answer jobs that reached Whisper: a partial still transcribing then stops
        self._recall: tuple[int, Recall | None] = (0, None)  # (turn, passages) the knowledge memory found for it
        self.early = EarlyToolCalls(tools, emit) if tools is not None else None
        self._unreleased: dict[int, _Unreleased] = {}  # by reply id; guarded by the history lock

    # --- jobs the session submits -------------------------------------------------------------

    def warm_up(self) -> None:
        """Prefill the system prompt and history before the user speaks (think job)."""
        self.agent.llm.prepare(self._prefix_ids(""))
        if self.tools is not None and self.tools.tools:
            self.agent.llm.tokenizer.pieces()  # the tool grammar's token table (~0.15 s), off the first reply's path

    def partial(self, audio: np.ndarray, rate: int, turn: int) -> None:
        """Think while listening (partial job, on its own worker): a partial transcript; its stable
        words are prefilled into the LLM by a short think job, so that at the end of the turn only
        the tail is left to prefill.

        Partials run beside the think stage, not in its queue: an answer that starts while a
        partial is still being transcribed must not wait for it (measured: up to 0.6 s on 2 cores).
        """
        started, answers = time.perf_counter(), self._answers_begun
        # An answer that begins meanwhile transcribes this audio and more, and is on the critical
        # path: the partial stops and yields the cores to it.
        heard = self.transcribe_turn(audio, rate, turn, stop=lambda: self._answers_begun != answers)
        if heard.stopped:
            return
        text = heard.text.strip()
        words = text.split()
        previous = self._last_partial[1] if self._last_partial[0] == turn else []
        stable = _common_prefix(previous, words)[:-1]  # the last word may still change
        self._last_partial = (turn, words)
        self._emit(ev.PARTIAL_TRANSCRIPT, turn=turn, text=text, stable_words=len(stable),
                   compute_s=time.perf_counter() - started)
        recall = self._recall_while_listening(text, turn)
        if len(stable) >= 2 and self.think.idle:  # never queue in front of an answer
            ids = self._prefix_ids(" ".join(stable), recall)
            self.think.submit(lambda: self.agent.llm.prepare(ids))

    def answer(self, gen: Generation, audio: np.ndarray, rate: int, turn: int) -> None:
        """Transcribe the turn and speak the reply (think job)."""
        self._forget_cancelled()
        if gen.cancelled.is_set():  # dropped while queued (the user spoke on): nothing to transcribe
            self._no_words(gen)
            return
        started = time.perf_counter()
        self._answers_begun += 1  # one writer (the think worker); partials only compare it
        # A speculation the user talks over is dropped mid-transcript: its encoder call and decoder
        # steps stop at once, so the next silence's answer does not queue behind a stale one.
        heard = self.transcribe_turn(audio, rate, turn, stop=gen.cancelled.is_set, abort=gen.abort) if audio.size else None
        transcript = heard.text.strip() if heard is not None and not heard.stopped else ""
        gen.transcript = transcript
        if heard is None or not heard.stopped:  # an empty transcript tells clients no answer follows
            self._emit(ev.TRANSCRIPT, turn=turn, text=transcript, speculative=gen.speculative, reply=gen.id,
                       compute_s=time.perf_counter() - started, drafted=heard.drafted if heard is not None else 0)
        if not transcript or gen.cancelled.is_set():
            self._no_words(gen)
            return
        user = {"role": "user", "content": transcript}
        recall = self._recall_for_answer(transcript, turn)
        messages = self._context(user, recall=recall)
        if gen.speculative and self.on_words is not None:
            self._score_words(gen, transcript, recall, turn, messages)
        self._generate(gen, messages, [user], turn)

    def transcribe_turn(self, audio: np.ndarray, rate: int, turn: int, stop: Callable[[], bool] | None = None,
                        abort: Abort | None = None) -> Transcript:
        """Whisper on the turn's audio so far, drafted by the turn's previous transcript: the words
        already heard are verified in one decoder call instead of one step each (~10 ms a token)."""
        drafted_turn, draft = self._draft
        heard = self.agent.asr.transcribe(audio, rate, stop=stop, draft=draft if drafted_turn == turn else (),
                                          abort=abort)
        if not heard.stopped:
            self._draft = (turn, heard.tokens)
        return heard

    def _no_words(self, gen: Generation) -> None:
        """End ``gen`` without a reply; a speculation still owes the policy its (empty) vote."""
        if gen.speculative and self.on_words is not None:
            self.on_words(gen.audio_key, None)  # no words: the audio model decides alone
        self._finish(gen)

    def follow_up(self, gen: Generation, turn: int) -> None:
        """Speak about tool results that arrived since the last reply (think job)."""
        recalled_turn, recall = self._recall
        self._generate(gen, self._context(recall=recall if recalled_turn == turn else None), [], turn)

    def add_tool_outcome(self, outcome: ToolOutcome) -> None:
        """A tool's result (or failure) joins the conversation as a ``tool`` message."""
        with self._history_lock:
            self.agent.history.append({"role": "tool", "content": outcome.message()})

    def release(self, gen: Generation) -> None:
        """The turn ended as ``gen`` (a speculative answer) assumed: it may play and join the history,
        and the tool calls it wrote are now the committed turn's: run (or taken from the early ones)."""
        with self._history_lock:
            gen.released.set()
            if gen.pending_history is not None:
                self.agent.history.extend(gen.pending_history)
                gen.history_index = len(self.agent.history) - 1
                gen.pending_history = None
            held = self._unreleased.pop(gen.id, None)
        if held is None:
            return
        for call, llm_s in held.calls:
            self.early.commit(call, held.turn, gen.id, llm_s)
        if held.written:
            self.early.settle(held.turn)

    def barge_in(self, gen: Generation, said: str) -> None:
        """Keep only what the listener heard of ``gen``'s reply as the agent's turn (listen thread)."""
        with self._history_lock:
            gen.said = said
            index = gen.history_index
            if index is not None and index < len(self.agent.history):
                self.agent.history[index] = {"role": "assistant", "content": said}

    # --- inside the think job -------------------------------------------------------------------

    def _generate(self, gen: Generation, messages: list[dict[str, str]], new: list[dict[str, str]], turn: int) -> None:
        llm, agent = self.agent.llm, self.agent
        raw, spoken_upto, phrases, started_calls, first = "", 0, 0, 0, True
        first_phrase_s = None  # LLM seconds until the first phrase went to the voice (the critical path)
        t0 = time.perf_counter()
        resampler = StreamingResampler(agent.voice.sample_rate, self.speaker_rate)
        # Registered tools: the router may force a call, and a call is decoded under their grammar.
        constraint = self.tools.constraint(messages) if self.tools is not None else None
        for token in llm.generate(messages, max_new_tokens=agent.max_new_tokens, sampling=agent.sampling, commit=False,
                                  constraint=constraint):
            if gen.cancelled.is_set():
                break
            if first:
                first = False
                self._emit(ev.FIRST_TOKEN, turn=turn, compute_s=time.perf_counter() - t0)
            raw += token.text
            speakable, calls = split_tool_text(raw)
            for call in calls[started_calls:]:
                self._ask_tool(gen, call, turn, time.perf_counter() - t0)
            started_calls = len(calls)
            cut = phrase_cut(speakable, spoken_upto, first=phrases == 0)
            if cut:
                llm_s = time.perf_counter() - t0  # before an inline voice job adds its own time
                spoken = threading.Event()
                if self._queue_phrase(gen, speakable[spoken_upto:cut], resampler, turn, spoken) and first_phrase_s is None:
                    first_phrase_s = llm_s
                    self._yield_to_voice(gen, spoken)
                spoken_upto, phrases = cut, phrases + 1
        speakable, calls = split_tool_text(raw, final=True)
        for call in calls[started_calls:]:
            self._ask_tool(gen, call, turn, time.perf_counter() - t0)
        if new:  # an answer to the user (not a follow-up): its turn's early calls are decided
            self._calls_written(gen, turn)
        if gen.cancelled.is_set():
            llm.rollback()  # the cache returns to the last committed turn
        else:
            llm.commit()
            llm_s = time.perf_counter() - t0
            if self._queue_phrase(gen, speakable[spoken_upto:], resampler, turn) and first_phrase_s is None:
                first_phrase_s = llm_s
        gen.text = speakable.strip()
        self._emit(ev.REPLY_TEXT, turn=turn, text=gen.text, speculative=gen.speculative, reply=gen.id,
                   cancelled=gen.cancelled.is_set(), compute_s=time.perf_counter() - t0,
                   first_phrase_compute_s=first_phrase_s)
        self._remember(gen, new, raw.strip())
        self._finish(gen, resampler)

    def _score_words(self, gen: Generation, transcript: str, recall: Recall | None, turn: int,
                     reply_messages: list[dict[str, str]]) -> None:
        """The words' end-of-turn vote for the silence ``gen`` answers (``text_turn``); the prefill it
        makes is the reply's own (``reply_messages``)."""
        started = time.perf_counter()
        prob = self.words_end_probability(transcript, recall, reply_messages)
        self._emit(ev.TEXT_END_OF_TURN, turn=turn, reply=gen.id, prob=prob, speech_end=gen.audio_key,
                   compute_s=time.perf_counter() - started)
        self.on_words(gen.audio_key, prob)

    def words_end_probability(self, transcript: str, recall: Recall | None = None,
                              reply_messages: list[dict[str, str]] | None = None) -> float | None:
        """P(the user's words could end where ``transcript`` does), read from the LLM at the end of
        the user message the answer would continue; None for no words.

        With ``reply_messages`` (the answer's chat), the reply's prompt is prefilled in the same LLM
        call when it continues the scored tokens (``LlmSession.score_then_prepare``), so the reply's
        first token needs no prefill call of its own.
        """
        llm = self.agent.llm
        if self._end_ids is None:
            self._end_ids = end_token_ids(llm.tokenizer.encode, llm.stop_ids)
        words = without_trailing_punctuation(transcript)
        if not words:
            return None
        scored = self._prefix_ids(words, recall)
        if reply_messages is not None:
            prompt = llm.prompt_ids(reply_messages, self.agent.max_new_tokens)
            if prompt[: len(scored)] == scored:
                prob = llm.score_then_prepare(prompt, len(scored), self._end_ids)
                if prob is not None:
                    return prob
        return llm.next_token_probability(scored, self._end_ids)

    def _queue_phrase(self, gen: Generation, phrase: str, resampler: StreamingResampler, turn: int,
                      spoken: threading.Event | None = None) -> bool:
        """Hand ``phrase`` to the voice (``spoken`` is set once its first audio is in the reply, or
        it ended without any); False if there was nothing to say."""
        if not phrase.strip():
            return False
        self.speak.submit(lambda: self._synthesize(gen, phrase, resampler, turn, spoken))
        return True

    def _yield_to_voice(self, gen: Generation, spoken: threading.Event) -> None:
        """Pause the reply's LLM until the voice has the first phrase's audio out.

        On 2 CPU cores the LLM writing the rest of the reply halves the voice's speed, and the
        first phrase's audio is what the listener waits for; the rest is needed only once that
        phrase has played (a second or more). Bounded, so a stuck voice never stops the reply.
        """
        deadline = time.perf_counter() + YIELD_TO_VOICE_MAX_S
        while time.perf_counter() < deadline and not gen.cancelled.is_set() and not spoken.wait(0.01):
            pass

    def _synthesize(self, gen: Generation, phrase: str, resampler: StreamingResampler, turn: int,
                    spoken: threading.Event | None = None) -> None:
        """Speak job: one phrase, clause by clause, into the reply."""
        start, started = gen.reply.written, time.perf_counter()
        try:
            for piece in self.agent.tts.stream(phrase):
                if gen.cancelled.is_set():
                    return
                if piece.size:
                    silent_so_far = gen.reply.written == 0
                    gen.reply.append(resampler.process(piece))
                    if spoken is not None:
                        spoken.set()
                    if silent_so_far and gen.reply.written:  # the reply's first audio: the end of its critical path
                        self._emit(ev.FIRST_SPEECH_CHUNK, turn=turn, reply=gen.id, compute_s=time.perf_counter() - started)
            gen.reply.mark_phrase(phrase, start)
        finally:
            if spoken is not None:
                spoken.set()

    def _finish(self, gen: Generation, resampler: StreamingResampler | None = None) -> None:
        def close() -> None:
            if resampler is not None and not gen.cancelled.is_set():
                gen.reply.append(resampler.flush())
            gen.reply.finish()
            gen.done.set()

        self.speak.submit(close)  # after every queued phrase of this reply

    def _remember(self, gen: Generation, new: list[dict[str, str]], reply: str) -> None:
        """The turn joins the history; a speculation joins it only once released (never if cancelled)."""
        with self._history_lock:
            if gen.cancelled.is_set() and not gen.released.is_set():
                return
            said = gen.said
            messages = [*new, {"role": "assistant", "content": reply if said is None else said}]
            if not gen.released.is_set():
                gen.pending_history = messages
                return
            self.agent.history.extend(messages)
            gen.history_index = len(self.agent.history) - 1

    def _ask_tool(self, gen: Generation, call: ToolCall, turn: int, llm_s: float) -> None:
        """A call the reply wrote: run it if the turn is committed; before that, start it early if
        the tool is read-only, and hold it until the release otherwise (side effects wait)."""
        if self.tools is None:
            self._emit(ev.TOOL_CALL, turn=turn, name=call.name, arguments=call.arguments, early=False, reply=gen.id)
            self._emit(ev.TOOL_ERROR, turn=turn, name=call.name, error="no tools are registered", early=False)
            return
        with self._history_lock:  # the listen loop releases the reply under the same lock
            if not gen.released.is_set():
                self._unreleased.setdefault(gen.id, _Unreleased(gen, turn)).calls.append((call, llm_s))
                if self.tools.read_only(call.name):
                    self.early.start(call, turn, gen.id, llm_s)
                return
        self.early.commit(call, turn, gen.id, llm_s)

    def _calls_written(self, gen: Generation, turn: int) -> None:
        """The answer ``gen`` has written all its calls: once it is also released, the turn's early
        calls it did not ask for are dropped."""
        if self.early is None:
            return
        with self._history_lock:
            if not gen.released.is_set():
                if gen.cancelled.is_set():
                    self._unreleased.pop(gen.id, None)  # never released: its held calls never run
                else:
                    self._unreleased.setdefault(gen.id, _Unreleased(gen, turn)).written = True
                return
        self.early.settle(turn)

    def _forget_cancelled(self) -> None:
        """Held calls of speculations cancelled after they finished writing: they never run."""
        with self._history_lock:
            for reply in [r for r, held in self._unreleased.items() if held.gen.cancelled.is_set()]:
                del self._unreleased[reply]

    # --- knowledge ----------------------------------------------------------------------------

    def _recall_while_listening(self, partial_text: str, turn: int) -> Recall | None:
        """Retrieve for the partial transcript (partial job), so the facts are in the prompt the
        LLM prefills while the user still speaks, and ready when the turn ends."""
        knowledge = self.agent.knowledge
        if knowledge is None or len(partial_text.split()) < 2:
            return None
        recall = knowledge.search(partial_text)
        self._recall = (turn, recall)
        self._emit_recall(recall, turn, "partial", early=False)
        return recall

    def _recall_for_answer(self, transcript: str, turn: int) -> Recall | None:
        """The final transcript re-checks the partial's retrieval: the same words reuse it as it is,
        other words retrieve again (one embedding, ~20 ms on 2 CPU cores)."""
        knowledge = self.agent.knowledge
        if knowledge is None:
            return None
        recalled_turn, early = self._recall
        early = early if recalled_turn == turn else None
        recall = early if early is not None and early.query == transcript else knowledge.search(transcript)
        self._recall = (turn, recall)
        self._emit_recall(recall, turn, "final", early=early is not None, reused=recall is early,
                          same_passages=early is not None and early.key == recall.key)
        return recall

    def _emit_recall(self, recall: Recall, turn: int, stage: str, early: bool, **facts) -> None:
        self._emit(ev.KNOWLEDGE, turn=turn, stage=stage, query=recall.query, early=early,
                   passages=[hit.passage.index for hit in recall.hits],
                   scores=[round(hit.score, 3) for hit in recall.hits],
                   compute_s=0.0 if facts.get("reused") else recall.compute_s, **facts)

    # --- prompts ------------------------------------------------------------------------------

    def _context(self, *new: dict[str, str], recall: Recall | None = None) -> list[dict[str, str]]:
        """The LLM's chat: system prompt (with the tools, the recalled facts and a recap of earlier
        turns), then ``new``."""
        system = self.agent.system_prompt
        if self.tools is not None and self.tools.tools:
            system = f"{system}\n\n{self.tools.prompt()}"
        with self._history_lock:
            history = [*self.agent.history, *new]
        return self.agent.with_facts(prompt_messages(system, history, self.agent.recap_turns), recall)

    def _prefix_ids(self, partial_user_text: str, recall: Recall | None = None) -> list[int]:
        """Token ids of the prompt up to the end of ``partial_user_text`` in a new user message."""
        llm = self.agent.llm
        user = {"role": "user", "content": partial_user_text + _MARK}
        rendered = llm.formatter.render(self._context(user, recall=recall))
        return llm.tokenizer.encode(rendered[: rendered.index(_MARK)])


def _common_prefix(a: list[str], b: list[str]) -> list[str]:
    out = []
    for x, y in zip(a, b):
        if x != y:
            break
        out.append(x)
    return out
