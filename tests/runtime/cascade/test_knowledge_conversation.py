"""The knowledge memory in whole conversations on the virtual clock, with the real cascade engines.

The package is the exported cascade (``cascade_package``) plus the ``embed`` component exported
alone into a temp dir (``knowledge_fixtures.with_embed``: links, no copy of the 1.3 GB). The user
asks, in espeak's voice, when the kiosk of ``examples/kiosk.md`` opens: SmolLM2-135M cannot know
"7:45", so it answers it only with the memory. Retrieval starts on a partial transcript while the
user is still speaking; the final transcript re-checks it.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import espeak
from knowledge_fixtures import KIOSK, export_embed, with_embed, without_embed

from edgevoice import Agent, EdgevoiceError
from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.cascade.pipeline import FACTS_SEPARATOR_TOKENS
from edgevoice.runtime.knowledge import (
    FACTS_HEADER,
    KnowledgeBase,
    KnowledgeOptions,
    Passage,
)
from edgevoice.runtime.llm import LlmSession

pytestmark = pytest.mark.slow
RATE = 16000
QUESTION = "What time does the kiosk open in the morning?"
FACT = "7:45"


@pytest.fixture(scope="module")
def packages(cascade_package, tmp_path_factory):
    """(with embed, without embed) package folders over the same cascade engines."""
    embed_dir = tmp_path_factory.mktemp("embed")
    entry, _ = export_embed(embed_dir)
    full = with_embed(cascade_package, embed_dir, entry, tmp_path_factory.mktemp("with_embed"))
    bare = without_embed(full, tmp_path_factory.mktemp("without_embed"))
    return full.directory, bare.directory


@pytest.fixture(scope="module")
def remembering(packages):
    return Agent(packages[0], knowledge=KIOSK)


def recording() -> np.ndarray:
    return np.concatenate([np.zeros(8000, np.float32), espeak(QUESTION), np.zeros(24000, np.float32)])


def converse(agent: Agent) -> list[ev.Event]:
    seen: list[ev.Event] = []
    unsubscribe = agent.on(None, seen.append)
    agent.pipeline.history.clear()
    try:
        agent.run(FileIO(recording(), recording_rate=RATE))
    finally:
        unsubscribe()
    return seen


def of(events: list[ev.Event], kind: str) -> list[ev.Event]:
    return [e for e in events if e.kind == kind]


def test_with_memory_the_agent_answers_the_fact(remembering):
    events = converse(remembering)
    replies = [e.data["text"] for e in of(events, ev.REPLY_TEXT) if not e.data["cancelled"]]
    assert len(replies) == 1 and FACT in replies[0], replies
    final = [e for e in of(events, ev.KNOWLEDGE) if e.data["stage"] == "final"]
    assert final and final[-1].data["passages"][0] == 0  # the opening-hours passage, first


def test_retrieval_starts_while_the_user_speaks(remembering):
    events = converse(remembering)
    partial = [e for e in of(events, ev.KNOWLEDGE) if e.data["stage"] == "partial"]
    speech_end = of(events, ev.USER_SPEECH_END)[0].time
    assert partial and partial[0].time < speech_end, "no retrieval before the end of the user's turn"
    assert 0 in partial[-1].data["passages"]
    final = [e for e in of(events, ev.KNOWLEDGE) if e.data["stage"] == "final"][-1]
    assert final.data["early"] is True and final.data["same_passages"] is True  # the re-check agrees


def test_without_memory_the_agent_cannot_know_it(packages):
    """The same question on a package without the embedder: it runs (no memory) and misses the fact."""
    events = converse(Agent(packages[1]))
    replies = [e.data["text"] for e in of(events, ev.REPLY_TEXT) if not e.data["cancelled"]]
    assert len(replies) == 1 and FACT not in replies[0], replies
    assert not of(events, ev.KNOWLEDGE)


def test_knowledge_on_a_package_without_the_embedder_asks_for_a_re_export(packages):
    with pytest.raises(EdgevoiceError, match=r"no 'embed' component.*--force"):
        Agent(packages[1], knowledge=KIOSK)


def test_a_huge_knowledge_file_stays_within_the_context_budget(remembering):
    """2,000 passages, all offered (top_k 2000, no floor): the facts take at most max_prompt_tokens,
    and never so much that the prompt and the reply outgrow the LLM's context."""
    pipeline = remembering.pipeline
    llm: LlmSession = pipeline.llm
    real = pipeline.knowledge
    sentences = [f"Room {i} on floor {i % 9} holds the {i}th archive of maps and letters." for i in range(2000)]
    vectors = np.random.default_rng(0).standard_normal((2000, real.vectors.shape[1])).astype(np.float32)
    huge = KnowledgeBase([Passage(t, "huge.md", i) for i, t in enumerate(sentences)],
                         vectors / np.linalg.norm(vectors, axis=1, keepdims=True), real.embedder,
                         KnowledgeOptions(top_k=2000, min_score=-1.0, max_prompt_tokens=300))
    count = lambda messages: len(llm.tokenizer.encode(llm.formatter.render(messages)))
    original_system = pipeline.system_prompt
    try:
        pipeline.knowledge = huge
        bare = [{"role": "system", "content": original_system}, {"role": "user", "content": QUESTION}]
        added = count(pipeline._messages(QUESTION)) - count(bare)
        assert 250 < added <= 300 + FACTS_SEPARATOR_TOKENS, added  # filled up to the budget, not past it
        # A long system prompt (~750 tokens) leaves less room: the facts shrink so the prompt still fits.
        pipeline.system_prompt = original_system + " Be kind." * 250
        squeezed = pipeline._messages(QUESTION)
        assert FACTS_HEADER in squeezed[0]["content"]  # some facts still fit
        assert count(squeezed) <= llm.max_context - pipeline.max_new_tokens
        assert llm.prompt_ids(squeezed, pipeline.max_new_tokens) and llm.dropped_messages == 0
    finally:
        pipeline.knowledge, pipeline.system_prompt = real, original_system
