"""Semantic endpointing in whole conversations on the virtual clock: a thinking pause is not the
end of a turn when the end-of-turn model says so, and a finished turn is taken at the first check.

The cascade engines are real (VAD, Whisper, the voice); the language model is scripted (the
replies do not matter here) and so is the end-of-turn model, which calls a turn complete once it
has heard enough speech: what Smart Turn does with "I would like to know ..." is its own test.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import espeak
from scripted import install

from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.cascade.pipeline import CascadePipeline
from edgevoice.runtime.cascade.session import DuplexSession, SessionOptions
from edgevoice.runtime.turns import TurnOptions

RATE = 16000
BLOCK = 512  # one VAD frame


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def trimmed(audio: np.ndarray) -> np.ndarray:
    voiced = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[voiced[0] : voiced[-1] + 1]


def voiced_seconds(audio: np.ndarray) -> float:
    blocks = audio[: audio.size // BLOCK * BLOCK].reshape(-1, BLOCK)
    return float(np.count_nonzero(np.abs(blocks).max(axis=1) > 0.02) * BLOCK / RATE)


class ScriptedTurnModel:
    """Stands in for Smart Turn: "complete" once the turn holds ``complete_after_s`` of speech."""

    sample_rate, window_samples = RATE, 8 * RATE

    def __init__(self, complete_after_s: float):
        self.complete_after_s = complete_after_s
        self.heard: list[float] = []  # voiced seconds of every window it scored

    def probability(self, pcm: np.ndarray) -> float:
        assert pcm.size <= self.window_samples
        self.heard.append(voiced_seconds(pcm))
        return 0.9 if self.heard[-1] >= self.complete_after_s else 0.1


def converse(package, parts: list[np.ndarray], turn_model, extra_s: float = 4.0, paced: bool = False,
             words: bool = True) -> DuplexSession:
    """Inline on the unpaced virtual clock (deterministic), or ``paced``: real time, stages on threads.
    ``words``: the transcript's end-of-turn vote (scored by the package's real LLM) is on."""
    pipeline = CascadePipeline(package)
    install(pipeline, lambda messages: "Sunny and mild.")
    pipeline.turn_model = turn_model
    recording = np.concatenate(parts)
    io = FileIO(recording, recording_rate=RATE, mic_rate=RATE, speaker_rate=22050, pace=1.0 if paced else None)
    session = DuplexSession(pipeline, io, SessionOptions(threaded=paced, text_endpointing=words))
    with io:
        session.run(len(recording) / RATE + extra_s)
    session.close()
    return session


def user_turns(session: DuplexSession) -> list[str]:
    return [m["content"].lower() for m in session.agent.history if m["role"] == "user"]


@pytest.mark.slow
def test_a_thinking_pause_is_not_cut_off(cascade_package):
    part1, part2 = trimmed(espeak("I would like to know")), trimmed(espeak("what the weather is like tomorrow"))
    parts = [silence(0.5), part1, silence(1.0), part2, silence(1.5)]
    part2_starts = (len(silence(0.5)) + len(part1) + len(silence(1.0))) / RATE

    # The control: the VAD alone ends the turn in the pause and answers half a question.
    vad_only = converse(cascade_package, parts, turn_model=None)
    ends = vad_only.events.history(ev.USER_SPEECH_END)
    assert len(ends) == 2 and ends[0].time < part2_starts and ends[0].data["endpoint"] == "vad"
    [notice] = [w for w in vad_only.events.history(ev.WARNING) if w.data.get("stage") == "turn"]
    assert "no end-of-turn model" in notice.data["problem"] and "edgevoice export --model cascade" in notice.data["problem"]

    model = ScriptedTurnModel(voiced_seconds(part1) + voiced_seconds(part2) / 2)
    session = converse(cascade_package, parts, turn_model=model)
    [end] = session.events.history(ev.USER_SPEECH_END)
    assert end.time > part2_starts + len(part2) / RATE
    # The audio said "complete" at 200 ms and the words agreed: taken at text_min_silence_ms.
    assert end.data["endpoint"] == "model" and end.data["eot_prob"] == 0.9 and 600 <= end.data["silence_ms"] < 632
    [taken] = session.events.history(ev.TURN_TAKEN)
    assert taken.data == {"silence_ms": end.data["silence_ms"], "eot_prob": 0.9, "endpoint": "model",
                          "text_eot_prob": end.data["text_eot_prob"]}
    assert end.data["text_eot_prob"] >= TurnOptions().text_eot_threshold  # the whole question: the words agree
    in_the_pause = [h for h in model.heard if h < model.complete_after_s]
    assert len(in_the_pause) >= 2  # scored at the first check and again as the pause went on
    [question] = user_turns(session)
    assert "know" in question and "weather" in question  # one turn, the whole question
    assert not session.events.history(ev.WARNING)


@pytest.mark.slow
def test_unfinished_words_hold_a_pause_the_audio_model_calls_complete(cascade_package):
    """Smart Turn calls espeak's flat "I would like to know" complete; the words do not end there."""
    part1, part2 = trimmed(espeak("I would like to know")), trimmed(espeak("what the weather is like tomorrow"))
    parts = [silence(0.5), part1, silence(1.0), part2, silence(1.5)]
    part2_starts = (len(silence(0.5)) + len(part1) + len(silence(1.0))) / RATE

    audio_only = converse(cascade_package, parts, ScriptedTurnModel(0.0), words=False)
    first_end = audio_only.events.history(ev.USER_SPEECH_END)[0]
    assert first_end.time < part2_starts and first_end.data["text_eot_prob"] is None  # cut off in the pause

    session = converse(cascade_package, parts, ScriptedTurnModel(0.0))
    votes = session.events.history(ev.TEXT_END_OF_TURN)
    assert len(votes) == 2 and votes[0].time < part2_starts  # one per silence, from its speculative answer
    assert votes[0].data["prob"] < TurnOptions().text_eot_threshold <= votes[1].data["prob"]
    [end] = session.events.history(ev.USER_SPEECH_END)
    assert end.time > part2_starts and end.data["endpoint"] == "model" and 600 <= end.data["silence_ms"] < 632
    assert end.data["text_eot_prob"] == votes[1].data["prob"]
    [question] = user_turns(session)
    assert "know" in question and "weather" in question  # one turn, the whole question
    [transcript, _] = [t for t in session.events.history(ev.TRANSCRIPT)]
    assert transcript.data["speculative"] and "weather" not in transcript.data["text"].lower()  # what was scored


@pytest.mark.slow
def test_sure_words_answer_a_complete_turn_the_audio_model_calls_unfinished(cascade_package):
    question = espeak("Could you please tell me what the capital of France is?")
    never_complete = ScriptedTurnModel(complete_after_s=99.0)  # as Smart Turn is with some finished questions
    session = converse(cascade_package, [silence(0.5), question, silence(1.5)], never_complete)
    [end] = session.events.history(ev.USER_SPEECH_END)
    # Words this sure take the turn at text_sure_min_silence_ms, whatever the audio model says.
    options = TurnOptions()
    assert end.data["endpoint"] == "words" and end.data["text_eot_prob"] >= options.text_eot_sure
    # Within two frames of the floor: frames here come every ~33 ms, and one 399.99 ms short of it waits.
    assert options.text_sure_min_silence_ms <= end.data["silence_ms"] < options.text_sure_min_silence_ms + 2 * 34
    assert end.time - end.data["speech_end"] < 0.5
    [transcript] = session.events.history(ev.TRANSCRIPT)
    assert transcript.data["speculative"] and transcript.time < end.time  # under way before the check
    [first_audio] = session.events.history(ev.FIRST_AUDIO)
    assert first_audio.time - end.time < 0.05
    assert "france" in user_turns(session)[0]


@pytest.mark.slow
def test_on_threads_the_score_comes_from_the_worker_a_frame_or_two_later(cascade_package):
    question = espeak("What is the capital of France?")
    # The audio model's timing alone: with the words' vote the turn also waits for Whisper, whose
    # time on a busy machine is not this test's subject.
    session = converse(cascade_package, [silence(0.3), question, silence(1.2)], ScriptedTurnModel(0.0),
                       extra_s=2.0, paced=True, words=False)
    [end] = session.events.history(ev.USER_SPEECH_END)
    assert end.data["endpoint"] == "model" and end.data["eot_prob"] == 0.9
    assert 200 <= end.data["silence_ms"] < 200 + 4 * 32  # asked at the first check, answered off the listen loop
    assert "france" in user_turns(session)[0]


def test_the_speculative_answer_may_not_start_after_the_first_check():
    SessionOptions(speculate_after_ms=200.0)  # at the check is allowed
    with pytest.raises(ValueError, match="eot_first_check_ms"):
        SessionOptions(speculate_after_ms=250.0)
    SessionOptions(speculate_after_ms=250.0, turn=TurnOptions(eot_first_check_ms=300.0))
    SessionOptions(speculate_after_ms=250.0, think_while_listening=False)
