"""Turn-taking decisions on scripted speech-probability tracks (32 ms frames)."""

from __future__ import annotations

import pytest

from edgevoice.runtime.turns import Decision, TurnOptions, TurnState, VadTurnPolicy

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


def agent_speaking() -> VadTurnPolicy:
    policy = VadTurnPolicy()
    feed(policy, "s" * 20 + "." * 25)
    policy.agent_started_speaking()
    assert policy.state is TurnState.SPEAKING
    return policy


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
