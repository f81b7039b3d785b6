"""The LLM runtime over exported ONNX graphs on onnxruntime (no torch on the runtime side)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.llm import (
    DRAFT_TOKENS,
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
CACHE_STEP = 128  # the cache starts at 128 rows and grows once, to 256


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The one LLM graph exported at fp32 with a cache of 128 or 256 rows, plus the torch model it came from."""
    from edgevoice.export.to_onnx import export_onnx

    from edgevoice.recipes.llm import llm_components, load_llm

    out = tmp_path_factory.mktemp("llm")
    loaded = load_llm(max_context=MAX_CONTEXT, prefill_max_tokens=32)
    (llm,) = llm_components(loaded=loaded, cache_dir=out, cache_step=CACHE_STEP)
    entries = {llm.name: export_onnx(llm, out / "llm.onnx", "fp32", max_batch=1)}
    return SimpleNamespace(
        out=out, entries=entries, model=llm.module.llm, tokenizer=llm.files["llm_tokenizer.json"],
        components={"llm": llm}, loaded=loaded,
    )


def make_session(exported, file="llm.onnx") -> LlmSession:
    from edgevoice.backends.ort import OrtRunner

    entry = exported.entries["llm"]
    return LlmSession(OrtRunner(entry, exported.out / file, threads=2), None, exported.tokenizer, entry.stream)


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
def test_the_cache_grows_as_the_context_fills_and_answers_as_a_full_size_cache(exported, session):
    from edgevoice.backends.ort import OrtRunner

    entry = exported.entries["llm"]
    assert entry.dynamic_dims["context"].min == CACHE_STEP
    rows = [1, *range(200, 200 + CACHE_STEP - 2)]  # one row short of the first step
    session.reset()
    assert {v.shape[2] for v in session.state.values()} == {CACHE_STEP}
    session.feed(rows)
    session.commit()
    small = session.snapshot()
    grown = session.feed([4093, 198, 1780])  # crosses the step: the cache grows once
    assert {v.shape[2] for v in session.state.values()} == {MAX_CONTEXT}

    # The same tokens through the same graph with caches at full size from the start.
    runner = OrtRunner(entry, exported.out / "llm.onnx", threads=2)
    state = {name: np.zeros((1, 3, MAX_CONTEXT, 64), np.float32) for name in entry.state_inputs}
    for position, ids in ((0, rows[:32]), (32, rows[32:64]), (64, rows[64:96]), (96, rows[96:]),
                          (len(rows), [4093, 198, 1780])):
        outputs = runner.infer({"input_ids": np.array([ids]), "position": np.array([position]), **state})
        state = {entry.state[name]: outputs[name] for name in entry.state}
    np.testing.assert_allclose(grown, outputs["logits"][0], atol=2e-4)

    session.rollback()  # back to the snapshot taken before the growth: the smaller cache
    assert {v.shape[2] for v in session.state.values()} == {CACHE_STEP} and len(session.tokens) == len(rows)
    np.testing.assert_allclose(session.feed([4093, 198, 1780]), grown, atol=2e-4)
    session.restore(small)


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
    quantize_int8_weights(out / "llm.onnx", out / "llm.int8.onnx")
    assert set(TRT_UNSUPPORTED_OPS["blockwise"]) <= op_types(out / "llm.int8.onnx")
    assert not check_trt_compatibility(str(out / "llm.int8.onnx"), "10.3").ok  # CPU-only, as documented
    # The 210 block MatMuls shrink ~4x; the tied embedding (Gather and LM head) stays fp32.
    assert (out / "llm.int8.onnx").stat().st_size < 0.5 * (out / "llm.onnx").stat().st_size
    fp32 = make_session(exported)
    int8 = make_session(exported, "llm.int8.onnx")
    for messages in (FRANCE, [{"role": "user", "content": "Write a haiku about the sea."}]):
        expected = [p.token_id for p in fp32.generate(messages, max_new_tokens=16)]
        assert [p.token_id for p in int8.generate(messages, max_new_tokens=16)] == expected


def test_unknown_int8_method_is_a_user_error(tmp_path):
    from edgevoice.export.quantize import quantize_int8_weights

    with pytest.raises(EdgevoiceError, match="blockwise, dynamic"):
        quantize_int8_weights(tmp_path / "a.onnx", tmp_path / "b.onnx", method="int4")


# --- weight-only int8 in the form TensorRT parses (llm_weights="int8") -----------------------


@pytest.fixture(scope="module")
def int8_exported(exported):
    """The graph exported again through the recipe option, next to the fp32 one."""
    from edgevoice.export.to_onnx import export_onnx

    from edgevoice.recipes.llm import llm_components

    out = exported.out / "int8"
    out.mkdir()
    components = llm_components(loaded=exported.loaded, cache_dir=exported.out, llm_weights="int8", cache_step=CACHE_STEP)
    for c in components:
        export_onnx(c, out / f"{c.name}.onnx", "fp32", max_batch=1)
    return out


def test_int8_dq_rewrite_keeps_a_matmul_close_and_leaves_other_readers_float():
    import onnx
    import onnxruntime as ort
    from edgevoice.export.quantize import weights_int8_dq
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w, table = rng.standard_normal((64, 96)).astype(np.float32), rng.standard_normal((100, 64)).astype(np.float32)
    w[:, 3] *= 50  # one loud output channel: per-channel scales keep the others fine
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Gather", ["table", "ids"], ["rows"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 64]),
         helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 96]),
         helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, [2, 64])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    assert weights_int8_dq(model) == 1  # the Gather table is not a MatMul weight: stays float
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "MatMul", "Gather"]
    x = rng.standard_normal((2, 64)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString()).run(["y"], {"x": x, "ids": np.array([0, 5])})[0]
    error = (np.abs(y - x @ w) / (np.abs(x) @ np.abs(w))).max(axis=0)  # per output channel, vs its own size
    assert error.max() < 0.01  # one scale for the whole tensor would be ~50x coarser on the quiet channels


def test_unknown_llm_weights_is_a_user_error():
    from edgevoice.recipes.llm import llm_components

    with pytest.raises(EdgevoiceError, match="fp32, int8"):
        llm_components(llm_weights="int4")  # refused before any weights load


@pytest.mark.slow
def test_int8_weights_are_dequantize_linear_into_matmul(exported, int8_exported):
    import onnx
    from onnx import numpy_helper

    path = int8_exported / "llm.onnx"
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    readers = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node.op_type, i))
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 30 * 7  # q, k, v, o, gate, up, down in each of the 30 blocks
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}  # no contrib ops (MatMulNBits, ...)
    assert not {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul"} & {n.op_type for n in graph.node}
    for node in dq:
        weight, scale, zero = (numpy_helper.to_array(inits[name]) for name in node.input)
        assert weight.dtype == np.int8 and scale.dtype == np.float32 and not zero.any()
        assert [a.i for a in node.attribute if a.name == "axis"] == [1] and scale.shape == (weight.shape[1],)
        assert readers[node.output[0]] == [("MatMul", 1)]  # per output channel of MatMul's B
    float_weights = [n for n, ops in readers.items() if n in inits and ("MatMul", 1) in ops
                     and inits[n].data_type == onnx.TensorProto.FLOAT]
    assert not float_weights
    assert path.stat().st_size < 0.5 * (exported.out / "llm.onnx").stat().st_size


@pytest.mark.slow
def test_int8_weights_graphs_pass_the_tensorrt_check(int8_exported):
    from edgevoice.export.trt_check import check_trt_compatibility

    result = check_trt_compatibility(str(int8_exported / "llm.onnx"), "10.3")
    assert result.ok, result.summary()


@pytest.mark.slow
def test_int8_weights_greedy_tokens_equal_fp32(exported, int8_exported):
    # Prompts where per-channel int8 keeps greedy output (measured: 3 of llm_bench's 4 prompts;
    # "List three uses of a paperclip." leaves fp32 after ~11 tokens, which is why fp32 stays default).
    fp32 = make_session(exported)
    int8 = make_session(exported, "int8/llm.onnx")
    for prompt in ("What is the capital of France?", "Write a haiku about the sea.",
                   "Explain what a battery does in one sentence."):
        messages = [{"role": "user", "content": prompt}]
        expected = [p.token_id for p in fp32.generate(messages, max_new_tokens=16)]
        assert [p.token_id for p in int8.generate(messages, max_new_tokens=16)] == expected, prompt


# --- one graph for prefill and decode; packages with two still run ---------------------------


def _package(exported, directory, components) -> "Manifest":
    """A package around the exported graph: ``components`` (manifest entries) over llm.onnx."""
    from edgevoice.manifest import SCHEMA_VERSION, Manifest, file_record, read_manifest, write_manifest

    directory.mkdir()
    for name in ("llm.onnx", "llm_tokenizer.json"):
        (directory / name).symlink_to(exported.out / name if name == "llm.onnx" else exported.tokenizer)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, edgevoice_version="test", recipe="cascade", config={}, target={"name": "cpu"},
        export_command="pytest (llm)", components=components,
        files={name: file_record(directory / name) for name in ("llm.onnx", "llm_tokenizer.json")}, directory=directory,
    )
    write_manifest(manifest)
    return read_manifest(directory)


def _two_graph_entries(entry) -> dict:
    """``llm_prefill`` + ``llm_decode`` entries as a package exported before the one graph has them
    (decode with tokens fixed at 1, no ``trt_profiles``); both read llm.onnx, so no second export."""
    from dataclasses import replace

    stream = {k: v for k, v in entry.stream.items() if k not in ("trt_profiles", "tail_logits")}
    # Their caches had a fixed capacity: max_context rows (llm.onnx takes that size too).
    def fixed(specs):
        return tuple(replace(t, shape=tuple(MAX_CONTEXT if d == "context" else d for d in t.shape)) for t in specs)

    inputs, outputs = fixed(entry.inputs), fixed(entry.outputs)
    one_token = tuple(replace(t, shape=("batch", 1)) if t.name == "input_ids" else t for t in inputs)
    dims = {k: v for k, v in entry.dynamic_dims.items() if k != "context"}
    return {
        "llm_prefill": replace(entry, name="llm_prefill", inputs=inputs, outputs=outputs, stream=stream, dynamic_dims=dims),
        "llm_decode": replace(entry, name="llm_decode", inputs=one_token, outputs=outputs, stream=stream,
                              dynamic_dims={"batch": entry.dynamic_dims["batch"]}),
    }


def _count_tokens_per_call(runner) -> list[int]:
    calls, original = [], runner.infer
    runner.infer = lambda feeds: calls.append(feeds["input_ids"].shape[1]) or original(feeds)
    return calls


@pytest.mark.slow
def test_one_graph_package_prefills_in_chunks_and_decodes_single_tokens(exported, tmp_path):
    manifest = _package(exported, tmp_path / "one", {"llm": exported.entries["llm"]})
    session = LlmSession.from_manifest(manifest)
    assert session.one_graph and session.decode_runner is session.prefill_runner
    calls = _count_tokens_per_call(session.prefill_runner)
    prompt = session.prompt_ids(FRANCE, max_new_tokens=12)
    reply = [p.token_id for p in session.generate(FRANCE, max_new_tokens=12)]
    chunks = -(-len(prompt) // 32)  # prefill_max_tokens=32
    assert calls[:chunks] == [32] * (chunks - 1) + [len(prompt) - 32 * (chunks - 1)]
    # Each decode call feeds the last token and at most DRAFT_TOKENS drafted ones.
    assert all(1 <= n <= 1 + DRAFT_TOKENS for n in calls[chunks:])
    assert len(calls) - chunks == len(reply) - session.drafted
    assert reply == [p.token_id for p in make_session(exported).generate(FRANCE, max_new_tokens=12)]


ECHOING = [  # questions whose answers repeat their words: drafts from the prompt get confirmed
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "What is the largest planet in the solar system?"}],
    [{"role": "user", "content": "Repeat after me: the quick brown fox jumps over the lazy dog."}],
]


@pytest.mark.slow
def test_drafted_replies_are_the_greedy_replies_in_fewer_calls(exported):
    drafted, plain = make_session(exported), make_session(exported)
    plain.tail = 0  # as a package exported before ``tail_logits``: one call per token
    assert drafted.tail == 8
    confirmed = 0
    for messages in ECHOING:
        drafted.reset()  # the prompt is prefilled whole: ceil(len / 32) chunks
        calls = _count_tokens_per_call(drafted.prefill_runner)
        got = [p.token_id for p in drafted.generate(messages, max_new_tokens=24)]
        assert got == [p.token_id for p in plain.generate(messages, max_new_tokens=24)]
        assert drafted.tokens == plain.tokens  # rejected drafts leave nothing in the conversation
        prefill = -(-len(drafted.prompt_ids(messages, 24)) // 32)
        assert len(calls) - prefill == len(got) - drafted.drafted
        confirmed += drafted.drafted
    assert confirmed >= 6, confirmed  # 11 when written
    sampled = SamplingConfig(temperature=1.0, seed=3)
    list(drafted.generate(ECHOING[0], max_new_tokens=8, sampling=sampled))
    assert drafted.drafted == 0  # a sampled reply is not greedy: never drafted


def test_the_draft_continues_the_nearest_place_with_the_last_two_tokens():
    from edgevoice.runtime.drafts import continuation

    context = [5, 1, 2, 3, 9, 1, 2, 4, 7, 1]
    assert continuation(context[:-1], context, latest=True) == [2, 4, 7]  # nearest "1" (no pair "7 1")
    assert continuation(context[:-1], context) == [2, 3, 9, 1, 2, 4, 7]  # first place (Whisper's rule)
    assert continuation([5, 9, 1, 2, 3, 7, 1, 2, 8], [9, 1], latest=True) == [2, 3, 7, 1, 2, 8]  # the pair wins
    assert continuation([1, 2, 3], [4]) == []
    # The LLM drafts only from a place with the last two tokens: a one-token match is mostly wrong.
    assert continuation(context[:-1], context, latest=True, pairs_only=True) == []
    assert continuation([5, 9, 1, 2, 3, 7, 1, 2, 8], [9, 1], latest=True, pairs_only=True) == [2, 3, 7, 1, 2, 8]


def test_the_llm_drafts_only_where_its_last_two_tokens_recur(exported):
    session = make_session(exported)
    assert session._draft([500, 600, 700, 800, 900, 600], room=8) == []  # only " 600" recurs
    assert session._draft([500, 600, 700, 800, 500, 600], room=8) == [700, 800, 500]


@pytest.mark.slow
def test_two_graph_package_exported_before_the_one_graph_still_runs(exported, tmp_path):
    manifest = _package(exported, tmp_path / "two", _two_graph_entries(exported.entries["llm"]))
    old = LlmSession.from_manifest(manifest)
    assert not old.one_graph
    assert old.decode_runner.component.input("input_ids").shape == ("batch", 1)
    prefill_calls, decode_calls = _count_tokens_per_call(old.prefill_runner), _count_tokens_per_call(old.decode_runner)
    got = [p.token_id for p in old.generate(FRANCE, max_new_tokens=12)]
    assert got == [p.token_id for p in make_session(exported).generate(FRANCE, max_new_tokens=12)]
    assert prefill_calls and all(n > 1 for n in prefill_calls)
    assert decode_calls == [1] * len(decode_calls) and len(decode_calls) >= len(got) - 1


def test_a_package_without_an_llm_graph_names_the_fix(tmp_path):
    from edgevoice.errors import PackageError
    from edgevoice.manifest import Manifest
    from edgevoice.runtime.llm import llm_components

    manifest = Manifest(schema_version=1, edgevoice_version="test", recipe="cascade", config={}, target={},
                        export_command="edgevoice export --model cascade --target cpu --out x",
                        components={}, files={}, directory=tmp_path)
    with pytest.raises(PackageError, match="no component 'llm'.*edgevoice export --model cascade"):
        llm_components(manifest)


def test_runtime_and_recipe_agree_on_the_llm_component_names():
    from edgevoice.recipes import llm as recipe_llm
    from edgevoice.recipes.cascade.recipe import COMPONENTS
    from edgevoice.runtime import llm as runtime_llm

    assert recipe_llm.COMPONENT == runtime_llm.LLM_COMPONENT and recipe_llm.COMPONENT in COMPONENTS
    assert recipe_llm.LEGACY_COMPONENTS == runtime_llm.LEGACY_LLM_COMPONENTS
    assert not set(recipe_llm.LEGACY_COMPONENTS) & set(COMPONENTS)


def test_tensorrt_build_gets_a_prefill_and_a_decode_profile(exported):
    from edgevoice.export.build_script import component_profiles, engine_spec
    from edgevoice.export.to_trt import trtexec_command
    from edgevoice.targets import load_target
    from pathlib import Path

    entry = exported.entries["llm"]
    assert [p["name"] for p in entry.stream["trt_profiles"]] == ["prefill", "decode"]
    prefill, decode = component_profiles(entry)
    assert prefill["input_ids"] == ((1, 1), (1, 16), (1, 32)) and decode["input_ids"] == ((1, 1), (1, 1), (1, 1))
    cache = ((1, 3, CACHE_STEP, 64), (1, 3, CACHE_STEP, 64), (1, 3, MAX_CONTEXT, 64))  # min, opt, max rows
    assert prefill["k_cache_29"] == decode["k_cache_29"] == cache and prefill["position"] == decode["position"]
    spec = engine_spec(Path("pkg"), entry, load_target("jetson-orin-nano"))
    assert spec.profiles == (prefill, decode)
    # trtexec lines take one profile: the first, whose range holds every call.
    assert "--maxShapes=input_ids:1x32," in trtexec_command(spec)
    # Components that declare no profiles keep one, from their dims (a two-graph package's decode).
    (single,) = component_profiles(_two_graph_entries(entry)["llm_decode"])
    assert single["input_ids"] == ((1, 1), (1, 1), (1, 1))
