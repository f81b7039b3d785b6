"""How the thinker drives Whisper on a turn's growing audio: drafts and yielding to the answer.

Fast: a scripted recognizer stands in for Whisper, so the order of calls can be forced; what the
drafts do to Whisper's own output is tested on the real graphs in ``test_asr.py``.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np

from edgevoice.runtime import events as ev
from edgevoice.runtime.cascade.asr import Transcript
from edgevoice.runtime.cascade.thinking import CascadeThinker
from edgevoice.runtime.reply import Generation
from edgevoice.runtime.workers import Worker

RATE = 16000


class ScriptedAsr:
    """Answers each transcribe call with the next scripted (text, tokens); records what it was given."""

    def __init__(self, script: list[tuple[str, tuple[int, ...]]]):
        self.script, self.calls = list(script), []
        self.during: dict[int, callable] = {}  # call index -> what to do inside that call

    def transcribe(self, pcm, rate, stop=None, draft=(), abort=None):
        index, record = len(self.calls), {"seconds": pcm.size / rate, "draft": tuple(draft), "abort": abort}
        self.calls.append(record)
        if index in self.during:
            self.during[index]()
        stopped = record["stopped"] = stop is not None and stop()
        text, tokens = self.script[index]
        return Transcript("" if stopped else text, () if stopped else tokens, pcm.size / rate, 0.0, 0.0, stopped=stopped)


def make_thinker(asr: ScriptedAsr) -> tuple[CascadeThinker, list[tuple[str, dict]]]:
    events: list[tuple[str, dict]] = []

    def fail(stage, error):
        raise error

    agent = SimpleNamespace(asr=asr, knowledge=None)
    thinker = CascadeThinker(agent, Worker("think", False, fail), Worker("speak", False, fail),
                             lambda kind, **data: events.append((kind, data)), speaker_rate=22050)
    return thinker, events


def speech(seconds: float) -> np.ndarray:
    return np.full(int(seconds * RATE), 0.1, np.float32)


def test_each_transcript_of_a_turn_drafts_the_next_one_and_no_other_turns():
    # The answers' texts are empty (nothing for the LLM to do here); their tokens still draft.
    asr = ScriptedAsr([(" What is the", (1, 2, 3)), ("", (1, 2, 3, 4)), ("", (1, 2, 3, 4, 5)), ("", (9,))])
    thinker, events = make_thinker(asr)
    thinker.partial(speech(1.0), RATE, turn=1)
    thinker.answer(Generation(speculative=True), speech(1.5), RATE, turn=1)
    thinker.answer(Generation(speculative=True), speech(2.0), RATE, turn=1)
    thinker.answer(Generation(speculative=True), speech(0.5), RATE, turn=2)
    assert [call["draft"] for call in asr.calls] == [(), (1, 2, 3), (1, 2, 3, 4), ()]  # a new turn starts afresh
    assert [kind for kind, _ in events].count(ev.TRANSCRIPT) == 3


def test_a_partial_still_transcribing_when_an_answer_begins_stops_for_it():
    asr = ScriptedAsr([(" What is", (1, 2)), (" What is the capital of France?", (1, 2, 3, 4, 5, 6))])
    thinker, events = make_thinker(asr)
    partial_in_whisper, answer_began = threading.Event(), threading.Event()

    def wait_for_the_answer():
        partial_in_whisper.set()
        assert answer_began.wait(10)

    asr.during[0] = wait_for_the_answer
    asr.during[1] = answer_began.set
    asr.script[1] = ("", ())  # the answer hears nothing, so no LLM is needed here
    partial = threading.Thread(target=thinker.partial, args=(speech(1.0), RATE, 1))
    partial.start()
    assert partial_in_whisper.wait(10)
    thinker.answer(Generation(speculative=True), speech(2.0), RATE, turn=1)
    partial.join(10)
    assert asr.calls[0]["stopped"] and not asr.calls[1]["stopped"]
    assert not [kind for kind, _ in events if kind == ev.PARTIAL_TRANSCRIPT]  # the stopped partial says nothing
    assert asr.calls[1]["draft"] == ()  # nor drafts anything


def test_dropping_an_answer_aborts_its_whisper_call():
    """The listen loop's ``cancel()`` reaches the engine call in flight (``Generation.abort``), so a
    stale answer's encoder stops at once; a partial transcript is never given one."""
    asr = ScriptedAsr([(" What is", (1, 2)), (" What is the capital", (1, 2, 3, 4))])
    thinker, events = make_thinker(asr)
    thinker.partial(speech(1.0), RATE, turn=1)
    gen = Generation(speculative=True)
    asr.during[1] = gen.cancel  # the user speaks on while the answer's Whisper runs
    thinker.answer(gen, speech(1.5), RATE, turn=1)
    assert asr.calls[0]["abort"] is None
    assert asr.calls[1]["abort"] is gen.abort and gen.abort.is_set() and asr.calls[1]["stopped"]
    assert ev.TRANSCRIPT not in [kind for kind, _ in events]  # a stopped answer says nothing
