"""The scorecard: what the agent did at each scripted moment, from the events and what it played.

Pure functions of three things: the script's ground truth (``UserSpan``: where the user's words
and pauses really are), the session's events, and the stretches when the agent was audible. So
the numbers are exact on the virtual clock and the scorer is tested on hand-made event lists.

Per behaviour (docs/eval.md defines every field):

- response onset: end of the user's last word -> the agent's first audio of the reply
  (``first_audio``), on the virtual clock (compute takes no time there) and as estimated for a
  live run (compute added back along the reply's critical path, ``estimated_live_first_audio``);
- false cut-off: the agent took the turn (``turn_taken``) inside a scripted thinking pause;
- barge-in: user onset -> the agent's audio stops; whether the reply was cancelled;
- user backchannel tolerated: an "mhm" over the agent's speech did not cancel the reply;
- agent backchannels: produced, cut (the user resumed), and any that started over the user's speech;
- self-interruption: the agent paused its audio (``barge_in``) while the user made no sound;
- early tool calls: ``tool_call`` events marked ``early``, and which ``early_tool_used`` / ``_dropped`` name;
- correctness: the answer matches the script's ``expect`` (substring) or ``expect_regex``.
"""

from __future__ import annotations

import math
import re
import statistics
from typing import Iterable, Sequence

from edgevoice.eval.script import RESPONDED_KINDS
from edgevoice.eval.synth import UserSpan
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import Event

CUTOFF_GRACE_S = 0.3  # a turn taken this soon after a pause ends was still decided in it (onset frames)
BARGE_DETECT_EARLY_S = 0.05  # a barge_in event may precede the scripted onset by the mic's block
# The runtime's early tool-call events (edgevoice.runtime.events), by their spelling.
EARLY_TOOL_USED, EARLY_TOOL_DROPPED = "early_tool_used", "early_tool_dropped"
USER_SOUND_TAIL_S = 0.6  # after the user's last sound, a barge_in can still be theirs (the VAD's hangover)
STOPPED_WITHIN_S = 1.0  # after a user backchannel, a new user turn this soon means it was taken as a barge-in
Spans = Sequence[tuple[float, float]]


def score_conversation(spans: Sequence[UserSpan], events: Sequence[Event], agent_spans: Spans) -> dict:
    """Every behaviour of one conversation, item by item, and its summary."""
    events = sorted(events, key=lambda e: e.time)
    result = {
        "turns": responses(spans, events),
        "pauses": pauses(spans, events),
        "barge_ins": barge_ins(spans, events, agent_spans),
        "user_backchannels": user_backchannels(spans, events, agent_spans),
        "agent_backchannels": agent_backchannels(spans, events),
        "self_interruptions": self_interruptions(spans, events),
        "early_tool_calls": early_tool_calls(events),
    }
    result["summary"] = summarize([result])
    return result


# --- per behaviour ------------------------------------------------------------------------------


def _window_end(spans: Sequence[UserSpan], span: UserSpan) -> float:
    """Where the agent's answer to ``span`` can no longer be: the next user turn's start."""
    later = [s.start for s in spans if s.kind in RESPONDED_KINDS and s.start > span.start]
    return min(later, default=math.inf)


def _first(events: Iterable[Event], kind: str, start: float, end: float) -> Event | None:
    return next((e for e in events if e.kind == kind and start <= e.time < end), None)


def _last(events: Iterable[Event], kind: str, start: float, end: float) -> Event | None:
    found = [e for e in events if e.kind == kind and start <= e.time < end]
    return found[-1] if found else None


def responses(spans: Sequence[UserSpan], events: Sequence[Event]) -> list[dict]:
    """Per user turn: when the agent answered, what it heard and said, and whether that was right."""
    estimates = ev.estimated_live_first_audio(list(events))
    endpoints = {e.turn: e.time for e in events if e.kind == ev.USER_SPEECH_END}
    out = []
    for span in (s for s in spans if s.kind in RESPONDED_KINDS):
        end = _window_end(spans, span)
        audio = _first(events, ev.FIRST_AUDIO, span.end, end)
        onset = None if audio is None else audio.time - span.end
        live = None
        if audio is not None and audio.turn in estimates and audio.turn in endpoints:
            # The estimate counts from the endpoint; what compute adds is the same from the last word.
            unhidden = estimates[audio.turn] - (audio.time - endpoints[audio.turn])
            live = onset + max(0.0, unhidden)
        transcript = _last(events, ev.TRANSCRIPT, span.start, end)
        reply = _last(events, ev.REPLY_TEXT, span.start, end)
        reply_text = None if reply is None else reply.data.get("text", "")
        out.append({"item": span.index, "kind": span.kind, "text": span.text, "speech_end_s": _r(span.end),
                    "response_onset_s": _r(onset), "response_onset_estimated_live_s": _r(live),
                    "transcript": None if transcript is None else transcript.data.get("text", ""),
                    "reply": reply_text, "expected": span.expect or span.expect_regex,
                    "correct": correct(span, reply_text)})
    return out


def correct(span: UserSpan, reply: str | None) -> bool | None:
    """None when the script expects nothing; else whether the reply contains the expected answer."""
    if span.expect is None and span.expect_regex is None:
        return None
    if not reply:
        return False
    if span.expect is not None and span.expect.lower() not in reply.lower():
        return False
    return span.expect_regex is None or re.search(span.expect_regex, reply, re.IGNORECASE) is not None


def pauses(spans: Sequence[UserSpan], events: Sequence[Event]) -> list[dict]:
    """Per scripted thinking pause: did the agent take the turn inside it?"""
    out = []
    for span in spans:
        for start, end in span.pauses:
            taken = _first(events, ev.TURN_TAKEN, start, end + CUTOFF_GRACE_S)
            out.append({"item": span.index, "pause_s": [_r(start), _r(end)], "cut_off": taken is not None,
                        "turn_taken_at_s": None if taken is None else _r(taken.time)})
    return out


def _covering(agent_spans: Spans, at: float) -> tuple[float, float] | None:
    return next(((a, b) for a, b in agent_spans if a <= at < b), None)


def barge_ins(spans: Sequence[UserSpan], events: Sequence[Event], agent_spans: Spans) -> list[dict]:
    """Per scripted barge-in: was the agent speaking, how soon it fell silent, was the reply cancelled."""
    out = []
    for span in (s for s in spans if s.kind == "barge_in"):
        speaking = _covering(agent_spans, span.start)
        detected = _first(events, ev.BARGE_IN, span.start - BARGE_DETECT_EARLY_S, span.end)
        cancelled = _first(events, ev.CANCEL_DONE, span.start, _window_end(spans, span))
        out.append({"item": span.index, "onset_s": _r(span.start), "agent_was_speaking": speaking is not None,
                    "time_to_silence_s": None if speaking is None else _r(speaking[1] - span.start),
                    "detected_after_s": None if detected is None else _r(detected.time - span.start),
                    "reply_cancelled": cancelled is not None})
    return out


def user_backchannels(spans: Sequence[UserSpan], events: Sequence[Event], agent_spans: Spans) -> list[dict]:
    """Per user "mhm": was the agent speaking, and did it carry on (tolerated) or give up its turn?"""
    out = []
    for span in (s for s in spans if s.kind == "backchannel"):
        over_agent = _covering(agent_spans, span.start) is not None
        cancelled = _first(events, ev.CANCEL_DONE, span.start, _window_end(spans, span))
        new_turn = _first(events, ev.USER_SPEECH_START, span.start, span.end + STOPPED_WITHIN_S)
        stopped = cancelled is not None or new_turn is not None
        resumed = any(b > span.end for _, b in agent_spans)
        out.append({"item": span.index, "onset_s": _r(span.start), "over_agent": over_agent,
                    "tolerated": over_agent and not stopped, "agent_stopped": stopped,
                    "agent_audible_after": resumed})
    return out


def _user_sounding(spans: Sequence[UserSpan], at: float, tail: float = 0.0) -> bool:
    return any(a - BARGE_DETECT_EARLY_S <= at <= b + tail for s in spans for a, b in s.segments)


def agent_backchannels(spans: Sequence[UserSpan], events: Sequence[Event]) -> dict:
    starts = [e for e in events if e.kind == ev.AGENT_BACKCHANNEL and e.data.get("stage") == "start"]
    cuts = [e for e in events if e.kind == ev.AGENT_BACKCHANNEL and e.data.get("stage") == "cut"]
    return {"produced": len(starts), "cut": len(cuts),
            "over_user_speech": sum(_user_sounding(spans, e.time) for e in starts),
            "at_s": [_r(e.time) for e in starts], "phrases": [e.data.get("text") for e in starts]}


def self_interruptions(spans: Sequence[UserSpan], events: Sequence[Event]) -> dict:
    """The agent stopped for a sound that was not the user's (its own echo, a backchannel's tail)."""
    pauses_ = [e.time for e in events if e.kind == ev.BARGE_IN and not _user_sounding(spans, e.time, USER_SOUND_TAIL_S)]
    phantom = [e.time for e in events if e.kind == ev.USER_SPEECH_START
               and not _user_sounding(spans, e.time, USER_SOUND_TAIL_S)]
    return {"count": len(pauses_), "at_s": [_r(t) for t in pauses_], "phantom_user_turns": len(phantom)}


def early_tool_calls(events: Sequence[Event]) -> dict:
    """``tool_call`` events with a true ``early`` (started while the user still spoke), and of those
    the ones an ``early_tool_used`` event names (the committed reply asked for the same call) or an
    ``early_tool_dropped`` event drops; zero where the runtime does not mark calls."""
    calls = {e.data.get("call_id") for e in events if e.kind == ev.TOOL_CALL and e.data.get("early")}
    used = {e.data.get("call_id") for e in events if e.kind == EARLY_TOOL_USED} & calls
    dropped = {e.data.get("call_id") for e in events if e.kind == EARLY_TOOL_DROPPED} & calls
    return {"calls": len(calls), "used": len(used), "dropped": len(dropped)}


# --- summaries ------------------------------------------------------------------------------------


def summarize(results: Sequence[dict]) -> dict:
    """The behaviours over one or more conversations' results (``score_conversation``'s)."""
    turns = [t for r in results for t in r["turns"]]
    paused = [p for r in results for p in r["pauses"]]
    barges = [b for r in results for b in r["barge_ins"]]
    mhms = [u for r in results for u in r["user_backchannels"]]
    graded = [t["correct"] for t in turns if t["correct"] is not None]
    silences = [b["time_to_silence_s"] for b in barges if b["time_to_silence_s"] is not None]
    return {
        "turns": len(turns),
        "unanswered": sum(t["response_onset_s"] is None for t in turns),
        "response_onset_s": stats(t["response_onset_s"] for t in turns),
        "response_onset_estimated_live_s": stats(t["response_onset_estimated_live_s"] for t in turns),
        "pauses": len(paused),
        "false_cutoffs": sum(p["cut_off"] for p in paused),
        "barge_ins": len(barges),
        "barge_ins_over_agent": sum(b["agent_was_speaking"] for b in barges),
        "barge_in_time_to_silence_s": {"median": _r(statistics.median(silences)) if silences else None,
                                       "max": _r(max(silences)) if silences else None, "n": len(silences)},
        "barge_ins_cancelled": sum(b["reply_cancelled"] for b in barges if b["agent_was_speaking"]),
        "user_backchannels": len(mhms),
        "user_backchannels_over_agent": sum(u["over_agent"] for u in mhms),
        "user_backchannels_tolerated": sum(u["tolerated"] for u in mhms),
        "agent_backchannels": sum(r["agent_backchannels"]["produced"] for r in results),
        "agent_backchannels_cut": sum(r["agent_backchannels"]["cut"] for r in results),
        "agent_backchannels_over_user": sum(r["agent_backchannels"]["over_user_speech"] for r in results),
        "self_interruptions": sum(r["self_interruptions"]["count"] for r in results),
        "phantom_user_turns": sum(r["self_interruptions"]["phantom_user_turns"] for r in results),
        "early_tool_calls": sum(r["early_tool_calls"]["calls"] for r in results),
        "early_tool_calls_used": sum(r["early_tool_calls"]["used"] for r in results),
        "early_tool_calls_dropped": sum(r["early_tool_calls"]["dropped"] for r in results),
        "answers_expected": len(graded),
        "answers_correct": sum(graded),
    }


def stats(values: Iterable[float | None]) -> dict:
    """Median and p90 (nearest rank) of the values that are there, and how many there were."""
    present = sorted(v for v in values if v is not None)
    if not present:
        return {"median": None, "p90": None, "n": 0}
    p90 = present[min(len(present) - 1, int(0.9 * len(present)))]
    return {"median": _r(statistics.median(present)), "p90": _r(p90), "n": len(present)}


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
