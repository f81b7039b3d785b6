"""Freeze-Omni conversations longer than the LLM cache: the oldest exchanges go, listening never stops.

The reference has no such step (``models/audioLLM.py`` grows ``past_key_values`` until the model's
context is exhausted); here a context that would pass ``max_context`` is re-prefilled with the
system prompt and the newest exchanges (``FoLlm.make_room``). The hour runs on the virtual clock
like the cascade's (tests/runtime/test_long_run.py, benchmarks/hour_bench.py): a ``Timeline`` of
spoken questions through a ``FileIO``, every stage inline, the package's Silero gate, real engines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import espeak

from edgevoice.audio.io import FileIO
from edgevoice.audio.timeline import Timeline
from edgevoice.runtime import events as ev
from edgevoice.runtime.freeze_omni.head_policy import HeadTurnPolicy
from edgevoice.runtime.freeze_omni.pipeline import FreezeOmniPipeline
from edgevoice.runtime.freeze_omni.session import FoSessionOptions, FreezeOmniSession
from edgevoice.runtime.freeze_omni.speak import SegmentRule, SpeechOptions

RATE, OUT_RATE, CHUNK_S = 16000, 24000, 0.16
QUESTIONS = ("What is the capital of France?", "Tell me a fun fact about cats.", "How many legs does a spider have?")


@pytest.fixture(scope="module")
def package(tiny_package):
    return tiny_package


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def noise(seconds: float, seed: int, level: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * level).astype(np.float32)


def test_make_room_keeps_the_system_prompt_and_the_newest_exchanges(package):
    pipeline = FreezeOmniPipeline(package)
    llm, facts = pipeline.llm, pipeline.llm.facts
    context = pipeline.conversation.fork()
    system = context.position
    rng = np.random.default_rng(0)
    header = np.concatenate([llm.embed(facts.turn_prefix_ids), llm.prompt_embeddings])
    exchange_rows = []
    while context.position + 200 <= facts.max_context:  # exchanges of 200 rows until the cache is nearly full
        audio = rng.standard_normal((200 - len(header) - 20, facts.hidden)).astype(np.float32) * 0.02
        rows = np.concatenate([header, audio])
        llm.feed(context, rows, (("header", len(header)), ("audio", len(audio))))
        reply = rng.integers(0, 256, 20).tolist()
        llm.feed_ids(context, reply)
        exchange_rows.append(np.concatenate([rows, llm.embed(reply)]))
    before = llm.trims
    new_turn = np.concatenate([header, rng.standard_normal((200, facts.hidden)).astype(np.float32) * 0.02])
    llm.feed(context, new_turn, (("header", len(header)), ("audio", 200)))  # does not fit: the oldest exchanges go
    assert llm.trims == before + 1
    kept = context.position - system - len(new_turn)
    assert kept % 200 == 0 and 0 < kept <= llm.keep_fraction * facts.max_context
    assert context.position <= facts.max_context
    # The rebuilt cache is exactly a fresh prefill of the system prompt and the newest exchanges.
    expected = pipeline.conversation.fork()
    for rows in exchange_rows[-kept // 200 :]:
        llm.feed(expected, rows)
    llm.feed(expected, new_turn)
    assert expected.position == context.position
    assert np.allclose(expected.hidden, context.hidden, atol=1e-4)
    assert context.entries()[0][1] == "system"


def test_a_monologue_longer_than_the_cache_is_heard_to_the_end(package):
    pipeline = FreezeOmniPipeline(package)
    listener, facts = pipeline.listener, pipeline.llm.facts
    listener.begin_turn(pipeline.conversation)
    chunks = facts.max_context // 2 + 40  # 2 rows a chunk: more audio than the whole cache holds
    for i in range(chunks):
        result = listener.hear(noise(CHUNK_S, i))
        assert result.position <= facts.max_context
    assert pipeline.llm.trims >= 1
    context = listener.end_turn()
    kinds = [kind for _, kind, _ in context.entries()]
    assert kinds[0] == "system" and "header" in kinds  # the turn kept its prefix and prompt rows
    reply = list(pipeline.respond(context))  # and it can still be answered
    assert reply[-1].kind == "done"


class AnswersAfter(HeadTurnPolicy):
    """The head says "respond" on the ``after``-th listened chunk of every turn (random weights decide noise)."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.seen = after, 0

    def _open(self, onset):
        self.seen = 0
        return super()._open(onset)

    def head(self, probs):
        if self.listening:
            self.seen += 1
            probs = np.array([0.1, 0.8, 0.1] if self.seen >= self.after else [0.8, 0.1, 0.1], np.float32)
        return super().head(probs)


def hour(package, minutes: float, every: float):
    line = Timeline(minutes * 60, RATE)
    clips = [espeak(q) for q in QUESTIONS]
    times = np.arange(every / 2, minutes * 60 - every, every)
    for i, at in enumerate(times):
        line.place(float(at), clips[i % len(clips)])
    pipeline = FreezeOmniPipeline(package, max_new_tokens=24, speech=SpeechOptions(max_tokens=24),
                                  segments=SegmentRule(max_tokens=12))
    io = FileIO(line, mic_rate=RATE, speaker_rate=OUT_RATE, keep_played_s=30.0)
    # No echo canceller: the FileIO plays nothing back into the mic, and it is most of the time per chunk.
    session = FreezeOmniSession(pipeline, io, FoSessionOptions(threaded=False, echo_cancellation=False),
                                policy=AnswersAfter(6))
    rss, next_mark = [], 60.0
    with io:
        while io.clock.now() < minutes * 60:
            if not session.step():
                break
            if io.clock.now() >= next_mark:
                rss.append((round(io.clock.now() / 60), rss_mb()))
                next_mark += 60.0
    session.close()
    return session, pipeline, dict(rss), len(times)


def hour_summary(package_dir: str, minutes: float, every: float) -> dict:
    """What the hour test checks, as JSON-able data (run in its own interpreter by the test)."""
    session, pipeline, rss, questions = hour(package_dir, minutes, every)
    taken = session.events.history(ev.TURN_TAKEN)
    return {"questions": questions, "taken": len(taken), "trims": pipeline.llm.trims,
            "replies": len([e for e in session.events.history(ev.REPLY_TEXT) if not e.data["cancelled"]]),
            "warnings": [e.data for e in session.events.history(ev.WARNING)],
            "max_position": max(e.data["llm_position"] for e in taken), "max_context": pipeline.llm.facts.max_context,
            "rss_mb": rss}


def in_own_process(package_dir: Path, minutes: float, every: float) -> dict:
    """``hour_summary`` in a fresh interpreter, as the cascade's hour test runs its benchmark: the RSS
    is the conversation's own, not the test process's heap after hundreds of other tests (there it
    crept up 34 MB over the hour while the same conversation alone held within 9 MB)."""
    code = (f"import importlib.util, json, sys; sys.path.insert(0, {str(Path(__file__).parents[2])!r}); "
            f"spec = importlib.util.spec_from_file_location('hour', {str(Path(__file__))!r}); "
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
            f"print(json.dumps(module.hour_summary({str(package_dir)!r}, {minutes}, {every})))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    summary["rss_mb"] = {int(minute): mb for minute, mb in summary["rss_mb"].items()}
    return summary


@pytest.mark.slow
def test_an_hour_of_conversation_stays_in_the_cache_and_in_memory(package):
    summary = in_own_process(package.directory, minutes=60.0, every=15.0)
    rss, questions = summary["rss_mb"], summary["questions"]
    print(summary)
    assert not summary["warnings"]  # no stage failed
    assert summary["taken"] == questions and summary["replies"] >= questions - 1  # every question answered
    assert summary["trims"] >= 10  # the cache was full again and again
    assert summary["max_position"] <= summary["max_context"]
    # After the first 10 minutes (the event history and the allocations settle) no new high-water
    # mark: RSS may fall and rise back as memory is returned to the system, a leak climbs past it.
    warming = [mb for minute, mb in rss.items() if minute < 10]
    settled = [mb for minute, mb in rss.items() if minute >= 10]
    assert len(settled) >= 40 and max(settled) - max(warming) < 24, rss
