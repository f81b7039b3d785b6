"""Engines shared, conversations isolated: ``new_conversation()`` views over one loaded pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.runtime.cascade.pipeline import CascadePipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cascade(cascade_package):
    return CascadePipeline(cascade_package)


def test_cascade_views_share_the_engines_and_keep_their_own_conversation(cascade):
    a, b = cascade.new_conversation(), cascade.new_conversation()
    assert a.llm.prefill_runner is b.llm.prefill_runner is cascade.llm.prefill_runner  # loaded once
    assert a.llm.tokenizer is cascade.llm.tokenizer and a.asr is cascade.asr and a.voice is cascade.voice
    reply, _, _ = a.answer("What is the capital of France?")
    assert "Paris" in reply
    assert [m["role"] for m in a.history] == ["user", "assistant"]
    assert b.history == [] and cascade.history == []  # nothing of a's turn reached the others
    assert b.llm.tokens == [] and cascade.llm.tokens == []
    assert a.llm.tokens and not any(np.shares_memory(a.llm.state[k], b.llm.state[k]) for k in a.llm.state)
    assert a.tts is not b.tts and a.tts.rng is not b.tts.rng


def test_a_used_view_leaves_no_trace_in_the_next(cascade):
    used = cascade.new_conversation()
    used.answer("What is the capital of Japan?")
    fresh = cascade.new_conversation()
    reply, _, _ = fresh.answer("What is the capital of Italy?")
    assert "Rome" in reply and "Tokyo" not in reply
    assert "Japan" not in fresh.llm.tokenizer.decode(fresh.llm.tokens)  # its cache holds only its own turn


def test_freeze_omni_views_have_their_own_listen_path_and_contexts(tiny_package):
    from edgevoice.runtime.freeze_omni.pipeline import FreezeOmniPipeline

    pipeline = FreezeOmniPipeline(tiny_package)
    a, b = pipeline.new_conversation(), pipeline.new_conversation()
    assert a.llm.runner is b.llm.runner is pipeline.llm.runner
    assert a.listener is not b.listener and a.speech.sampler is not b.speech.sampler
    a.listener.begin_turn(a.conversation)
    a.listener.hear(np.zeros(a.chunk_samples, np.float32))
    a.listener.hear(np.full(a.chunk_samples, 0.1, np.float32))
    assert a.listener.chunks == 2 and b.listener.chunks == 0 and not b.listener.listening
    assert a.listener.context.position > b.conversation.position == pipeline.conversation.position
    heard = a.listener.context.state
    assert not any(np.shares_memory(heard[k], b.conversation.state[k]) for k in heard)
