"""The scorecard on hand-made event lists: every number is known in advance."""

from __future__ import annotations

import sys

import pytest

from edgevoice.errors import MissingDependencyError
from edgevoice.eval.score import score_conversation, stats, summarize
from edgevoice.eval.synth import UserSpan
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import Event


def e(time: float, kind: str, turn: int = 1, **data) -> Event:
    return Event(time, kind, turn, data)


def test_a_cut_off_in_a_pause_then_the_real_answer():
    """The agent takes the turn in the user's 1.2 s thinking pause (a false cut-off), the user goes
    on (a barge-in, theirs: no self-interruption), and the answer comes 0.25 s after the last word.
    The live estimate follows events.estimated_live_first_audio: endpoint 4.2, first audio 4.25,
    critical compute 0.3 + 0.2 + 0.1 from the transcript at 4.1 -> 0.5 s not hidden by the silence,
    so 0.25 + 0.5 = 0.75 s after the last word."""
    span = UserSpan(1, "say", "Can you tell me ... the capital", ((0.5, 1.5), (2.7, 4.0)), ((1.5, 2.7),),
                    expect="Paris")
    events = [
        e(0.55, ev.USER_SPEECH_START),
        e(2.0, ev.TURN_TAKEN),
        e(2.05, ev.FIRST_AUDIO),  # the cut-in: before the user's last word, not the answer
        e(2.8, ev.BARGE_IN, stage="pause"),
        e(2.9, ev.USER_SPEECH_START, turn=2),
        e(4.1, ev.TRANSCRIPT, turn=2, text="what is the capital of France", reply=7, compute_s=0.3),
        e(4.1, ev.REPLY_TEXT, turn=2, text="Paris is the capital.", reply=7, first_phrase_compute_s=0.2),
        e(4.1, ev.FIRST_SPEECH_CHUNK, turn=2, reply=7, compute_s=0.1),
        e(4.2, ev.USER_SPEECH_END, turn=2),
        e(4.2, ev.TURN_TAKEN, turn=2),
        e(4.25, ev.FIRST_AUDIO, turn=2),
        e(6.0, ev.BARGE_IN, turn=2, stage="pause"),  # nobody spoke: the agent heard itself
    ]
    result = score_conversation([span], events, [(2.05, 2.8), (4.25, 7.0)])
    [turn] = result["turns"]
    assert turn["response_onset_s"] == 0.25 and turn["response_onset_estimated_live_s"] == 0.75
    assert turn["transcript"] == "what is the capital of France" and turn["correct"] is True
    assert result["pauses"] == [{"item": 1, "pause_s": [1.5, 2.7], "cut_off": True, "turn_taken_at_s": 2.0}]
    assert result["self_interruptions"] == {"count": 1, "at_s": [6.0], "phantom_user_turns": 0}
    summary = result["summary"]
    assert (summary["false_cutoffs"], summary["pauses"], summary["unanswered"]) == (1, 1, 0)
    assert summary["answers_correct"] == summary["answers_expected"] == 1


def test_a_pause_the_agent_waits_through_is_not_a_cut_off():
    span = UserSpan(0, "say", "x", ((0.5, 1.5), (2.7, 4.0)), ((1.5, 2.7),))
    late = [e(3.05, ev.TURN_TAKEN)]  # 0.35 s after the pause ended: past the grace, a turn taken on later speech
    assert not score_conversation([span], late, [])["pauses"][0]["cut_off"]
    grace = [e(2.95, ev.TURN_TAKEN)]  # 0.25 s after the pause ended: still decided inside it
    assert score_conversation([span], grace, [])["pauses"][0]["cut_off"]


def test_barge_in_user_backchannel_agent_backchannel_and_early_tools():
    spans = [UserSpan(1, "say", "Tell me about cats", ((0.5, 2.0),), ()),
             UserSpan(3, "backchannel", "mhm", ((3.0, 3.35),), ()),
             UserSpan(5, "barge_in", "Wait, dogs", ((5.0, 6.5),), (), expect="dog")]
    agent = [(2.3, 3.4), (3.9, 5.12), (6.9, 8.0)]
    events = [
        e(1.0, ev.AGENT_BACKCHANNEL, stage="start", text="mhm"),  # over the user's voice
        e(1.1, ev.AGENT_BACKCHANNEL, stage="cut"),
        e(2.3, ev.FIRST_AUDIO),
        e(3.1, ev.BARGE_IN, stage="pause"),  # the "mhm": paused, then resumed at 3.9
        e(5.1, ev.BARGE_IN, stage="pause"),
        e(5.6, ev.USER_SPEECH_START, turn=2),
        e(5.62, ev.CANCEL_DONE, turn=1),
        e(6.7, ev.REPLY_TEXT, turn=2, text="Dogs are loyal."),
        e(6.9, ev.FIRST_AUDIO, turn=2),
        e(6.0, ev.TOOL_CALL, turn=2, name="weather", call_id="a", early=True),
        e(6.1, ev.TOOL_CALL, turn=2, name="time", call_id="b", early=True),
        e(6.6, "early_tool_used", turn=2, name="weather", call_id="a"),
        e(6.6, "early_tool_dropped", turn=2, name="time", call_id="b", reason="not asked by the reply"),
        e(6.8, ev.TOOL_CALL, turn=2, name="lights", call_id="c", early=False),
    ]
    result = score_conversation(spans, events, agent)
    assert result["barge_ins"] == [{"item": 5, "onset_s": 5.0, "agent_was_speaking": True, "time_to_silence_s": 0.12,
                                    "detected_after_s": 0.1, "reply_cancelled": True}]
    assert result["user_backchannels"] == [{"item": 3, "onset_s": 3.0, "over_agent": True, "tolerated": True,
                                            "agent_stopped": False, "agent_audible_after": True}]
    assert [t["response_onset_s"] for t in result["turns"]] == [0.3, 0.4]
    assert [t["correct"] for t in result["turns"]] == [None, True]
    assert result["agent_backchannels"] == {"produced": 1, "cut": 1, "over_user_speech": 1, "at_s": [1.0],
                                            "phrases": ["mhm"]}
    assert result["early_tool_calls"] == {"calls": 2, "used": 1, "dropped": 1}
    assert result["self_interruptions"]["count"] == 0
    summary = result["summary"]
    assert summary["barge_in_time_to_silence_s"] == {"median": 0.12, "max": 0.12, "n": 1}
    assert (summary["user_backchannels_tolerated"], summary["early_tool_calls_used"]) == (1, 1)


def test_a_backchannel_taken_as_a_barge_in_is_not_tolerated_and_one_into_silence_is_not_over_the_agent():
    spans = [UserSpan(0, "say", "q", ((0.5, 2.0),), ()),
             UserSpan(2, "backchannel", "mhm", ((3.0, 3.35),), ()),
             UserSpan(4, "backchannel", "mhm", ((9.0, 9.35),), ())]
    events = [e(2.3, ev.FIRST_AUDIO), e(3.1, ev.BARGE_IN, stage="pause"), e(3.7, ev.USER_SPEECH_START, turn=2),
              e(3.72, ev.CANCEL_DONE)]
    result = score_conversation(spans, events, [(2.3, 3.1)])
    taken, silent = result["user_backchannels"]
    assert taken["over_agent"] and taken["agent_stopped"] and not taken["tolerated"]
    assert not silent["over_agent"] and not silent["tolerated"]
    assert result["summary"]["user_backchannels_over_agent"] == 1


def test_no_answer_counts_as_unanswered_and_wrong():
    spans = [UserSpan(0, "say", "q", ((0.5, 2.0),), (), expect_regex=r"\bParis\b")]
    result = score_conversation(spans, [e(1.0, ev.USER_SPEECH_START)], [])
    assert result["turns"][0]["response_onset_s"] is None and result["turns"][0]["correct"] is False
    assert result["summary"]["unanswered"] == 1 and result["summary"]["response_onset_s"]["n"] == 0


def test_stats_and_summaries_over_conversations():
    assert stats([0.4, None, 0.1, 0.2, 0.3]) == {"median": 0.25, "p90": 0.4, "n": 4}
    assert stats([]) == {"median": None, "p90": None, "n": 0}
    one = score_conversation([UserSpan(0, "say", "q", ((0.5, 1.0),), ())], [e(1.5, ev.FIRST_AUDIO)], [(1.5, 2.0)])
    two = score_conversation([UserSpan(0, "say", "q", ((0.5, 1.0),), ())], [e(1.2, ev.FIRST_AUDIO)], [(1.2, 2.0)])
    assert summarize([one, two])["response_onset_s"] == {"median": 0.35, "p90": 0.5, "n": 2}


def test_plots_without_matplotlib_name_the_extra(monkeypatch):
    from edgevoice.eval.plot import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgevoice\[eval\]'"):
        require_matplotlib()


def test_the_terminal_tables_show_each_conversation_and_the_scorecard(tmp_path):
    from edgevoice.cli.eval_cmd import render
    from rich.console import Console

    span = UserSpan(1, "say", "q", ((0.5, 1.5), (2.7, 4.0)), ((1.5, 2.7),), expect="Paris")
    scored = score_conversation([span], [e(2.0, ev.TURN_TAKEN), e(4.3, ev.REPLY_TEXT, text="Paris."),
                                         e(4.3, ev.FIRST_AUDIO)], [(4.3, 5.0)])
    conversation = {"name": "thinking_pause", "options": {"agent_backchannels": False}, "timeline_png": None, **scored}
    console = Console(record=True, width=80)
    render(console, {"conversations": [conversation], "summary": summarize([scored])}, tmp_path)
    text = console.export_text()
    assert "thinking_pause" in text and "1 turn ·" in text and "cut-offs 1/1" in text and "answers 1/1" in text
    assert "false cut-offs at thinking pauses" in text and "1 of 1" in text
    assert "0.300 / 0.300  (n=1)" in text  # the virtual-clock onset: 4.3 - 4.0
