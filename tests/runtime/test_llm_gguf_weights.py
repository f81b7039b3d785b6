"""LLM weights kept as the GGUF's own codes (``llm_weights="gguf"``): read exactly, written in
standard ops TensorRT's parser takes, fused into onnxruntime's 4-bit kernels at load, and giving
the float graph's greedy tokens."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from edgevoice.export.quantize import weights_block_codes
from onnx import helper, numpy_helper

from edgevoice.backends.ort_blocks import fuse_block_weights
from edgevoice.errors import EdgevoiceError
from edgevoice.weights.llm.gguf_blocks import BlockCodes, decode_blocks, fingerprint

PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.", "List three uses of a paperclip.",
           "Explain what a battery does in one sentence.")


# --- the codes ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_blocks_decode_to_what_gguf_dequantizes(kind):
    from gguf import GGMLQuantizationType, quants

    weight = np.random.default_rng(0).standard_normal((6, 96)).astype(np.float32)
    qtype = GGMLQuantizationType[kind]
    data = quants.quantize(weight, qtype)  # (6, bytes per row), as GGUFReader gives it
    codes, scale, offset = decode_blocks(data, kind, rows=6)
    assert codes.dtype == np.int8 and codes.shape == (6, 96) and scale.shape == (6, 3)
    assert (offset is not None) == (kind == "Q4_1")
    low, high = (-8, 7) if kind != "Q8_0" else (-128, 127)
    assert low <= codes.min() and codes.max() <= high
    block = BlockCodes("w", codes, scale, offset, fingerprint(weight.T))
    np.testing.assert_array_equal(block.dequantized(), quants.dequantize(data, qtype))
    assert block.bits == (8 if kind == "Q8_0" else 4)


def test_every_quantized_weight_of_the_smollm2_file_is_read_as_the_loader_holds_it():
    from edgevoice.recipes.llm import smollm2_gguf_path
    from edgevoice.weights.llm import gguf as gguf_weights
    from edgevoice.weights.llm.gguf_blocks import block_codes

    file = gguf_weights.open_gguf(smollm2_gguf_path())
    config = gguf_weights.llm_config_from_gguf(file)
    codes = {c.name: c for c in block_codes(file, config)}
    state = gguf_weights.llm_state_from_gguf(file, config)
    assert len(codes) == 30 * 7 + 1  # q, k, v, o, gate, up, down per block; the Q8_0 embedding
    assert codes["model.embed_tokens.weight"].bits == 8 and codes["model.layers.0.mlp.up_proj.weight"].bits == 4
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.self_attn.k_proj.weight",  # rows un-permuted
                 "model.layers.7.mlp.down_proj.weight", "model.embed_tokens.weight"):
        weight = state[name].numpy()
        np.testing.assert_array_equal(codes[name].dequantized(), weight)
        assert codes[name].fingerprint == fingerprint(weight.T)


# --- the graph rewrite (export) and the fusion (onnxruntime backend) -------------------------


def _codes(out: int, inp: int, seed: int, with_offset: bool, eight_bit: bool = False) -> BlockCodes:
    rng = np.random.default_rng(seed)
    codes = rng.integers(-128, 128, (out, inp)) if eight_bit else rng.integers(-8, 8, (out, inp))
    scale = rng.uniform(0.001, 0.02, (out, inp // 32)).astype(np.float16).astype(np.float32)
    offset = rng.uniform(-0.1, 0.1, (out, inp // 32)).astype(np.float32) if with_offset else None
    block = BlockCodes("w", codes.astype(np.int8), scale, offset, "")
    return BlockCodes("w", block.codes, scale, offset, fingerprint(block.dequantized().T))


def _graph(blocks: dict[str, BlockCodes], other: np.ndarray) -> onnx.ModelProto:
    """x (1, 3, 64) -> MatMul by "q" (offsets), "head" through a Transpose (8-bit), "other" (not codes)."""
    q, head = blocks["q"].dequantized(), blocks["head"].dequantized()
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["yq"], name="q_proj"),
             helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "table_t"], ["yhead"], name="head"),
             helper.make_node("Gather", ["table", "ids"], ["rows"]),
             helper.make_node("MatMul", ["x", "wo"], ["yo"], name="other")]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 64]),
              helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2])]
    shapes = {"yq": [1, 3, 48], "yhead": [1, 3, 40], "rows": [2, 64], "yo": [1, 3, 16]}
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n, shape in shapes.items()]
    inits = [numpy_helper.from_array(q.T.copy(), "wq"), numpy_helper.from_array(head, "table"),
             numpy_helper.from_array(other, "wo")]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                             opset_imports=[helper.make_opsetid("", 20)])


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_codes_rewrite_to_standard_ops_then_fuse_to_4_bit_kernels_with_the_same_outputs(tmp_path):
    from edgevoice.export.trt_check import check_trt_compatibility

    blocks = {"q": _codes(48, 64, 1, with_offset=True), "head": _codes(40, 64, 2, with_offset=False, eight_bit=True)}
    other = np.random.default_rng(3).standard_normal((64, 16)).astype(np.float32)
    feeds = {"x": np.random.default_rng(4).standard_normal((1, 3, 64)).astype(np.float32), "ids": np.array([0, 7])}
    model = _graph(blocks, other)
    expected = _run(model, feeds)

    assert weights_block_codes(model, list(blocks.values())) == 2  # "other" matches no codes: stays float
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "Transpose" not in ops and ops.count("DequantizeLinear") == 2 and {n.domain for n in model.graph.node} == {""}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert "wq" not in inits and "table" in inits and "wo" in inits  # the Gather still reads the float table
    path = tmp_path / "codes.onnx"
    onnx.save(model, str(path))
    assert check_trt_compatibility(str(path), "10.3").ok
    for got, want in zip(_run(model, feeds), expected):  # as written: float weights rebuilt every call
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    assert fuse_block_weights(model) == 2
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 3 and "DequantizeLinear" not in ops  # the 8-bit head: two 4-bit halves
    assert all(a.i == 1 for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
               if a.name == "accuracy_level")  # float32 activations
    for got, want in zip(_run(model, feeds), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_graph_without_codes_is_left_alone():
    other = np.random.default_rng(3).standard_normal((64, 16)).astype(np.float32)
    model = _graph({"q": _codes(48, 64, 1, True), "head": _codes(40, 64, 2, False, True)}, other)
    before = model.SerializeToString()
    assert weights_block_codes(model, [_codes(48, 64, 9, True)]) == 0  # other values: no match
    assert fuse_block_weights(model) == 0 and model.SerializeToString() == before


def test_gguf_weights_need_a_gguf_file(tmp_path):
    from edgevoice.recipes.llm import llm_components

    loaded = SimpleNamespace(source=str(tmp_path / "hf-model"))
    with pytest.raises(EdgevoiceError, match="not a .gguf file"):
        llm_components(loaded=loaded, llm_weights="gguf")


# --- the real model ---------------------------------------------------------------------------


def test_an_fp16_export_keeps_float_weights_and_says_so():
    from edgevoice.export.to_onnx import with_precision

    from edgevoice.recipes.llm import llm_components, load_llm

    (llm,) = llm_components(loaded=load_llm(max_context=64, prefill_max_tokens=8), llm_weights="gguf")
    assert llm.stream["weights"] == "gguf" and llm.block_codes is not None
    fp16 = with_precision(llm, "fp16")  # a GPU target's graph: TensorRT, no MatMulNBits
    assert "weights" not in fp16.stream and fp16.block_codes is None
    fp32 = with_precision(llm, "fp32")
    assert fp32.stream["weights"] == "gguf" and fp32.block_codes is llm.block_codes


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """SmolLM2's one graph exported twice from one load: float weights, and the GGUF's codes."""
    from edgevoice.export.to_onnx import export_onnx

    from edgevoice.recipes.llm import llm_components, load_llm

    out = tmp_path_factory.mktemp("llm_gguf")
    loaded = load_llm(max_context=256, prefill_max_tokens=32)
    entries = {}
    for weights in ("fp32", "gguf"):
        (llm,) = llm_components(loaded=loaded, cache_dir=out, llm_weights=weights)
        entries[weights] = export_onnx(llm, out / f"llm_{weights}.onnx", "fp32", max_batch=1)
    return SimpleNamespace(out=out, entries=entries, tokenizer=llm.files["llm_tokenizer.json"])


def _session(exported, weights: str):
    from edgevoice.backends.ort import OrtRunner
    from edgevoice.runtime.llm import LlmSession

    entry = exported.entries[weights]
    runner = OrtRunner(entry, exported.out / f"llm_{weights}.onnx", threads=2)
    return LlmSession(runner, None, exported.tokenizer, entry.stream)


@pytest.mark.slow
def test_smollm2_with_gguf_codes_passes_the_op_check_and_is_half_the_size(exported):
    from edgevoice.export.trt_check import check_trt_compatibility

    path = exported.out / "llm_gguf.onnx"
    assert exported.entries["gguf"].stream["weights"] == "gguf" and "weights" not in exported.entries["fp32"].stream
    assert check_trt_compatibility(str(path), "10.3").ok
    assert path.stat().st_size < 0.6 * (exported.out / "llm_fp32.onnx").stat().st_size
    model = onnx.load(str(path))
    assert fuse_block_weights(model) == 30 * 7 + 1  # every block's linear weights and the tied LM head


@pytest.mark.slow
def test_smollm2_with_gguf_codes_gives_the_float_graphs_greedy_tokens(exported):
    fp32, gguf = _session(exported, "fp32"), _session(exported, "gguf")
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        expected = [p.token_id for p in fp32.generate(messages, max_new_tokens=32)]
        assert [p.token_id for p in gguf.generate(messages, max_new_tokens=32)] == expected, prompt
