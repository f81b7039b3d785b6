"""Turn-taking decisions on scripted speech-probability tracks (32 ms frames)."""

from __future__ import annotations

import pytest

from edgevoice.runtime.turns import (
    Decision,
    ScoreRequest,
    SemanticTurnPolicy,
    TurnOptions,
    TurnState,
    VadTurnPolicy,
    elapsed_ms,
)

FRAME = 0.032


def feed(policy: VadTurnPolicy, pattern: str, t0: float = 0.0) -> list[tuple[float, Decision]]:
    """'s' = speech frame, '.' = silence; returns the non-NONE decisions with their times."""
    decisions = []
    for i, c in enumerate(pattern):
        t = t0 + (i + 1) * FRAME
        d = policy.update(t, 0.95 if c == "s" else 0.02, 0.1 if c == "s" else 0.0)
        if d is not Decision.NONE:
            decisions.append((round(t, 3), d))
    return decisions


def test_user_turn_ends_after_endpoint_silence():
    policy = VadTurnPolicy()
    decisions = feed(policy, "." * 5 + "s" * 30 + "." * 25)
    assert [d for _, d in decisions] == [Decision.USER_STARTED, Decision.END_OF_TURN]
    end_time = decisions[-1][0]
    assert end_time - 35 * FRAME >= 0.6  # waited the endpoint silence after the last speech frame
    assert policy.state is TurnState.THINKING


def test_short_noise_is_dismissed():
    policy = VadTurnPolicy()
    assert [d for _, d in feed(policy, "sss" + "." * 25)] == [Decision.USER_STARTED, Decision.DISMISS]
    assert policy.state is TurnState.LISTENING


def test_quiet_frames_do_not_count_as_speech():
    policy = VadTurnPolicy()
    for i in range(20):
        assert policy.update(i * FRAME, 0.99, 0.0001) is Decision.NONE  # VAD says speech, level says echo residue


def test_onset_counts_frames_not_clock_time():
    """Two speech frames start a turn even when the loop ran late and handed both over at once."""
    policy = agent_speaking()
    assert policy.update(10.0, 0.6, 0.1) is Decision.NONE  # speech, but not sure enough alone (pause_prob)
    assert policy.update(10.0, 0.6, 0.1) is Decision.PAUSE  # same clock time: a burst of two frames
    listening = VadTurnPolicy(TurnOptions(onset_frames=3))
    assert [d for _, d in feed(listening, "ss.sss")] == [Decision.USER_STARTED]
    assert listening.speech_start == pytest.approx(4 * FRAME)  # the run of three, not the broken one


def agent_speaking() -> VadTurnPolicy:
    policy = VadTurnPolicy()
    feed(policy, "s" * 20 + "." * 25)
    policy.agent_started_speaking()
    assert policy.state is TurnState.SPEAKING
    return policy


def test_one_sure_frame_pauses_the_agent_but_does_not_start_a_turn():
    policy = agent_speaking()
    assert policy.update(10.0, 0.75, 0.1) is Decision.PAUSE  # >= pause_prob (0.7): no second frame needed
    quiet = [policy.update(10.0 + i * FRAME, 0.02, 0.0) for i in range(1, 12)]
    assert Decision.RESUME in quiet and policy.state is TurnState.SPEAKING  # a click, not the user
    two_frames = agent_speaking()
    two_frames.options = TurnOptions(pause_prob=None)
    assert two_frames.update(10.0, 0.99, 0.1) is Decision.NONE
    listening = VadTurnPolicy()
    assert listening.update(1.0, 0.99, 0.1) is Decision.NONE  # a turn's start still takes onset_frames
    with pytest.raises(ValueError):
        TurnOptions(pause_prob=0.4)  # under the speech threshold


def test_barge_in_pauses_fast_then_takes_the_floor():
    policy = agent_speaking()
    decisions = feed(policy, "s" * 30, t0=10.0)
    assert decisions[0][1] is Decision.PAUSE
    assert decisions[0][0] - 10.0 <= 0.15  # audio stops within 150 ms of speech onset
    assert decisions[1][1] is Decision.BARGE_IN
    assert policy.state is TurnState.USER_SPEAKING
    assert [d for _, d in feed(policy, "." * 25, t0=11.0)] == [Decision.END_OF_TURN]


def test_backchannel_resumes_the_agent():
    policy = agent_speaking()
    decisions = [d for _, d in feed(policy, "s" * 8 + "." * 12, t0=10.0)]  # ~250 ms "mhm", then 380 ms quiet
    assert decisions == [Decision.PAUSE, Decision.RESUME]
    assert policy.state is TurnState.SPEAKING and not policy.paused
    policy.agent_finished()
    assert policy.state is TurnState.LISTENING


def test_options_are_validated():
    with pytest.raises(ValueError):
        TurnOptions(threshold=0)
    with pytest.raises(ValueError):
        TurnOptions(endpoint_silence_ms=-1)


# --- semantic endpointing: the end-of-turn model's scores fed in by the caller -----------------

def converse(policy: SemanticTurnPolicy, pattern: str, scores, t0: float = 0.0, lag_frames: int = 0):
    """Like ``feed``; each score request is answered with ``scores(request)``, ``lag_frames`` frames
    later (a worker thread). Returns the decisions and the silence (ms) at every request."""
    decisions, asked, waiting = [], [], []
    for i, c in enumerate(pattern):
        t = t0 + (i + 1) * FRAME
        d = policy.update(t, 0.95 if c == "s" else 0.02, 0.1 if c == "s" else 0.0)
        if policy.score_wanted is not None:
            asked.append(policy.score_wanted.silence_ms)
            waiting.append((i + lag_frames, policy.score_wanted))
        for due, request in [w for w in waiting if w[0] <= i]:
            waiting.remove((due, request))
            verdict = policy.score(t, request, scores(request))
            d = verdict if verdict is not Decision.NONE else d
        if d is not Decision.NONE:
            decisions.append((round(t, 3), d))
    return decisions, asked


def complete(request: ScoreRequest) -> float:
    return 0.9


def incomplete(request: ScoreRequest) -> float:
    return 0.1


def test_a_complete_turn_is_taken_at_the_first_check():
    policy = SemanticTurnPolicy()
    decisions, asked = converse(policy, "s" * 30 + "." * 80, complete)
    assert [d for _, d in decisions] == [Decision.USER_STARTED, Decision.END_OF_TURN]
    silence_ms = (decisions[-1][0] - 30 * FRAME) * 1000
    assert 200 <= silence_ms < 200 + 32  # the first frame past eot_first_check_ms, not the 600 ms VAD endpoint
    assert len(asked) == 1
    end = policy.turn_end
    assert end.by == "model" and end.eot_prob == 0.9 and end.silence_ms == pytest.approx(silence_ms)
    assert policy.state is TurnState.THINKING


def test_an_incomplete_turn_is_rescored_and_taken_at_max_silence():
    options = TurnOptions()
    policy = SemanticTurnPolicy(options)
    decisions, asked = converse(policy, "s" * 30 + "." * 100, incomplete)
    assert [d for _, d in decisions] == [Decision.USER_STARTED, Decision.END_OF_TURN]
    silence_ms = (decisions[-1][0] - 30 * FRAME) * 1000
    assert options.eot_max_silence_ms <= silence_ms < options.eot_max_silence_ms + 32
    assert len(asked) >= 5 and asked[0] < 232  # scored again and again while the silence grew
    gaps = [b - a for a, b in zip(asked, asked[1:])]
    assert all(options.eot_recheck_ms <= g < options.eot_recheck_ms + 32 for g in gaps), gaps
    assert policy.turn_end.by == "max_silence" and policy.turn_end.eot_prob == 0.1


def test_a_recheck_that_says_complete_takes_the_turn():
    policy = SemanticTurnPolicy()
    verdicts = iter([0.2, 0.7])
    decisions, asked = converse(policy, "s" * 30 + "." * 80, lambda request: next(verdicts))
    assert [d for _, d in decisions] == [Decision.USER_STARTED, Decision.END_OF_TURN]
    assert len(asked) == 2 and policy.turn_end.by == "model" and policy.turn_end.eot_prob == 0.7
    assert policy.turn_end.silence_ms == pytest.approx(asked[1])


def test_speech_resuming_after_a_thinking_pause_continues_the_same_turn():
    # 700 ms pause: the VAD policy ends the turn in it; the model says "incomplete" and the user goes on.
    pattern = "s" * 30 + "." * 22 + "s" * 20 + "." * 40
    vad_only = feed(VadTurnPolicy(), pattern)
    assert vad_only[1][1] is Decision.END_OF_TURN and vad_only[1][0] < 52 * FRAME  # cut off in the pause
    policy = SemanticTurnPolicy()
    second_part_ends = round(72 * FRAME, 3)
    decisions, asked = converse(policy, pattern, lambda r: 0.9 if r.speech_end >= second_part_ends else 0.1)
    assert [d for _, d in decisions] == [Decision.USER_STARTED, Decision.END_OF_TURN]
    assert decisions[-1][0] > second_part_ends and policy.turn_end.silence_ms < 232
    assert len(asked) == 3  # twice in the pause (224 and ~544 ms), once after the second part


def test_a_score_for_a_silence_the_user_broke_is_ignored():
    policy = SemanticTurnPolicy()
    feed(policy, "s" * 30 + "." * 7)
    request = policy.score_wanted
    assert request is not None  # asked at the first check
    feed(policy, "s" * 5, t0=37 * FRAME)  # the user goes on before the (slow) score arrives
    assert policy.score(42 * FRAME, request, 0.99) is Decision.NONE
    assert policy.state is TurnState.USER_SPEAKING


def test_a_late_score_still_takes_the_turn():
    policy = SemanticTurnPolicy()
    decisions, _ = converse(policy, "s" * 30 + "." * 40, complete, lag_frames=2)
    silence_ms = (decisions[-1][0] - 30 * FRAME) * 1000
    assert decisions[-1][1] is Decision.END_OF_TURN and 200 + 64 <= silence_ms < 200 + 96


def test_without_scores_the_turn_is_taken_at_max_silence():
    policy = SemanticTurnPolicy()
    decisions = feed(policy, "s" * 30 + "." * 70)  # requests are never answered
    assert [d for _, d in decisions] == [Decision.USER_STARTED, Decision.END_OF_TURN]
    assert policy.turn_end.by == "max_silence" and policy.turn_end.eot_prob is None


def test_short_sounds_are_dismissed_without_asking_the_model():
    policy = SemanticTurnPolicy()
    decisions, asked = converse(policy, "sss" + "." * 25, complete)
    assert [d for _, d in decisions] == [Decision.USER_STARTED, Decision.DISMISS] and not asked


def test_without_a_model_the_vad_endpoint_is_reported():
    policy = VadTurnPolicy()
    feed(policy, "s" * 30 + "." * 25)
    assert policy.turn_end.by == "vad" and policy.turn_end.eot_prob is None
    assert 600 <= policy.turn_end.silence_ms < 632
    assert not hasattr(policy, "score_wanted")  # the VAD policy never asks for scores


def test_end_of_turn_options_are_validated():
    for bad in ({"eot_threshold": 0.0}, {"eot_threshold": 1.0}, {"eot_recheck_ms": 0},
                {"eot_first_check_ms": -1}, {"eot_first_check_ms": 500, "eot_max_silence_ms": 400}):
        with pytest.raises(ValueError):
            TurnOptions(**bad)


# --- the words' vote (text gate): the transcript's end-of-turn probability fed in by the caller ---

def converse_with_words(policy: SemanticTurnPolicy, pattern: str, audio_prob: float, words, words_at_ms: float):
    """Like ``converse`` (scores answered at once); each silence of ``words_at_ms`` or more gets the
    words' probability ``words(speech_end)`` once, as the session's speculative answer would."""
    decisions, told = [], set()
    for i, c in enumerate(pattern):
        t = (i + 1) * FRAME
        d = policy.update(t, 0.95 if c == "s" else 0.02, 0.1 if c == "s" else 0.0)
        if policy.score_wanted is not None:
            verdict = policy.score(t, policy.score_wanted, audio_prob)
            d = verdict if verdict is not Decision.NONE else d
        end = policy.last_speech
        if c == "." and end is not None and end not in told and (t - end) * 1000 >= words_at_ms:
            told.add(end)
            verdict = policy.text_score(t, end, words(end))
            d = verdict if verdict is not Decision.NONE else d
        if d is not Decision.NONE:
            decisions.append((round(t, 3), d))
    return decisions


def test_unfinished_words_hold_a_turn_the_audio_calls_complete():
    # "I would like to know ... what the weather is": the audio model says "complete" in the pause
    # (as Smart Turn does on flat read speech), the words do not.
    pattern = "s" * 30 + "." * 35 + "s" * 20 + "." * 40
    second_part_ends = round(85 * FRAME, 3)
    words = lambda end: 0.6 if end >= second_part_ends else 0.0001
    audio_only = converse(SemanticTurnPolicy(), pattern, complete)[0]
    assert audio_only[1][1] is Decision.END_OF_TURN and audio_only[1][0] < 65 * FRAME  # cut off in the pause
    policy = SemanticTurnPolicy(text_gate=True)
    decisions = converse_with_words(policy, pattern, 0.9, words, words_at_ms=160)
    assert [d for _, d in decisions] == [Decision.USER_STARTED, Decision.END_OF_TURN]
    # Both agree at the first check (200 ms); words that agree end a turn at text_min_silence_ms.
    assert decisions[-1][0] > second_part_ends and 600 <= policy.turn_end.silence_ms < 632
    assert policy.turn_end.by == "model" and policy.turn_end.text_prob == 0.6


def test_agreeing_words_end_the_turn_no_sooner_than_text_min_silence_ms():
    pattern, complete_words = "s" * 30 + "." * 40, lambda end: 0.6
    for floor_ms, earliest_ms in ((600.0, 600), (0.0, 200), (400.0, 400)):
        policy = SemanticTurnPolicy(TurnOptions(text_min_silence_ms=floor_ms), text_gate=True)
        decisions = converse_with_words(policy, pattern, 0.9, complete_words, words_at_ms=64)
        silence_ms = (decisions[-1][0] - 30 * FRAME) * 1000
        assert decisions[-1][1] is Decision.END_OF_TURN and earliest_ms <= silence_ms < max(earliest_ms, 200) + 32
    with pytest.raises(ValueError, match="text_min_silence_ms"):
        TurnOptions(text_min_silence_ms=-1.0)


def test_the_turn_waits_for_late_words_and_is_taken_when_they_agree():
    policy = SemanticTurnPolicy(text_gate=True)
    decisions = converse_with_words(policy, "s" * 30 + "." * 40, 0.9, lambda end: 0.3, words_at_ms=600)
    silence_ms = (decisions[-1][0] - 30 * FRAME) * 1000
    assert decisions[-1][1] is Decision.END_OF_TURN and 600 <= silence_ms < 632  # when the words came, not at 200 ms
    assert policy.turn_end.eot_prob == 0.9 and policy.turn_end.text_prob == 0.3


def test_unfinished_words_hold_the_turn_until_max_silence():
    options = TurnOptions()
    policy = SemanticTurnPolicy(options, text_gate=True)
    decisions = converse_with_words(policy, "s" * 30 + "." * 80, 0.9, lambda end: 0.0, words_at_ms=160)
    silence_ms = (decisions[-1][0] - 30 * FRAME) * 1000
    assert options.eot_max_silence_ms <= silence_ms < options.eot_max_silence_ms + 32
    assert policy.turn_end.by == "max_silence" and policy.turn_end.text_prob == 0.0
    assert policy.words_unfinished


def test_no_words_leave_the_decision_to_the_audio():
    policy = SemanticTurnPolicy(text_gate=True)
    decisions = converse_with_words(policy, "s" * 30 + "." * 40, 0.9, lambda end: None, words_at_ms=160)
    silence_ms = (decisions[-1][0] - 30 * FRAME) * 1000
    assert decisions[-1][1] is Decision.END_OF_TURN and 200 <= silence_ms < 232
    assert policy.turn_end.text_prob is None and not policy.words_unfinished


def test_words_for_a_silence_the_user_broke_are_ignored():
    policy = SemanticTurnPolicy(text_gate=True)
    feed(policy, "s" * 30 + "." * 6)
    stale_end = policy.last_speech
    feed(policy, "s" * 5, t0=36 * FRAME)
    assert policy.text_score(41 * FRAME, stale_end, 0.9) is Decision.NONE
    assert policy.state is TurnState.USER_SPEAKING and not policy.words_unfinished


def test_without_the_gate_words_change_nothing():
    policy = SemanticTurnPolicy()
    decisions = converse_with_words(policy, "s" * 30 + "." * 40, 0.9, lambda end: 0.0, words_at_ms=100)
    assert decisions[-1][1] is Decision.END_OF_TURN and policy.turn_end.text_prob is None


def test_the_words_threshold_is_validated():
    with pytest.raises(ValueError, match="text_eot_threshold"):
        TurnOptions(text_eot_threshold=0.0)


def test_sure_words_take_the_turn_while_the_audio_still_says_incomplete():
    # "... in the solar system?": Smart Turn says "incomplete" for a second, the words are plainly done.
    pattern, incomplete_audio = "s" * 30 + "." * 80, 0.2
    sure = SemanticTurnPolicy(text_gate=True)  # the default mark, 0.7
    decisions = converse_with_words(sure, pattern, incomplete_audio, lambda end: 0.75, words_at_ms=64)
    silence_ms = (decisions[-1][0] - 30 * FRAME) * 1000
    # At the sure words' floor (400 ms), not before, and not at text_min_silence_ms (600 ms).
    assert decisions[-1][1] is Decision.END_OF_TURN and 400 <= silence_ms < 432
    # Once the words are sure (at 64 ms here) the audio model is no longer asked: no score to report.
    assert sure.turn_end.by == "words" and sure.turn_end.text_prob == 0.75 and sure.turn_end.eot_prob is None
    # Words below the sure mark still wait for the audio ("complete" never comes: the maximum silence).
    unsure = SemanticTurnPolicy(text_gate=True)
    converse_with_words(unsure, pattern, incomplete_audio, lambda end: 0.6, words_at_ms=64)
    assert unsure.turn_end.by == "max_silence"
    # Off (the audio model must agree) when None.
    off = SemanticTurnPolicy(TurnOptions(text_eot_sure=None), text_gate=True)
    converse_with_words(off, pattern, incomplete_audio, lambda end: 0.99, words_at_ms=64)
    assert off.turn_end.by == "max_silence"
    # With the audio saying "complete" too: sure words still end at 400 ms (the audio, first asked at
    # 200 ms, is not asked once the words are sure at 64 ms); merely finished ones at 600 ms.
    for words_prob, floor_ms, by in ((0.75, 400, "words"), (0.3, 600, "model")):
        policy = SemanticTurnPolicy(text_gate=True)
        decisions = converse_with_words(policy, pattern, 0.9, lambda end, prob=words_prob: prob, words_at_ms=64)
        assert policy.turn_end.by == by and floor_ms <= (decisions[-1][0] - 30 * FRAME) * 1000 < floor_ms + 32
    for bad in (0.001, 1.0):  # below text_eot_threshold (0.01), or never reachable
        with pytest.raises(ValueError, match="text_eot_sure"):
            TurnOptions(text_eot_sure=bad)


def test_two_frames_of_silence_meet_a_64_ms_mark_wherever_they_fall():
    # Frame times as the virtual clock stamps them (k * 512 / 16000 s): a float holds them only
    # nearly, and plain subtraction made two frames of silence 63.99999999999999 ms at some positions.
    options = TurnOptions(endpoint_silence_ms=64.0)
    late = []
    for start in range(0, 2000, 3):
        policy = VadTurnPolicy(options)
        for k in range(start, start + 40):
            now = (k + 1) * 512 / 16000
            speech = k < start + 12
            if policy.update(now, 0.95 if speech else 0.02, 0.1 if speech else 0.0) is Decision.END_OF_TURN:
                if k != start + 12 + 1:  # the second silent frame after the twelfth speech frame
                    late.append(start)
                break
    assert late == []
    assert elapsed_ms(2 * 512 / 16000 * 11, 2 * 512 / 16000 * 12) == 64.0
