"""The LLM runtime over exported ONNX graphs on onnxruntime (no torch on the runtime side)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.llm import (
    ChatFormatter,
    LlmSession,
    SamplingConfig,
    chatml,
    conversation_turns,
    fit_context,
    sample_token,
)

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


# --- host-side pieces, no model -------------------------------------------------------------


def test_runtime_module_does_not_import_torch():
    import subprocess

    code = "import sys, edgevoice.runtime.llm; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_greedy_top_k_and_top_p_sampling():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 3.0, 1.0, 2.9, -1.0])
    assert sample_token(logits, SamplingConfig(), rng) == 1
    assert sample_token(logits, SamplingConfig(temperature=1.0, top_k=1), rng) == 1
    assert sample_token(logits, SamplingConfig(temperature=1.0, top_p=0.01), rng) == 1
    draws = [sample_token(logits, SamplingConfig(temperature=1.0, top_k=2), rng) for _ in range(400)]
    assert set(draws) == {1, 3}  # top-k keeps exactly the two best
    assert abs(np.mean(np.array(draws) == 1) - 1 / (1 + np.exp(-0.1))) < 0.08  # softmax of 3.0 vs 2.9
    # probs ~(.474, .429, .064, ...) by rank: cumulative .474, .903, .967
    draws = {sample_token(logits, SamplingConfig(temperature=1.0, top_p=0.9), rng) for _ in range(400)}
    assert draws == {1, 3}
    draws = {sample_token(logits, SamplingConfig(temperature=1.0, top_p=0.95), rng) for _ in range(400)}
    assert draws == {1, 3, 2}


def test_same_seed_same_samples():
    logits = np.random.default_rng(1).standard_normal(1000)
    config = SamplingConfig(temperature=0.8, top_k=50, top_p=0.95, seed=7)

    def run(seed):
        rng = np.random.default_rng(seed)
        return [sample_token(logits, config, rng) for _ in range(30)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_bad_sampling_settings_are_user_errors():
    with pytest.raises(EdgevoiceError, match="top_p"):
        SamplingConfig(temperature=1.0, top_p=0.0)


def test_chat_template_rendering_matches_chatml_for_smollm2_template():
    template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert ChatFormatter(template).render(messages) == chatml(messages)
    default_system = ChatFormatter(template).render(messages[1:])
    assert default_system.startswith("<|im_start|>system\nYou are SmolLM<|im_end|>\n<|im_start|>user\nHi")
    assert ChatFormatter(None).render(messages, add_generation_prompt=False) == chatml(messages, False)


def test_context_policy_drops_oldest_turns_and_keeps_the_system_prompt():
    messages = [{"role": "system", "content": "S"}]
    for i in range(5):
        messages += [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"a{i}"}]
    messages.append({"role": "user", "content": "last"})
    system, turns = conversation_turns(messages)
    assert len(system) == 1 and len(turns) == 6 and turns[0][1]["content"] == "a0"
    count = lambda msgs: 10 * len(msgs)
    kept = fit_context(messages, count, budget=50)
    assert kept[0]["content"] == "S" and kept[-1]["content"] == "last" and len(kept) * 10 <= 50
    assert [m["content"] for m in kept] == ["S", "u4", "a4", "last"]
    with pytest.raises(EdgevoiceError, match="export with a larger max_context"):
        fit_context(messages, count, budget=15)


# --- through exported graphs ---------------------------------------------------------------

MAX_CONTEXT = 256


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Both LLM graphs exported at fp32 with a 256-token cache, plus the torch model they came from."""
    from edgevoice.export.to_onnx import export_onnx

    from edgevoice.recipes.llm import llm_components

    out = tmp_path_factory.mktemp("llm")
    prefill, decode = llm_components(max_context=MAX_CONTEXT, prefill_max_tokens=32, cache_dir=out)
    entries = {c.name: export_onnx(c, out / f"{c.name}.onnx", "fp32", max_batch=1) for c in (prefill, decode)}
    return SimpleNamespace(
        out=out, entries=entries, model=prefill.module.llm, tokenizer=prefill.files["llm_tokenizer.json"],
        components={"llm_prefill": prefill, "llm_decode": decode},
    )


def make_session(exported, decode_file="llm_decode.onnx", prefill_file="llm_prefill.onnx") -> LlmSession:
    from edgevoice.backends.ort import OrtRunner

    entries = exported.entries
    prefill = OrtRunner(entries["llm_prefill"], exported.out / prefill_file, threads=2)
    decode = OrtRunner(entries["llm_decode"], exported.out / decode_file, threads=2)
    return LlmSession(prefill, decode, exported.tokenizer, entries["llm_prefill"].stream)


@pytest.fixture(scope="module")
def session(exported):
    return make_session(exported)


@pytest.mark.slow
def test_graphs_pass_the_tensorrt_check(exported):
    from edgevoice.export.trt_check import check_trt_compatibility

    for name in exported.entries:
        result = check_trt_compatibility(str(exported.out / f"{name}.onnx"), "10.3")
        assert result.ok, result.summary()


@pytest.mark.slow
def test_parity_feeds_match_between_torch_and_onnxruntime(exported):
    from edgevoice.export.verify import parity

    for name, component in exported.components.items():
        result = parity(component, exported.entries[name], exported.out / f"{name}.onnx")
        assert result.ok, result
        assert max(o.max_abs_error for o in result.outputs) < 5e-4


@pytest.mark.slow
def test_greedy_continuation_through_onnxruntime_equals_torch(exported, session):
    import torch

    from edgevoice.models.llm import LlmStep

    model = exported.model
    session.reset()
    prompt = session.prompt_ids(FRANCE, max_new_tokens=20)
    ours = [t.token_id for t in session.generate(FRANCE, max_new_tokens=20, commit=False)]
    step = LlmStep(model, tokens=None)
    state = step.init_state(1)
    expected, ids, pos = [], prompt, 0
    with torch.no_grad():
        while len(expected) < len(ours):
            logits, _, *state = step.step(torch.tensor([ids]), torch.tensor([pos]), *state)
            pos += len(ids)
            expected.append(int(logits.argmax()))
            ids = expected[-1:]
    assert ours == expected


@pytest.mark.slow
def test_capital_of_france_is_paris_and_ends_at_a_stop_token(session):
    session.reset()
    pieces = list(session.generate(FRANCE, max_new_tokens=40))
    text = "".join(p.text for p in pieces)
    assert "Paris" in text
    assert session.finish_reason == "stop"
    assert not {p.token_id for p in pieces} & session.stop_ids
    assert "<|im_end|>" not in text


@pytest.mark.slow
def test_custom_stop_token_ends_the_reply(exported):
    first = make_session(exported)
    greedy = [p.token_id for p in first.generate(FRANCE, max_new_tokens=8)]
    stopping = make_session(exported)
    stopping.stop_ids = frozenset({greedy[2]})
    got = [p.token_id for p in stopping.generate(FRANCE, max_new_tokens=8)]
    assert got == greedy[:2] and stopping.finish_reason == "stop"


@pytest.mark.slow
def test_seeded_sampling_is_reproducible(session):
    config = SamplingConfig(temperature=1.0, top_k=40, top_p=0.95, seed=1234)
    messages = [{"role": "user", "content": "Tell me a short story about a robot."}]
    runs = []
    for seed in (1234, 1234, 99):
        session.reset()
        config = SamplingConfig(temperature=1.0, top_k=40, top_p=0.95, seed=seed)
        runs.append([p.token_id for p in session.generate(messages, max_new_tokens=12, sampling=config)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.slow
def test_second_turn_reuses_the_cached_prefix_and_rollback_restores_it(session):
    session.reset()
    first = session.reply(FRANCE, max_new_tokens=30)
    committed = list(session.tokens)
    history = FRANCE + [{"role": "assistant", "content": first}, {"role": "user", "content": "And of Italy?"}]
    fed = []
    original_feed = session.feed
    session.feed = lambda ids: fed.append(len(ids)) or original_feed(ids)
    try:
        second = [p.token_id for p in session.generate(history, max_new_tokens=10, commit=False)]
    finally:
        session.feed = original_feed
    # Only the tail after the cached reply is prefilled, not the whole conversation again.
    assert fed[0] < len(session.prompt_ids(history, 10)) - len(committed) + 4
    session.rollback()
    assert session.tokens == committed
    again = [p.token_id for p in session.generate(history, max_new_tokens=10, commit=False)]
    assert again == second
    snap = session.snapshot()
    session.feed([28, 29, 30])
    session.restore(snap)
    assert session.tokens == list(snap.tokens)


@pytest.mark.slow
def test_long_conversation_drops_oldest_turns_and_keeps_the_system_prompt(session):
    system = {"role": "system", "content": "You are a terse assistant."}
    messages = [system]
    for i in range(12):
        messages += [{"role": "user", "content": f"Fact number {i}: the sky was clear on day {i} of the trip."},
                     {"role": "assistant", "content": "Noted."}]
    messages.append({"role": "user", "content": "What is the capital of France?"})
    session.reset()
    text = session.reply(messages, max_new_tokens=24)
    assert session.dropped_messages > 0 and session.dropped_messages % 2 == 0
    prompt = session.tokenizer.decode(session.tokens)
    assert prompt.startswith("system\nYou are a terse assistant.")
    assert "Fact number 0:" not in prompt and "Fact number 11:" in prompt
    assert len(session.tokens) <= MAX_CONTEXT
    assert text and session.finish_reason == "stop"


@pytest.mark.slow
def test_decode_stops_at_the_cache_capacity(session):
    session.reset()
    session.feed(list(range(100, 100 + MAX_CONTEXT - 3)))
    with pytest.raises(EdgevoiceError, match="KV cache holds 256"):
        session.feed([5, 6, 7, 8])


@pytest.mark.slow
def test_int8_graph_loads_in_onnxruntime_and_agrees_with_fp32(exported):
    from edgevoice.export.quantize import (
        TRT_UNSUPPORTED_OPS,
        op_types,
        quantize_int8_weights,
    )
    from edgevoice.export.trt_check import check_trt_compatibility

    out = exported.out
    quantize_int8_weights(out / "llm_decode.onnx", out / "llm_decode.int8.onnx")
    quantize_int8_weights(out / "llm_prefill.onnx", out / "llm_prefill.int8.onnx")
    assert set(TRT_UNSUPPORTED_OPS["blockwise"]) <= op_types(out / "llm_decode.int8.onnx")
    assert not check_trt_compatibility(str(out / "llm_decode.int8.onnx"), "10.3").ok  # CPU-only, as documented
    # The 210 block MatMuls shrink ~4x; the tied embedding (Gather and LM head) stays fp32.
    assert (out / "llm_decode.int8.onnx").stat().st_size < 0.5 * (out / "llm_decode.onnx").stat().st_size
    fp32 = make_session(exported)
    int8 = make_session(exported, "llm_decode.int8.onnx", "llm_prefill.int8.onnx")
    for messages in (FRANCE, [{"role": "user", "content": "Write a haiku about the sea."}]):
        expected = [p.token_id for p in fp32.generate(messages, max_new_tokens=16)]
        assert [p.token_id for p in int8.generate(messages, max_new_tokens=16)] == expected


def test_unknown_int8_method_is_a_user_error(tmp_path):
    from edgevoice.export.quantize import quantize_int8_weights

    with pytest.raises(EdgevoiceError, match="blockwise, dynamic"):
        quantize_int8_weights(tmp_path / "a.onnx", tmp_path / "b.onnx", method="int4")
