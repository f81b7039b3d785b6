"""Freeze-Omni's listening side as the reference server runs it, on the `tiny` package.

- Onset replay: Freeze-Omni ``web/vad.py`` ``VAD.predict`` returns the last 6 chunks of its fbank
  history at a VAD start ('feature_last_chunk'); ``bin/server.py`` ``send_pcm`` feeds them to the LLM
  one ``llm_prefill`` call each (the first as 'sl', with the turn prefix and prompt), with
  ``is_first_pack=True``, which forces ``outputs['stat'] = 'cl'`` whatever the head said; then the
  current chunk, whose verdict counts.
- Barge-in context: ``bin/server.py`` ``send_pcm`` starts the new turn from ``generate_outputs``, the
  reply's outputs as far as it was generated; the turn prefix starts with the end-of-turn id
  (``models/audioLLM.py`` ``recognize``, stat 'sl'), which closes it.
- System prompt: ``models/pipeline.py`` ``inferencePipeline.speech_dialogue`` prefills the role given
  for the session (stat 'pre', ``set_system_role``).
"""

from __future__ import annotations

import numpy as np
import pytest
from scripted import ScriptedHead

from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.agent import Agent
from edgevoice.runtime.freeze_omni.pipeline import FreezeOmniPipeline
from edgevoice.runtime.freeze_omni.session import FoSessionOptions, FreezeOmniSession
from edgevoice.runtime.freeze_omni.speak import SegmentRule, SpeechOptions
from edgevoice.runtime.freeze_omni.turn_state import KEEP_LISTENING

RATE, OUT_RATE, CHUNK_S = 16000, 24000, 0.16
KEEP, RESPOND = [0.8, 0.1, 0.1], [0.1, 0.8, 0.1]


@pytest.fixture(scope="module")
def package(tiny_package):
    return tiny_package


def noise(seconds: float, seed: int, level: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * level).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


# --- onset replay --------------------------------------------------------------------------------


def test_onset_replays_six_chunks_one_llm_call_each_with_their_verdicts_ignored(package):
    pipeline = FreezeOmniPipeline(package)
    listener, llm = pipeline.listener, pipeline.llm
    calls: list[int] = []  # rows of each fo_llm_listen feed
    real_feed = llm.feed

    def scripted_feed(context, rows, kinds=()):
        outputs = dict(real_feed(context, rows, kinds))
        calls.append(rows.shape[0])
        # Every replayed chunk's head says "respond"; the reference forces them to keep listening.
        outputs["state_probs"] = np.array([KEEP if len(calls) == 7 else RESPOND], np.float32)
        return outputs

    llm.feed = scripted_feed
    for seed in range(9):  # 1.44 s heard before the onset: more than the 6 chunks kept
        assert listener.hear(noise(CHUNK_S, seed)) is None
    listener.begin_turn(pipeline.conversation)
    result = listener.hear(noise(CHUNK_S, 99))
    header = len(llm.facts.turn_prefix_ids) + llm.prompt_embeddings.shape[0]
    assert result.replayed == 6 and calls == [header + 2] + [2] * 6  # ~960 ms replayed, chunk by chunk
    assert result.decision == KEEP_LISTENING  # only the current chunk's verdict reaches the policy
    assert result.position == pipeline.conversation.position + header + 2 * 7


def test_replayed_chunk_by_chunk_equals_one_call(package):
    """The calls differ in batching only: the LLM is causal, so the state after them is the same."""
    pipeline = FreezeOmniPipeline(package)
    for seed in range(7):
        pipeline.listener.hear(noise(CHUNK_S, seed))
    pipeline.listener.begin_turn(pipeline.conversation)
    pipeline.listener.hear(noise(CHUNK_S, 7))
    split = pipeline.listener.end_turn()
    whole = pipeline.conversation.fork()
    rows = np.concatenate([row for _, _, row in split.entries()[1:]])  # everything after the system prompt
    pipeline.llm.feed(whole, rows)
    assert whole.position == split.position
    assert np.allclose(whole.hidden, split.hidden, atol=1e-4)


# --- barge-in context ----------------------------------------------------------------------------


def barge_in(package, keeps: str):
    # Turn 1 is answered; 4 s later, while the slow reply (6 tokens/s) still plays, turn 2 interrupts it.
    parts = [silence(0.48), noise(0.96, 4), silence(4.0), noise(1.28, 5), silence(5.0)]
    audio = np.concatenate(parts)
    pipeline = FreezeOmniPipeline(package, max_new_tokens=40, speech=SpeechOptions(max_tokens=40),
                                  segments=SegmentRule(max_tokens=6))
    io = FileIO(audio, recording_rate=RATE, mic_rate=RATE, speaker_rate=OUT_RATE)
    options = FoSessionOptions(threaded=False, echo_cancellation=False, gate="energy", inline_llm_steps=1,
                               barge_in_keeps=keeps)
    session = FreezeOmniSession(pipeline, io, options, policy=ScriptedHead({1: [KEEP] * 3 + [RESPOND],
                                                                             2: [KEEP, RESPOND]}))
    with io:
        session.run(len(audio) / RATE + 1.0)
    session.close()
    events = {kind: [e for e in session.events.history(kind)] for kind in
              (ev.TURN_TAKEN, ev.USER_SPEECH_START, ev.CANCEL_DONE, ev.REPLY_TEXT, ev.BARGE_IN)}
    return session, events


def reply_rows(context, eod_row):
    """(reply rows between the first and the second user turn, first row of the second turn's header)."""
    entries = context.entries()
    headers = [i for i, e in enumerate(entries) if e[1] == "header"]
    between = [e for e in entries[headers[0] : headers[1]] if e[1] == "reply"]
    second_header = entries[headers[1]][2]
    assert np.array_equal(second_header[0], eod_row)  # the end-of-turn id closes the cut-off reply
    return sum(len(e[2]) for e in between)


def test_barge_in_keeps_the_generated_reply_in_context(package):
    session, events = barge_in(package, "generated")
    facts = session.pipeline.llm.facts
    turn_1 = events[ev.TURN_TAKEN][0].data["llm_position"]
    cut = events[ev.REPLY_TEXT][0]
    assert cut.data["cancelled"] and events[ev.BARGE_IN][0].turn == 2
    kept = events[ev.CANCEL_DONE][0].data["kept_reply_tokens"]
    assert 0 < kept <= cut.data["tokens"]
    on_top_of = events[ev.USER_SPEECH_START][1].data["on_top_of"]
    assert on_top_of == turn_1 + len(facts.response_prefix_ids) + kept
    # The answer to turn 2 was written on top of turn 1, the cut-off reply, and turn 2 (it is committed).
    committed = session.pipeline.conversation
    eod_row = session.pipeline.llm.embed([facts.eod_id])[0]
    assert reply_rows(committed, eod_row) == len(facts.response_prefix_ids) + kept
    assert events[ev.TURN_TAKEN][1].data["llm_position"] > on_top_of


def test_barge_in_can_keep_only_what_was_heard(package):
    generated = barge_in(package, "generated")[1][ev.CANCEL_DONE][0].data["kept_reply_tokens"]
    session, events = barge_in(package, "heard")
    heard = events[ev.CANCEL_DONE][0].data["kept_reply_tokens"]
    said = events[ev.BARGE_IN][0].data["said"]
    assert 0 < heard < generated  # the speaker lags the decode: less was heard than written
    assert said is not None and said.strip()  # what was heard is marked, as the cascade does
    eod_row = session.pipeline.llm.embed([session.pipeline.llm.facts.eod_id])[0]
    assert reply_rows(session.pipeline.conversation, eod_row) == len(session.pipeline.llm.facts.response_prefix_ids) + heard
    _, dropped = barge_in(package, "none")
    assert dropped[ev.CANCEL_DONE][0].data["kept_reply_tokens"] == 0
    assert dropped[ev.USER_SPEECH_START][1].data["on_top_of"] == dropped[ev.TURN_TAKEN][0].data["llm_position"]


# --- the system prompt per session ---------------------------------------------------------------


def test_system_prompt_reaches_the_cache_and_is_set_per_session(package):
    prompt = "You are a ship's cook. Answer in one sentence."
    agent = Agent(package.directory, system_prompt=prompt)
    pipeline = agent.pipeline
    assert pipeline.system_prompt == prompt
    ids = list(pipeline.llm.facts.system_prefix_ids) + pipeline.tokenizer.encode(prompt)
    assert pipeline.conversation.position == len(ids) != len(pipeline.llm.facts.system_prompt_ids)
    fresh = pipeline.llm.empty()
    pipeline.llm.feed_ids(fresh, ids)
    assert np.allclose(fresh.hidden, pipeline.conversation.hidden, atol=1e-5)  # those ids are what was prefilled
    # A conversation moves the committed point; the next session starts again from the system prompt.
    pipeline.commit(pipeline.conversation.fork())
    pipeline.llm.feed_ids(pipeline.conversation, [1, 2, 3])
    io = FileIO(silence(0.32), recording_rate=RATE, mic_rate=RATE, speaker_rate=OUT_RATE)
    FreezeOmniSession(pipeline, io, FoSessionOptions(threaded=False))
    assert pipeline.conversation.position == len(ids)
    # A session may bring its own role: the cache is prefilled with it.
    other = "Reply like a pirate."
    FreezeOmniSession(pipeline, io, FoSessionOptions(threaded=False, system_prompt=other))
    other_ids = list(pipeline.llm.facts.system_prefix_ids) + pipeline.tokenizer.encode(other)
    assert pipeline.conversation.position == len(other_ids)
    again = pipeline.llm.empty()
    pipeline.llm.feed_ids(again, other_ids)
    assert np.allclose(again.hidden, pipeline.conversation.hidden, atol=1e-5)
    assert not np.allclose(again.hidden, fresh.hidden, atol=1e-3)
