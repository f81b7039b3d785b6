"""Full-duplex conversations with the `tiny` Freeze-Omni package on the virtual clock.

The weights are seeded random, so nothing here asserts on words: only on mechanics. One test runs
the real turn-state head on the real engines unchanged; the others force the head's verdict at
chosen chunks through ``ScriptedHead`` (the random head's verdict is noise), while everything
else -- gate, encoder, LLM, speech decoder, codec, speaker -- runs for real.
"""

from __future__ import annotations

import numpy as np
import pytest
from scripted import ScriptedHead

from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.freeze_omni.pipeline import FreezeOmniPipeline
from edgevoice.runtime.freeze_omni.session import FoSessionOptions, FreezeOmniSession
from edgevoice.runtime.freeze_omni.speak import SegmentRule, SpeechOptions
from edgevoice.runtime.freeze_omni.turn_state import decide_turn_state

RATE, OUT_RATE, CHUNK_S = 16000, 24000, 0.16
MAX_TOKENS = 32  # LLM tokens per reply
SEGMENTS = SegmentRule(max_tokens=8)  # random bytes seldom hold punctuation: cut every 8 tokens
SPEECH_TOKENS = 60  # per segment: 1.5 s of audio
KEEP, RESPOND, DISMISS = [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]


@pytest.fixture(scope="module")
def package(tiny_package):
    """The `tiny` package where `edgevoice export --model tiny --target cpu` would put it (conftest)."""
    return tiny_package


def noise(seconds: float, seed: int, level: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * level).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def converse(package, parts, policy=None, extra_s: float = 1.0, pace=None, **options):
    recording = np.concatenate(parts)
    pipeline = FreezeOmniPipeline(package, max_new_tokens=MAX_TOKENS, speech=SpeechOptions(max_tokens=SPEECH_TOKENS),
                                  segments=SEGMENTS)
    io = FileIO(recording, recording_rate=RATE, mic_rate=RATE, speaker_rate=OUT_RATE, pace=pace)
    # Noise bursts stand for speech here, so the energy gate opens on them (Silero would not: test_vad_gate.py).
    options = {"threaded": False, "echo_cancellation": False, "gate": "energy", **options}
    session = FreezeOmniSession(pipeline, io, FoSessionOptions(**options), policy=policy)
    with io:
        session.run(len(recording) / RATE + extra_s)
    session.close()
    return session, io


def kinds(session) -> list[str]:
    return [e.kind for e in session.events.history()]


def first(session, kind: str, turn: int | None = None):
    found = [e for e in session.events.history(kind) if turn is None or e.turn == turn]
    assert found, f"no {kind} event (turn {turn}); events: {kinds(session)}"
    return found[0]


def played_between(io: FileIO, start_s: float, end_s: float) -> np.ndarray:
    return io.played()[int(round(start_s * OUT_RATE)) : int(round(end_s * OUT_RATE))]


def turn_start_position(session, committed: int, chunk: int) -> int:
    """LLM position after a turn's first chunk (``chunk``, its index): turn prefix ids, prompt rows, 2 rows
    per fed chunk (up to 6 replayed, then this one)."""
    facts = session.pipeline.llm.facts
    prompt_rows = session.pipeline.llm.prompt_embeddings.shape[0]
    replayed = min(session.pipeline.listener._history.maxlen - 1, chunk)  # the chunks heard before the onset
    return committed + len(facts.turn_prefix_ids) + prompt_rows + 2 * (replayed + 1)


def test_real_head_drives_the_policy_on_the_real_engines(package):
    floor = lambda seconds, seed: noise(seconds, seed, level=0.003)  # noqa: E731 - a room's noise, under the gate
    parts = [floor(0.48, 10), noise(1.6, 1), floor(2.4, 11), noise(1.6, 2), floor(2.4, 12)]
    session, _ = converse(package, parts)  # no script: the head's own verdicts decide
    states = session.events.history(ev.TURN_STATE)
    assert len(session.events.history(ev.USER_SPEECH_START)) == 2  # both bursts opened the gate
    assert {e.turn for e in states} == {1, 2}  # listening went on after the first turn ended
    for turn in (1, 2):
        chunks = [e.data["chunk"] for e in states if e.turn == turn]
        assert chunks == list(range(chunks[0], chunks[0] + len(chunks)))  # every chunk, in order
        assert [e.data["turn_start"] for e in states if e.turn == turn] == [True] + [False] * (len(chunks) - 1)
    for event in states:  # inline, each verdict arrives in the step of its own chunk
        assert event.data["chunk"] == round(event.time / CHUNK_S) - 1
    onset = first(session, ev.USER_SPEECH_START, 1)
    assert 0.48 <= onset.time <= 0.48 + 2 * CHUNK_S
    committed = session.pipeline.conversation.position  # nothing was answered: still the system prompt
    assert states[0].data["llm_position"] == turn_start_position(session, committed, states[0].data["chunk"])
    for event in states:
        probs = np.array(event.data["probs"])
        assert probs.shape == (3,) and np.all(probs >= 0) and abs(probs.sum() - 1.0) < 1e-5
        assert event.data["head"] == decide_turn_state(probs)  # the reference's rule on the graph's output
        expected = {"cl": "none", "el": "dismiss", "ss": "end_of_turn"}[event.data["head"]]
        last_of_turn = event is [e for e in states if e.turn == event.turn][-1]
        assert event.data["decision"] == expected or (not last_of_turn and expected == "none")
    # Every heard turn ended in one decision: the head's, or the gate closing on an undecided turn.
    ended = len(session.events.history(ev.DISMISSED)) + len(session.events.history(ev.TURN_TAKEN))
    assert ended == 2


def test_respond_streams_speech_tokens_into_pcm_on_the_speaker(package):
    parts = [silence(0.48), noise(1.28, 3), silence(8.0)]
    session, io = converse(package, parts, ScriptedHead({1: [KEEP] * 5 + [RESPOND]}))
    taken = first(session, ev.TURN_TAKEN, 1)
    marks = [first(session, kind, 1) for kind in ev.RESPOND_STAGES]
    assert [m.time for m in marks] == sorted(m.time for m in marks) and marks[0].time >= taken.time
    waits = [m.data["since_decision_s"] for m in marks]
    assert waits == sorted(waits) and ev.respond_breakdown(session.events.history())[1].keys() == set(ev.RESPOND_STAGES)
    audio_at = marks[-1].time
    assert not played_between(io, 0.0, audio_at - 0.02).any()  # nothing before the first PCM
    done = first(session, ev.AGENT_DONE, 1)
    spoken = played_between(io, audio_at - 0.02, done.time + 0.02)
    assert np.count_nonzero(spoken) >= 0.99 * done.data["samples"] > 0  # every reply sample was played
    reply = first(session, ev.REPLY_TEXT, 1)
    assert not reply.data["cancelled"] and reply.data["tokens"] >= 1
    assert reply.data["llm_positions"][0] == taken.data["llm_position"]
    assert session.pipeline.conversation.position == reply.data["llm_positions"][1]  # the exchange is committed
    assert session.policy.state.value == "listening" and session.idle


def test_barge_in_cancels_within_one_chunk_and_rolls_the_llm_back(package):
    # Turn 1 is answered after 4 chunks; the user speaks over the reply and the head says "respond".
    parts = [silence(0.48), noise(0.96, 4), silence(1.6), noise(1.28, 5), silence(6.0)]
    script = {1: [KEEP] * 3 + [RESPOND], 2: [KEEP, RESPOND]}
    session, io = converse(package, parts, ScriptedHead(script), inline_llm_steps=1)  # a slow LLM: 6 tokens/s
    first(session, ev.FIRST_AUDIO, 1)
    barge = first(session, ev.BARGE_IN)
    assert barge.turn == 2 and first(session, ev.USER_SPEECH_START, 2).data["over_agent"]
    done = first(session, ev.CANCEL_DONE, 1)
    assert done.time - barge.time <= CHUNK_S  # decode and speech stopped within one chunk
    cut = first(session, ev.REPLY_TEXT, 1)
    assert cut.data["cancelled"] and cut.data["tokens"] < MAX_TOKENS  # the decode itself was stopped
    answer = first(session, ev.FIRST_AUDIO, 2)
    assert not played_between(io, barge.time + 0.011, answer.time - 0.011).any()  # the old reply went quiet
    turn_1 = first(session, ev.TURN_TAKEN, 1).data["llm_position"]
    reply_start = turn_1 + len(session.pipeline.llm.facts.response_prefix_ids)
    base = first(session, ev.USER_SPEECH_START, 2).data["on_top_of"]  # the reply as generated at the onset
    assert 0 < done.data["kept_reply_tokens"] == base - reply_start <= cut.data["tokens"]
    turn_2_start = [e for e in session.events.history(ev.TURN_STATE) if e.turn == 2][0]
    assert turn_2_start.data["llm_position"] == turn_start_position(session, base, turn_2_start.data["chunk"])
    assert first(session, ev.TURN_TAKEN, 2).time == barge.time


def test_dismiss_keeps_listening_and_leaves_no_trace(package):
    # Turn 1 is dismissed; turn 2 is answered; a short burst over the reply is dismissed (a backchannel).
    parts = [silence(0.48), noise(0.8, 6), silence(1.6), noise(0.96, 7), silence(2.0), noise(0.32, 8), silence(7.0)]
    script = {1: [KEEP, DISMISS], 2: [KEEP] * 3 + [RESPOND], 3: [DISMISS]}
    session, io = converse(package, parts, ScriptedHead(script))
    dismissed = session.events.history(ev.DISMISSED)
    assert [e.turn for e in dismissed] == [1, 3] and not [e for e in session.events.history(ev.TURN_TAKEN) if e.turn == 1]
    starts = {e.turn: e.data["on_top_of"] for e in session.events.history(ev.USER_SPEECH_START)}
    assert starts[1] == starts[2]  # turn 2 forked from the same committed point: turn 1 left nothing
    assert first(session, ev.USER_SPEECH_START, 3).data["over_agent"]
    assert session.events.history(ev.BACKCHANNEL) and not session.events.history(ev.CANCEL_DONE)
    done = first(session, ev.AGENT_DONE, 2)  # the reply played to its end
    assert not first(session, ev.REPLY_TEXT, 2).data["cancelled"] and done.data["samples"] > 0


def test_threaded_session_hears_in_order_and_answers(package):
    parts = [silence(0.48), noise(0.96, 9), silence(3.5)]
    session, io = converse(package, parts, ScriptedHead({1: [KEEP] * 3 + [RESPOND]}), threaded=True, pace=2.0)
    chunks = [e.data["chunk"] for e in session.events.history(ev.TURN_STATE)]
    assert chunks and chunks == sorted(set(chunks))
    first(session, ev.TURN_TAKEN, 1)
    assert first(session, ev.FIRST_AUDIO, 1).time > first(session, ev.FIRST_TOKEN, 1).time - 1e-9
    assert np.abs(io.played()).max() > 0
    assert not session.events.history(ev.WARNING)


def test_llm_contexts_fork_and_return_to_the_committed_point(package):
    pipeline = FreezeOmniPipeline(package, max_new_tokens=8, segments=SEGMENTS)
    committed = pipeline.conversation
    kept = {k: v.copy() for k, v in committed.state.items()}
    reply = committed.fork()
    items = list(pipeline.respond(reply))
    assert items[-1].kind == "done" and reply.position > committed.position
    assert committed.position == len(pipeline.llm.facts.system_prompt_ids)
    assert all(np.array_equal(kept[k], committed.state[k]) for k in kept)  # the reply wrote only its fork
    ids = list(pipeline.llm.facts.turn_prefix_ids)
    again, fresh = reply, committed.fork()
    again.position = committed.position  # rolling back is moving the position: stale rows are masked
    assert np.allclose(pipeline.llm.feed_ids(again, ids), pipeline.llm.feed_ids(fresh, ids), atol=1e-5)
