"""HeadTurnPolicy without audio: the gate from chunk levels, the head's verdicts, the agent's floor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgevoice.runtime.freeze_omni.head_policy import HeadTurnOptions, HeadTurnPolicy, level_db
from edgevoice.runtime.turns import Decision, TurnState

LOUD, QUIET = -20.0, -80.0
KEEP, RESPOND, DISMISS = np.array([0.8, 0.1, 0.1]), np.array([0.2, 0.7, 0.1]), np.array([0.2, 0.1, 0.7])


def feed(policy: HeadTurnPolicy, levels: list[float], start: float = 0.0) -> list[Decision]:
    return [policy.gate(start + 0.16 * (i + 1), level) for i, level in enumerate(levels)]


def test_level_db():
    assert level_db(np.zeros(2560, np.float32)) == -math.inf
    assert level_db(np.full(2560, 0.1, np.float32)) == pytest.approx(-20.0)


def test_an_onset_opens_the_gate_and_starts_a_user_turn():
    policy = HeadTurnPolicy()
    assert feed(policy, [QUIET, QUIET, LOUD]) == [Decision.NONE, Decision.NONE, Decision.USER_STARTED]
    assert policy.listening and policy.state is TurnState.USER_SPEAKING and not policy.overlap
    assert policy.speech_start == pytest.approx(0.32)


def test_respond_ends_the_turn_and_later_verdicts_are_ignored():
    policy = HeadTurnPolicy()
    feed(policy, [LOUD])
    assert policy.head(KEEP) is Decision.NONE
    assert policy.head(RESPOND) is Decision.END_OF_TURN
    assert policy.state is TurnState.THINKING and not policy.listening
    assert policy.head(RESPOND) is Decision.NONE


def test_dismiss_checks_class_two_first():
    policy = HeadTurnPolicy()
    feed(policy, [LOUD])
    # p[1] > 0.5 would be impossible alongside p[2] > 0.5; the rule still checks dismiss first.
    assert policy.head(DISMISS) is Decision.DISMISS
    assert policy.state is TurnState.LISTENING and not policy.listening


def test_the_gate_closing_on_an_undecided_turn_dismisses_it():
    policy = HeadTurnPolicy(HeadTurnOptions(gate_close_ms=480))
    decisions = feed(policy, [LOUD, LOUD, QUIET, QUIET, QUIET])
    assert decisions == [Decision.USER_STARTED, Decision.NONE, Decision.NONE, Decision.NONE, Decision.DISMISS]
    assert not policy.gate_open and policy.state is TurnState.LISTENING


def test_no_new_turn_until_the_gate_closes_after_a_decision():
    policy = HeadTurnPolicy(HeadTurnOptions(gate_close_ms=320))
    feed(policy, [LOUD])
    policy.head(DISMISS)
    assert feed(policy, [LOUD, LOUD], 0.16) == [Decision.NONE, Decision.NONE]  # the same sound goes on
    assert feed(policy, [QUIET, QUIET, LOUD], 0.48) == [Decision.NONE, Decision.NONE, Decision.USER_STARTED]


def test_respond_over_the_agent_is_a_barge_in_and_dismiss_a_backchannel():
    policy = HeadTurnPolicy(HeadTurnOptions(gate_close_ms=160))
    feed(policy, [LOUD])
    policy.head(RESPOND)
    policy.agent_started_speaking()
    feed(policy, [QUIET, LOUD], 0.16)
    assert policy.overlap and policy.state is TurnState.SPEAKING
    assert policy.head(DISMISS) is Decision.DISMISS and policy.state is TurnState.SPEAKING  # it keeps speaking
    feed(policy, [QUIET, LOUD], 0.48)
    assert policy.head(RESPOND) is Decision.BARGE_IN and policy.state is TurnState.THINKING


def test_the_agent_finishing_mid_turn_makes_respond_an_end_of_turn():
    policy = HeadTurnPolicy()
    feed(policy, [LOUD])
    policy.head(RESPOND)
    policy.agent_started_speaking()
    feed(policy, [QUIET] * 10 + [LOUD], 0.16)
    policy.agent_finished()
    assert policy.state is TurnState.USER_SPEAKING
    assert policy.head(RESPOND) is Decision.END_OF_TURN


def test_options_are_checked():
    with pytest.raises(ValueError):
        HeadTurnOptions(gate_close_ms=0)
