"""The think and speak stages of a Freeze-Omni conversation, as step jobs.

A job is an iterator that does one engine call per step and checks its reply's cancel flag
between steps. ``Stepper`` (runtime/workers.py) runs jobs in order: on its own worker thread to the end (threaded
sessions), or -- with ``threaded=False`` on a virtual clock -- a fixed number of steps per 160 ms
listen chunk. The inline budget stands for the engines' speed: a reply unfolds over virtual
time as it would on a device, deterministically, so a barge-in can land in the middle of its
decode or its speech (with everything inline at once, a reply would be complete before the
user could interrupt it).

- think: the LLM writes the reply into the turn's context; each segment becomes a speak job, each
  tool call it writes starts in the background (``ToolRunner``); when it finishes uncancelled, its
  context becomes the committed conversation. A follow-up feeds tool results in first.
- speak: the speech decoder and codec voice a segment; PCM goes into the reply (at the speaker rate).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from edgevoice.audio.resample import StreamingResampler
from edgevoice.runtime import events as ev
from edgevoice.runtime.freeze_omni.listen import LlmContext
from edgevoice.runtime.freeze_omni.pipeline import FreezeOmniPipeline
from edgevoice.runtime.freeze_omni.speak import Segment
from edgevoice.runtime.reply import Generation
from edgevoice.runtime.tools import ToolCall, ToolRunner
from edgevoice.runtime.workers import Stepper

Emit = Callable[..., None]
Steps = Iterator[None]


@dataclass
class ReplyTiming:
    """Wall-clock accounting of one reply, for the latency breakdown in its events."""

    decided_at: float  # time.perf_counter() at the respond decision
    compute_s: float = 0.0  # engine time spent on this reply so far (think and speak)
    marked: set[str] = field(default_factory=set)  # first-of-reply marks already emitted

    def since(self) -> float:
        return time.perf_counter() - self.decided_at


class FoReplyJobs:
    """Think and speak jobs over one ``FreezeOmniPipeline``; the session decides when they start."""

    def __init__(self, pipeline: FreezeOmniPipeline, think: Stepper, speak: Stepper, emit: Emit, speaker_rate: int,
                 tools: ToolRunner | None = None):
        self.pipeline, self.think, self.speak, self._emit = pipeline, think, speak, emit
        self.speaker_rate, self.tools = speaker_rate, tools

    def start(self, gen: Generation, context: LlmContext, turn: int, timing: ReplyTiming) -> None:
        """Begin the reply ``gen`` written into ``context`` (the turn's own copy)."""
        self.think.submit(self._timed(self._write(gen, context, turn, timing), timing))

    def follow_up(self, gen: Generation, context: LlmContext, tool_ids: list[int], turn: int,
                  timing: ReplyTiming) -> None:
        """Feed tool results (``tool_ids``, their turns' tokens) into ``context`` -- a fork of the
        committed conversation -- commit them, and speak the reply to them."""
        self.think.submit(self._timed(self._follow_up(gen, context, tool_ids, turn, timing), timing))

    def _follow_up(self, gen: Generation, context: LlmContext, tool_ids: list[int], turn: int,
                   timing: ReplyTiming) -> Steps:
        if not gen.cancelled.is_set():
            self.pipeline.llm.feed_ids(context, tool_ids, kind="tool")
            self.pipeline.commit(context.fork())  # the results stay in context even if the reply is cut off
            yield
        yield from self._write(gen, context, turn, timing)

    def mark(self, kind: str, turn: int, timing: ReplyTiming, **data) -> None:
        """A first-of-reply event with the latency since the respond decision (wall and engine time)."""
        if kind in timing.marked:
            return
        timing.marked.add(kind)
        self._emit(kind, turn=turn, since_decision_s=timing.since(), compute_s=timing.compute_s, **data)

    @staticmethod
    def _timed(steps: Steps, timing: ReplyTiming) -> Steps:
        """``steps`` with the engine time of each step added to the reply's compute."""
        while True:
            started = time.perf_counter()
            try:
                next(steps)
            except StopIteration:
                return
            finally:
                timing.compute_s += time.perf_counter() - started
            yield

    # --- think -----------------------------------------------------------------------------------

    def _write(self, gen: Generation, context: LlmContext, turn: int, timing: ReplyTiming) -> Steps:
        start_position = context.position
        resampler = StreamingResampler(self.pipeline.output_rate, self.speaker_rate)
        tokens, finish = 0, "cancelled"
        for item in self.pipeline.respond(context):
            if gen.cancelled.is_set():
                break
            if item.kind == "token":
                tokens += 1
                gen.text += item.text
                self.mark(ev.FIRST_TOKEN, turn, timing)
            elif item.kind == "segment":
                self.speak.submit(self._timed(self._voice(gen, item.segment, turn, timing, resampler), timing))
            elif item.kind == "tool_call":
                self._start_tool(item.call, turn)
            else:  # "done": its text also holds a tail the reply's last token only released at the end
                finish, gen.text = item.finish, item.text
            yield
        if not gen.cancelled.is_set():
            self.pipeline.commit(context)  # the finished exchange is the new rollback point
        self._emit(ev.REPLY_TEXT, turn=turn, text=gen.text, tokens=tokens, finish=finish,
                   cancelled=gen.cancelled.is_set(), llm_positions=(start_position, context.position),
                   compute_s=timing.compute_s)
        self.speak.submit(self._close(gen, resampler))  # after every queued segment of this reply

    def _start_tool(self, call: ToolCall, turn: int) -> None:
        """As the cascade: the call is an event, then runs in the background (its result comes later)."""
        self._emit(ev.TOOL_CALL, turn=turn, name=call.name, arguments=call.arguments)
        if self.tools is None:
            self._emit(ev.TOOL_ERROR, turn=turn, name=call.name, error="no tools are registered")
            return
        self.tools.call(call)

    # --- speak -----------------------------------------------------------------------------------

    def _voice(self, gen: Generation, segment: Segment, turn: int, timing: ReplyTiming,
               resampler: StreamingResampler) -> Steps:
        if gen.cancelled.is_set():
            return
        start = gen.reply.written
        marks = lambda name: self.mark(name, turn, timing, segment=segment.index)  # noqa: E731
        for pcm in self.pipeline.speak(segment, marks):
            if gen.cancelled.is_set():
                return
            if pcm.size:
                gen.reply.append(resampler.process(pcm))
            yield
        gen.reply.mark_phrase(segment.text or " ".join(f"<{i}>" for i in segment.ids), start)

    @staticmethod
    def _close(gen: Generation, resampler: StreamingResampler) -> Steps:
        if not gen.cancelled.is_set():
            gen.reply.append(resampler.flush())
        gen.reply.finish()
        gen.done.set()
        return
        yield  # a generator: it runs when the speak stage reaches it
