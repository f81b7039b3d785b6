"""Load Llama-family LLMs and their tokenizers from GGUF files (llama.cpp's format).

Reading goes through the ``gguf`` package (``GGUFReader``, memory-mapped) and its reference
numpy dequantizers. Two facts of the format matter:

* Shapes: GGUF lists dims fastest-first (ne0 = columns), the reader's ``data`` is already
  (rows, bytes-per-row) for quantized types; dequantized it becomes (out_features, in_features),
  the torch Linear layout.
* Llama q/k rows are permuted: llama.cpp's converter interleaves each head's two rotary halves
  (it rotates adjacent pairs). Our module rotates halves (Hugging Face layout), so the loader
  undoes the permutation for ``llama`` files, as transformers does when it loads a GGUF.
  Qwen2 files are not permuted (llama.cpp rotates them the "neox" way, which is ours).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.llm import LlmConfig, LlmModel
from edgevoice.weights.strict import load_state_strict

# Tensor types we dequantize (through gguf's numpy reference code), each checked by a test against
# an independent decoder or a round trip. Q4_K and Q6_K cover the usual Q4_K_M files; other K-quants,
# importance-matrix (IQ*) and ternary types are refused with a message naming the tensor.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q6_K")
ARCHITECTURES = ("llama", "qwen2")

_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


@dataclass
class GgufFile:
    """A GGUF file opened for reading: its metadata values and its tensors (memory-mapped)."""

    path: Path
    metadata: dict[str, Any]
    reader: Any  # gguf.GGUFReader

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        value = self.metadata.get(f"{self.architecture}.{key}", default)
        if value is None:
            raise EdgevoiceError(f"{self.path.name}: metadata '{self.architecture}.{key}' is missing; is this a complete GGUF model?")
        return value


def open_gguf(path: str | Path) -> GgufFile:
    import gguf

    path = Path(path)
    if not path.is_file():
        raise EdgevoiceError(f"GGUF file {path} does not exist; pass the path of a .gguf model file")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise EdgevoiceError(f"{path} is not a readable GGUF file ({exc}); re-download it") from exc
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        metadata[key] = field.contents()
    return GgufFile(path, metadata, reader)


def dequantize(tensor, source: str) -> np.ndarray:
    """float32 array of a GGUF tensor in row-major torch order (rows = ne1, cols = ne0)."""
    from gguf import quants

    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise EdgevoiceError(
            f"tensor '{tensor.name}' in {source} has type {kind}, which edgevoice cannot dequantize; "
            f"supported: {', '.join(SUPPORTED_TYPES)}. Re-quantize the model (llama-quantize) to one of those"
        )
    shape = tuple(int(d) for d in reversed(tensor.shape))  # slowest dim first
    if kind == "F32":
        values = np.asarray(tensor.data, dtype=np.float32)
    elif kind == "F16":
        values = np.asarray(tensor.data, dtype=np.float16).astype(np.float32)
    else:
        values = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).astype(np.float32)
    return values.reshape(shape)


def unpermute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, rows (D/2, 2) -> (2, D/2)."""
    rows = weight.shape[0]
    rest = weight.shape[1:]
    return weight.reshape(heads, rows // heads // 2, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def llm_config_from_gguf(file: GgufFile, max_context: int = 1024, prefill_max_tokens: int = 64) -> LlmConfig:
    if file.architecture not in ARCHITECTURES:
        raise EdgevoiceError(
            f"{file.path.name} holds a '{file.architecture}' model; edgevoice loads {', '.join(ARCHITECTURES)} GGUF files"
        )
    if f"{file.architecture}.rope.scaling.type" in file.metadata:
        raise EdgevoiceError(f"{file.path.name} uses RoPE scaling, which edgevoice's LLM does not implement")
    hidden = int(file.arch_value("embedding_length"))
    heads = int(file.arch_value("attention.head_count"))
    names = {t.name for t in file.reader.tensors}
    tokens = file.metadata.get("tokenizer.ggml.tokens")
    vocab = int(file.metadata.get(f"{file.architecture}.vocab_size", len(tokens) if tokens else 0))
    return LlmConfig(
        vocab_size=vocab,
        hidden=hidden,
        layers=int(file.arch_value("block_count")),
        heads=heads,
        kv_heads=int(file.arch_value("attention.head_count_kv", heads)),
        head_dim=int(file.metadata.get(f"{file.architecture}.rope.dimension_count", hidden // heads)),
        ffn=int(file.arch_value("feed_forward_length")),
        rope_base=float(file.arch_value("rope.freq_base", 10000.0)),
        rms_eps=float(file.arch_value("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names,
        max_context=max_context,
        prefill_max_tokens=prefill_max_tokens,
    )


def hf_name(gguf_name: str, source: str) -> str:
    """Hugging Face parameter name of a GGUF tensor; unknown tensors are an error naming them."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}"
    raise EdgevoiceError(f"tensor '{gguf_name}' in {source} has no place in a Llama/Qwen2 decoder; is this a plain LLM GGUF?")


def llm_state_from_gguf(file: GgufFile, config: LlmConfig) -> dict[str, torch.Tensor]:
    """Every tensor of the file, dequantized to float32, under Hugging Face names."""
    source = file.path.name
    permuted = file.architecture == "llama"
    state = {}
    for tensor in file.reader.tensors:
        name = hf_name(tensor.name, source)
        values = dequantize(tensor, source)
        if permuted and tensor.name.endswith("attn_q.weight"):
            values = unpermute_rotary(values, config.heads)
        elif permuted and tensor.name.endswith("attn_k.weight"):
            values = unpermute_rotary(values, config.kv_heads)
        # np.array copies: F32 tensors are read-only views of the memory-mapped file.
        state[name] = torch.from_numpy(np.array(values, dtype=np.float32, order="C"))
    return state


def load_llm_gguf(path: str | Path, max_context: int = 1024, prefill_max_tokens: int = 64) -> LlmModel:
    """An fp32 LlmModel in eval mode with every weight of the GGUF file (strict)."""
    file = open_gguf(path)
    config = llm_config_from_gguf(file, max_context, prefill_max_tokens)
    model = LlmModel(config)
    load_state_strict(model, llm_state_from_gguf(file, config), source=str(file.path))
    return model.eval()


# --- tokenizer -------------------------------------------------------------------------------

_CONTROL = 3  # llama.cpp token type: control (special) token
_USER_DEFINED = 4  # added by the model's authors, matched before BPE


def tokenizer_json_from_gguf(file: GgufFile) -> str:
    """A ``tokenizers`` JSON (byte-level BPE) rebuilt from the GGUF tokenizer metadata.

    Only GPT-2 style byte-level BPE ("gpt2") is built. SmolLM's pre-tokenizer splits digits one
    by one before the GPT-2 regex (llama.cpp's "smollm" pre-type; the upstream tokenizer.json
    does the same), Qwen2's regex groups up to three digits (not built here: error).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    meta = file.metadata
    model_kind = meta.get("tokenizer.ggml.model")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if model_kind != "gpt2" or pre not in ("smollm", "gpt-2", "default"):
        raise EdgevoiceError(
            f"{file.path.name}: tokenizer '{model_kind}' with pre-tokenizer '{pre}' is not supported; "
            "edgevoice builds byte-level BPE tokenizers of kind gpt2 (pre: smollm, gpt-2). "
            "Bring a tokenizer.json with a Hugging Face directory instead"
        )
    tokens = [str(t) for t in meta["tokenizer.ggml.tokens"]]
    types = [int(t) for t in meta.get("tokenizer.ggml.token_type", [1] * len(tokens))]
    merges = [tuple(str(m).split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    specials = [AddedToken(tokens[i], special=True, normalized=False) for i, kind in enumerate(types) if kind == _CONTROL]
    added = [AddedToken(tokens[i], special=False, normalized=False) for i, kind in enumerate(types) if kind == _USER_DEFINED]
    tokenizer.add_special_tokens(specials)
    if added:
        tokenizer.add_tokens(added)
    return tokenizer.to_str()


def special_token_ids(file: GgufFile) -> dict[str, int | None]:
    """bos/eos/pad/unk ids as the file declares them (None where it does not)."""
    meta = file.metadata
    return {kind: (int(meta[f"tokenizer.ggml.{kind}_token_id"]) if f"tokenizer.ggml.{kind}_token_id" in meta else None)
            for kind in ("bos", "eos", "padding", "unknown")}


def chat_template(file: GgufFile) -> str | None:
    value = file.metadata.get("tokenizer.chat_template")
    return None if value is None else str(value)


def token_texts(file: GgufFile) -> list[str]:
    return [str(t) for t in file.metadata["tokenizer.ggml.tokens"]]


def describe(file: GgufFile) -> str:
    """One JSON line about the file, for error messages and reports."""
    return json.dumps({"architecture": file.architecture, "tensors": len(file.reader.tensors)})
