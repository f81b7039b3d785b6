"""The Llama-family LLM: GGUF/HF loaders, cached steps, and parity with transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.llm import LlmConfig, LlmModel, LlmStep
from edgevoice.recipes.llm import GGUF_NAME, load_llm, smollm2_gguf_path
from edgevoice.weights.llm import gguf as gguf_weights
from edgevoice.weights.llm.hf import load_llm_hf, save_hf_directory

gguf = pytest.importorskip("gguf")

PROMPTS = (
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "The three primary colors are",
)


# --- synthetic GGUF files ------------------------------------------------------------------


def write_gguf(path, tensors: dict[str, tuple[np.ndarray, str]], arch: str = "llama", meta: dict | None = None):
    """A GGUF file with ``tensors`` (float32 values, GGML type name) quantized by the gguf package."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in (meta or {}).items():
        writer.add_uint32(key, value)
    for name, (values, kind) in tensors.items():
        qtype = gguf.GGMLQuantizationType[kind]
        if kind == "F32":
            writer.add_tensor(name, values.astype(np.float32))
        elif kind == "F16":
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def q8_0_by_hand(blocks: np.ndarray) -> np.ndarray:
    """Independent Q8_0 decoding: per 32 values, an fp16 scale then 32 int8."""
    blocks = blocks.reshape(-1, 34)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (n, 1)
    return (blocks[:, 2:].copy().view(np.int8).astype(np.float32) * scale).reshape(-1)


def q4_1_by_hand(blocks: np.ndarray) -> np.ndarray:
    """Independent Q4_1 decoding: fp16 scale, fp16 min, 16 bytes = 32 nibbles (low halves first)."""
    blocks = blocks.reshape(-1, 20)
    scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    low = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    packed = blocks[:, 4:]
    nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)  # (n, 32)
    return (nibbles * scale + low).reshape(-1)


@pytest.fixture(scope="module")
def matrix():
    # Non-square so a transposed read cannot pass: 64 rows (out) x 96 columns (in).
    return np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)


@pytest.mark.parametrize(
    "kind, tolerance",
    [("F32", 0.0), ("F16", 2e-3), ("BF16", 2e-2), ("Q8_0", 0.03), ("Q5_0", 0.25), ("Q5_1", 0.2), ("Q4_0", 0.5), ("Q4_1", 0.4)],
)
def test_dequantize_types_round_trip_with_row_major_shape(tmp_path, matrix, kind, tolerance):
    path = write_gguf(tmp_path / "m.gguf", {"w": (matrix, kind)})
    file = gguf_weights.open_gguf(path)
    values = gguf_weights.dequantize(file.reader.tensors[0], "m.gguf")
    assert values.shape == (64, 96) and values.dtype == np.float32
    assert np.abs(values - matrix).max() <= tolerance


@pytest.mark.parametrize("kind, by_hand", [("Q8_0", q8_0_by_hand), ("Q4_1", q4_1_by_hand)])
def test_dequantize_matches_an_independent_decoder(tmp_path, matrix, kind, by_hand):
    path = write_gguf(tmp_path / "m.gguf", {"w": (matrix, kind)})
    tensor = gguf_weights.open_gguf(path).reader.tensors[0]
    expected = by_hand(np.asarray(tensor.data)).reshape(64, 96)
    np.testing.assert_array_equal(gguf_weights.dequantize(tensor, "m.gguf"), expected)


def test_unsupported_type_names_the_tensor_and_the_supported_types(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    raw = np.zeros((4, 84), dtype=np.uint8)  # four Q2_K rows of 256 values (84 bytes each)
    writer.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=gguf.GGMLQuantizationType.Q2_K)
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    tensor = gguf_weights.open_gguf(tmp_path / "k.gguf").reader.tensors[0]
    with pytest.raises(EdgevoiceError, match=r"blk\.0\.ffn_up\.weight.*Q2_K.*supported: F32"):
        gguf_weights.dequantize(tensor, "k.gguf")


def test_unknown_tensor_name_is_an_error_naming_it():
    with pytest.raises(EdgevoiceError, match="blk.0.attn_qkv.weight"):
        gguf_weights.hf_name("blk.0.attn_qkv.weight", "x.gguf")
    assert gguf_weights.hf_name("blk.7.ffn_down.weight", "x.gguf") == "model.layers.7.mlp.down_proj.weight"


def test_unpermute_undoes_llama_cpp_rotary_permutation():
    heads, head_dim, cols = 3, 8, 5
    w = np.arange(heads * head_dim * cols, dtype=np.float32).reshape(heads * head_dim, cols)
    # llama.cpp's converter: per head, rows (2, D/2) -> (D/2, 2)
    permuted = w.reshape(heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(w.shape)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(gguf_weights.unpermute_rotary(permuted, heads), w)


def test_missing_file_and_wrong_architecture_are_user_errors(tmp_path):
    with pytest.raises(EdgevoiceError, match="does not exist"):
        gguf_weights.open_gguf(tmp_path / "absent.gguf")
    path = write_gguf(tmp_path / "bert.gguf", {"w": (np.ones((2, 32), np.float32), "F32")}, arch="bert")
    with pytest.raises(EdgevoiceError, match="'bert' model"):
        gguf_weights.llm_config_from_gguf(gguf_weights.open_gguf(path))


# --- the real SmolLM2 weights ---------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm():
    return load_llm(max_context=128, prefill_max_tokens=16)


def test_smollm2_config_from_gguf(smollm):
    c = smollm.model.config
    assert (c.vocab_size, c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim, c.ffn) == (49152, 576, 30, 9, 3, 64, 1536)
    assert c.tie_word_embeddings and not c.qkv_bias and c.rope_base == 100000.0
    assert smollm.eos_token_id == 2 and 2 in smollm.stop_token_ids and smollm.chat_template.startswith("{% for message")


def test_steps_with_cache_equal_the_full_forward(smollm):
    model = smollm.model
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198, 504, 3575]])
    full = model(ids)[0]  # (T, vocab)
    prefill, decode = LlmStep(model, tokens=None), LlmStep(model, tokens=1)
    state = prefill.init_state(1)
    assert len(state) == 60 and state[0].shape == (1, 3, 128, 64)
    got, pos = [], 0
    with torch.no_grad():
        for size in (5, 7):  # two prefill chunks, the second attends to the first through the cache
            logits, _, *state = prefill.step(ids[:, pos : pos + size], torch.tensor([pos]), *state)
            got.append((pos + size - 1, logits[0]))
            pos += size
        while pos < ids.shape[1]:
            logits, _, *state = decode.step(ids[:, pos : pos + 1], torch.tensor([pos]), *state)
            got.append((pos, logits[0]))
            pos += 1
    for index, logits in got:
        torch.testing.assert_close(logits, full[index], atol=2e-3, rtol=1e-4)


def test_stale_cache_rows_past_the_position_are_invisible(smollm):
    # Rolling back = moving the position back: rows written by an abandoned continuation must not matter.
    step = LlmStep(smollm.model, tokens=None)
    state = step.init_state(1)
    prompt = torch.tensor([[1, 4093, 198, 28120]])
    with torch.no_grad():
        _, _, *after_prompt = step.step(prompt, torch.tensor([0]), *state)
        _, _, *abandoned = step.step(torch.tensor([[9531, 9531, 9531]]), torch.tensor([4]), *after_prompt)
        fresh = step.step(torch.tensor([[30]]), torch.tensor([4]), *after_prompt)[0]
        reused = step.step(torch.tensor([[30]]), torch.tensor([4]), *abandoned)[0]
    torch.testing.assert_close(fresh, reused, atol=1e-5, rtol=0)


def test_batched_sessions_at_different_positions_match_single_runs(smollm):
    step = LlmStep(smollm.model, tokens=1)
    a, b = torch.tensor([[1, 4093, 198]]), torch.tensor([[1, 9690, 198, 2683, 314]])
    singles = []
    with torch.no_grad():
        for ids in (a, b):
            state = step.init_state(1)
            for i in range(ids.shape[1]):
                logits, _, *state = step.step(ids[:, i : i + 1], torch.tensor([i]), *state)
            singles.append(logits[0])
        state = step.init_state(2)
        for i in range(b.shape[1]):
            first = a[:, min(i, 2) : min(i, 2) + 1]  # session a repeats its last step from step 3 on
            ids = torch.cat([first, b[:, i : i + 1]])
            pos = torch.tensor([min(i, 2), i])
            logits, _, *state = step.step(ids, pos, *state)
            if i <= 2:
                at_a = logits[0]
    torch.testing.assert_close(at_a, singles[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits[1], singles[1], atol=1e-4, rtol=0)


def test_hf_directory_round_trip_is_exact(smollm, tmp_path):
    directory = save_hf_directory(smollm.model, tmp_path / "hf")
    loaded = load_llm_hf(directory, max_context=128, prefill_max_tokens=16)
    assert loaded.config == smollm.model.config
    for name, tensor in smollm.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_hf_directory_errors_name_the_tensor(tmp_path):
    from safetensors.torch import save_file

    model = LlmModel(LlmConfig(vocab_size=64, hidden=32, layers=1, heads=4, kv_heads=2, head_dim=8, ffn=48, max_context=16, prefill_max_tokens=4))
    directory = save_hf_directory(model, tmp_path / "tiny")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["model.layers.0.self_attn.rotary_emb.extra"] = torch.zeros(3)
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(EdgevoiceError, match="rotary_emb.extra"):
        load_llm_hf(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(EdgevoiceError, match="model_type 'gpt2'"):
        load_llm_hf(directory)


def test_qwen2_layout_biases_and_untied_head_match_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = LlmConfig(vocab_size=96, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, ffn=80,
                       rope_base=1e6, rms_eps=1e-6, tie_word_embeddings=False, qkv_bias=True, max_context=32, prefill_max_tokens=8)
    model = LlmModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    directory = save_hf_directory(model, tmp_path / "qwen")
    ours = load_llm_hf(directory, max_context=32, prefill_max_tokens=8)
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(directory), torch_dtype=torch.float32).eval()
    assert type(reference).__name__ == "Qwen2ForCausalLM"
    ids = torch.randint(0, 96, (2, 11))
    with torch.no_grad():
        expected = reference(ids).logits
    torch.testing.assert_close(ours(ids), expected, atol=1e-4, rtol=1e-4)


# --- transformers on the same GGUF (the reference) ------------------------------------------


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    path = smollm2_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=GGUF_NAME, torch_dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=GGUF_NAME)
    return model.eval(), tokenizer


@pytest.mark.slow
def test_tokenizer_from_gguf_encodes_like_transformers(smollm, reference):
    from tokenizers import Tokenizer

    ours = Tokenizer.from_str(smollm.tokenizer_json)
    texts = PROMPTS + ("héllo ünïcode 日本語 🎉👍", "12345 apples cost 3.50 €", "  two  spaces\n\n\ttab", "don't 'quote' It's")
    for text in texts:
        assert ours.encode(text, add_special_tokens=False).ids == reference[1].encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text


@pytest.mark.slow
def test_logits_match_transformers_on_the_same_gguf(smollm, reference):
    model, tokenizer = reference
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
        with torch.no_grad():
            expected = model(ids).logits[0].float()
        got = smollm.model(ids)[0]
        # fp32 on both sides; the difference is summation order only
        assert (got - expected).abs().max().item() < 2e-3, prompt
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.slow
def test_greedy_continuation_equals_transformers_generate(smollm, reference):
    model, tokenizer = reference
    decode = LlmStep(smollm.model, tokens=1)
    prefill = LlmStep(smollm.model, tokens=None)
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            expected = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=2)
        expected = expected[0, len(ids):].tolist()
        state = prefill.init_state(1)
        got = []
        with torch.no_grad():
            logits, _, *state = prefill.step(torch.tensor([ids]), torch.tensor([0]), *state)
            for i in range(20):
                got.append(int(logits.argmax(-1)))
                logits, _, *state = decode.step(torch.tensor([[got[-1]]]), torch.tensor([len(ids) + i]), *state)
        assert got == expected, prompt


@pytest.mark.slow
def test_transformers_llama_loads_our_hf_directory_and_agrees(smollm, tmp_path):
    transformers = pytest.importorskip("transformers")
    directory = save_hf_directory(smollm.model, tmp_path / "hf")
    reference = transformers.LlamaForCausalLM.from_pretrained(str(directory), torch_dtype=torch.float32).eval()
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198]])
    with torch.no_grad():
        expected = reference(ids).logits[0]
    assert (smollm.model(ids)[0] - expected).abs().max().item() < 2e-3


# --- K-quants: gguf's decoder against llama.cpp's block layouts written out here -------------


def q6_k_by_hand(block: np.ndarray) -> np.ndarray:
    """One Q6_K block (210 bytes -> 256 values): ql[128], qh[64], int8 scales[16], fp16 d."""
    ql, qh = block[:128].astype(np.int32), block[128:192].astype(np.int32)
    scales = block[192:208].copy().view(np.int8).astype(np.float32)
    d = block[208:210].copy().view(np.float16).astype(np.float32)[0]
    y = np.zeros(256, np.float32)
    for half in range(2):  # 128 values each
        l_, h_, s_, y_ = ql[64 * half :], qh[32 * half :], scales[8 * half :], 128 * half
        for l in range(32):
            i = l // 16
            q1 = ((l_[l] & 0xF) | (((h_[l] >> 0) & 3) << 4)) - 32
            q2 = ((l_[l + 32] & 0xF) | (((h_[l] >> 2) & 3) << 4)) - 32
            q3 = ((l_[l] >> 4) | (((h_[l] >> 4) & 3) << 4)) - 32
            q4 = ((l_[l + 32] >> 4) | (((h_[l] >> 6) & 3) << 4)) - 32
            y[y_ + l] = d * s_[i] * q1
            y[y_ + l + 32] = d * s_[i + 2] * q2
            y[y_ + l + 64] = d * s_[i + 4] * q3
            y[y_ + l + 96] = d * s_[i + 6] * q4
    return y


def q4_k_by_hand(block: np.ndarray) -> np.ndarray:
    """One Q4_K block (144 bytes -> 256 values): fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, qs[128]."""
    d = block[0:2].copy().view(np.float16).astype(np.float32)[0]
    dmin = block[2:4].copy().view(np.float16).astype(np.float32)[0]
    sc, qs = block[4:16].astype(np.int32), block[16:].astype(np.int32)

    def scale_min(j):
        if j < 4:
            return sc[j] & 63, sc[j + 4] & 63
        return (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)

    y = np.zeros(256, np.float32)
    for chunk in range(4):  # 64 values per 32 bytes of qs
        s1, m1 = scale_min(2 * chunk)
        s2, m2 = scale_min(2 * chunk + 1)
        q = qs[32 * chunk : 32 * chunk + 32]
        y[64 * chunk : 64 * chunk + 32] = d * s1 * (q & 0xF) - dmin * m1
        y[64 * chunk + 32 : 64 * chunk + 64] = d * s2 * (q >> 4) - dmin * m2
    return y


@pytest.mark.parametrize("kind, size, by_hand, scale_bytes", [("Q6_K", 210, q6_k_by_hand, slice(208, 210)), ("Q4_K", 144, q4_k_by_hand, slice(0, 4))])
def test_k_quants_match_the_llama_cpp_block_layout(tmp_path, kind, size, by_hand, scale_bytes):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, size=(3, size), dtype=np.uint8)  # three rows of one block each
    # Sane fp16 super-block scale(s): random bytes there would give inf/NaN.
    raw[:, scale_bytes] = np.full((scale_bytes.stop - scale_bytes.start) // 2, 0.01, np.float16).view(np.uint8)
    writer = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    writer.add_tensor("w", raw, raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    tensor = gguf_weights.open_gguf(tmp_path / "k.gguf").reader.tensors[0]
    values = gguf_weights.dequantize(tensor, "k.gguf")
    assert values.shape == (3, 256)
    expected = np.stack([by_hand(row) for row in raw])
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)


def test_recipe_loads_a_hugging_face_directory_with_its_tokenizer(smollm, tmp_path):
    from edgevoice.recipes.llm import llm_components

    directory = save_hf_directory(smollm.model, tmp_path / "hf")
    with pytest.raises(EdgevoiceError, match="no tokenizer.json"):
        load_llm(directory)
    (directory / "tokenizer.json").write_text(smollm.tokenizer_json)
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": smollm.chat_template}))
    (directory / "config.json").write_text(json.dumps({**json.loads((directory / "config.json").read_text()), "eos_token_id": 2, "bos_token_id": 1}))
    loaded = load_llm(directory, max_context=128, prefill_max_tokens=16)
    assert (loaded.eos_token_id, loaded.stop_token_ids, loaded.chat_template) == (2, smollm.stop_token_ids, smollm.chat_template)
    (llm,) = llm_components(loaded=loaded, cache_dir=tmp_path / "cache")
    assert llm.stream["stop_token_ids"] == [0, 2] and llm.stream["max_context"] == 128
    assert llm.files["llm_tokenizer.json"].read_text() == smollm.tokenizer_json
    assert llm.module.input_specs()[0].shape == ("batch", "tokens") and llm.module.dim_ranges() == {"tokens": (1, 16, 16)}
    with pytest.raises(EdgevoiceError, match="pass a .gguf file"):
        load_llm(tmp_path / "weights.bin")


def test_embedding_input_step_equals_the_token_id_step(smollm):
    by_ids, by_embeds = LlmStep(smollm.model, tokens=None), LlmStep(smollm.model, tokens=None, inputs="embeds")
    assert by_embeds.input_specs()[0].name == "input_embeds" and by_embeds.input_specs()[0].shape == ("batch", "tokens", 576)
    ids = torch.tensor([[1, 4093, 198, 28120, 30]])
    with torch.no_grad():
        expected = by_ids.step(ids, torch.tensor([0]), *by_ids.init_state(1))
        got = by_embeds.step(smollm.model.model.embed_tokens(ids), torch.tensor([0]), *by_embeds.init_state(1))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="'ids' or 'embeds'"):
        LlmStep(smollm.model, inputs="audio")
