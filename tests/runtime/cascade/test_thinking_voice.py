"""The reply's LLM gives the cores to the voice until the first phrase's audio is out.

Fast: a scripted LLM and a slow scripted voice stand in for the engines, on a real speak worker
thread, so the order of what happens can be read off directly.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from edgevoice.runtime.cascade import thinking
from edgevoice.runtime.cascade.asr import Transcript
from edgevoice.runtime.cascade.thinking import CascadeThinker
from edgevoice.runtime.llm import GeneratedToken
from edgevoice.runtime.reply import Generation
from edgevoice.runtime.workers import Worker

RATE = 22050
REPLY = ["The", " capital", " of", " France", " is", " Paris", ",", " a", " city", " on", " the", " Seine", "."]


class ScriptedLlm:
    """Yields REPLY token by token; records how much reply audio there was when each was asked for."""

    def __init__(self, gen: Generation):
        self.gen, self.audio_when_asked = gen, []

    def generate(self, messages, **options):
        for i, text in enumerate(REPLY):
            self.audio_when_asked.append(self.gen.reply.written)
            yield GeneratedToken(i, text)

    def commit(self):
        pass

    def rollback(self):
        pass


class SlowVoice:
    """Takes ``seconds`` before each phrase's audio, as a voice sharing two cores with the LLM does."""

    sample_rate = RATE

    def __init__(self, seconds: float):
        self.seconds = seconds

    def stream(self, phrase: str):
        time.sleep(self.seconds)
        yield np.full(RATE // 10, 0.1, np.float32)


def run_reply(voice_seconds: float) -> tuple[ScriptedLlm, Generation]:
    def fail(stage, error):
        raise error

    gen = Generation()
    llm = ScriptedLlm(gen)
    asr = SimpleNamespace(transcribe=lambda pcm, rate, stop=None, draft=(), abort=None: Transcript(
        "What is the capital of France?", (1, 2, 3), pcm.size / rate, 0.0, 0.0))
    agent = SimpleNamespace(asr=asr, llm=llm, tts=SlowVoice(voice_seconds), voice=SlowVoice, knowledge=None,
                            max_new_tokens=64, sampling=None, system_prompt="Be brief.", history=[], recap_turns=0,
                            with_facts=lambda messages, recall: messages)
    speak = Worker("speak", True, fail)
    thinker = CascadeThinker(agent, Worker("think", False, fail), speak, lambda kind, **data: None, speaker_rate=RATE)
    try:
        thinker.answer(gen, np.full(16000, 0.1, np.float32), 16000, turn=1)
        assert gen.done.wait(5)
    finally:
        speak.stop()
    return llm, gen


def test_the_llm_waits_for_the_first_phrases_audio_before_writing_on():
    llm, gen = run_reply(voice_seconds=0.2)
    # The first phrase, "The capital of France is Paris,", is cut when " a" shows the comma ended it.
    cut = REPLY.index(" a") + 1
    assert llm.audio_when_asked[:cut] == [0] * cut
    assert all(written > 0 for written in llm.audio_when_asked[cut:])  # each later token waited for the voice
    assert gen.reply.written > 0


def test_a_slow_voice_holds_the_llm_only_so_long(monkeypatch):
    monkeypatch.setattr(thinking, "YIELD_TO_VOICE_MAX_S", 0.05)
    llm, _ = run_reply(voice_seconds=0.5)
    assert llm.audio_when_asked[-1] == 0  # the reply was written while the voice still worked on its first phrase
